"""Per-token log-probabilities (and entropy) of sequences under the model, in fp32.

The head is applied to `chunk` positions at a time: each chunk's (rows, chunk, vocab) fp32
logits live only while that chunk is scored, and the backward pass recomputes them
(`jax.checkpoint`), so no (rows, length, vocab) tensor is ever kept.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from e1jax.models.config import ModelConfig
from e1jax.models.params import Params
from e1jax.models.qwen import Qwen, head_kernel, positions_from_mask
from e1jax.sharding import constrain

LOGITS_CHUNK = 256  # positions per head chunk


def chunked_logprobs(
    hidden: jax.Array,
    head: jax.Array,
    targets: jax.Array,
    temperature: float | jax.Array = 1.0,
    with_entropy: bool = False,
    chunk: int = LOGITS_CHUNK,
):
    """log softmax(hidden @ head / temperature)[targets] for hidden (B, L, E), head (E, V) and
    targets (B, L), `chunk` positions at a time; with `with_entropy` also the entropies of the
    tempered distributions. Both (B, L) fp32."""
    b, length, e = hidden.shape
    chunk = max(1, min(chunk, length))
    pad = (-length) % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    n = (length + pad) // chunk
    h_chunks = hidden.reshape(b, n, chunk, e).swapaxes(0, 1)
    t_chunks = targets.reshape(b, n, chunk).swapaxes(0, 1)
    temperature = jnp.asarray(temperature, jnp.float32)
    head = head.astype(hidden.dtype)

    @jax.checkpoint
    def score(h, t, head):
        logits = jnp.dot(h.reshape(b * chunk, e), head, preferred_element_type=jnp.float32)
        logits = constrain(logits.reshape(b, chunk, -1), ("batch", "length", "vocab")) / temperature
        logp_all = jax.nn.log_softmax(logits, axis=-1)
        logp = jnp.take_along_axis(logp_all, t[..., None], axis=-1)[..., 0]
        if not with_entropy:
            return logp, None
        return logp, -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)

    def body(_, xs):
        return None, score(*xs, head)

    _, (logp, entropy) = jax.lax.scan(body, None, (h_chunks, t_chunks))

    def unchunk(x):
        return x.swapaxes(0, 1).reshape(b, n * chunk)[:, :length]

    if not with_entropy:
        return unchunk(logp)
    return unchunk(logp), unchunk(entropy)


def next_token_logprobs(
    config: ModelConfig,
    params: Params,
    tokens: jax.Array,
    attention_mask: jax.Array,
    temperature: float | jax.Array = 1.0,
    with_entropy: bool = False,
    response_width: int | None = None,
    chunk: int = LOGITS_CHUNK,
):
    """Log-prob of tokens[:, t] given tokens[:, :t] under logits / temperature, for the last
    `response_width` tokens (default: every t >= 1; position 0 has no prediction).

    Returns (B, response_width) log-probs (and entropies of the tempered distribution when
    `with_entropy`); entry j scores token T - response_width + j. Left padding is allowed.
    Only the scored positions go through the head.
    """
    t = tokens.shape[1]
    width = t - 1 if response_width is None else response_width
    positions = positions_from_mask(attention_mask)
    hidden, _ = Qwen(config).apply({"params": params}, tokens, positions, attention_mask, return_hidden=True)
    scored = hidden[:, t - 1 - width : t - 1]
    return chunked_logprobs(scored, head_kernel(config, params), tokens[:, t - width :], temperature, with_entropy, chunk)
