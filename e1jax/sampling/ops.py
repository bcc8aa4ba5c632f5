"""Token selection: greedy, temperature, top-p, top-k, with traced settings."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from e1jax.errors import E1Error


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy; top_p 1.0 and top_k 0 disable those filters."""

    temperature: float = 0.6
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise E1Error(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise E1Error(f"top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise E1Error(f"top-k must be >= 0, got {self.top_k}")

    def as_arrays(self) -> dict[str, jax.Array]:
        return {
            "temperature": jnp.float32(self.temperature),
            "top_p": jnp.float32(self.top_p),
            "top_k": jnp.int32(self.top_k),
        }


def _filter_logits(logits: jax.Array, top_p: jax.Array, top_k: jax.Array) -> jax.Array:
    """Mask logits outside the top-k and the top-p nucleus (both traced; k=0 / p=1 disable)."""
    vocab = logits.shape[-1]
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    kth = jnp.take_along_axis(sorted_logits, jnp.broadcast_to(k - 1, logits.shape[:-1] + (1,)), axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    cumulative = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each token
    in_nucleus = cumulative < top_p
    # The smallest logit still inside the nucleus is the cut-off.
    nucleus_min = jnp.min(jnp.where(in_nucleus, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    cutoff = jnp.maximum(kth, nucleus_min)
    return jnp.where(logits >= cutoff, logits, -jnp.inf)


def sample_tokens(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_p: jax.Array, top_k: jax.Array) -> jax.Array:
    """Pick one token per row of fp32 `logits` (B, V): greedy when temperature is 0, else a
    draw from softmax(logits / temperature) truncated by top-p / top-k."""
    greedy = temperature <= 0
    scaled = logits / jnp.where(greedy, 1.0, temperature)

    def sample(scaled):
        needs_filter = (top_p < 1.0) | (top_k > 0)
        filtered = jax.lax.cond(needs_filter, _filter_logits, lambda x, p, k: x, scaled, top_p, top_k)
        return jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32)

    def argmax(scaled):
        return jnp.argmax(scaled, axis=-1).astype(jnp.int32)

    # Greedy skips the random draw entirely (it dominates a small model's step).
    return jax.lax.cond(greedy, argmax, sample, scaled)


def token_logprob(logits: jax.Array, tokens: jax.Array, temperature: jax.Array) -> jax.Array:
    """Log-prob of `tokens` under softmax(logits / temperature) before top-p/top-k truncation
    (temperature 1 when greedy): what the trainer recomputes."""
    t = jnp.where(temperature <= 0, 1.0, temperature)
    logp = jax.nn.log_softmax(logits / t, axis=-1)
    return jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
