"""Per-token log-probabilities (and entropy) of sequences under the model, in fp32."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from e1jax.models.config import ModelConfig
from e1jax.models.params import Params
from e1jax.models.qwen import Qwen, positions_from_mask


def next_token_logprobs(
    config: ModelConfig,
    params: Params,
    tokens: jax.Array,
    attention_mask: jax.Array,
    temperature: float | jax.Array = 1.0,
    with_entropy: bool = False,
):
    """Log-prob of tokens[:, t] given tokens[:, :t], for t >= 1, under logits / temperature.

    Returns (B, T-1) log-probs (and entropies of the tempered distribution when
    `with_entropy`). Position 0 has no prediction. Left padding is allowed.
    """
    positions = positions_from_mask(attention_mask)
    logits, _ = Qwen(config).apply({"params": params}, tokens, positions, attention_mask)
    logits = logits[:, :-1].astype(jnp.float32) / temperature
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    targets = tokens[:, 1:]
    logp = jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]
    if not with_entropy:
        return logp
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return logp, entropy
