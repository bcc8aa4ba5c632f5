"""GRPO math: group-normalised advantages, loss masks, and the token-level PPO-clip loss.

Host-side helpers (advantages, masks) work on NumPy; `grpo_loss` is pure jnp and
runs inside the jitted update step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from e1jax.errors import E1Error
from e1jax.rl.config import GRPOConfig

# log-ratios are clamped here before exp() so padding garbage or a wild policy cannot
# produce inf/NaN; k3 is clamped to +-kl_clamp anyway, so its values are unchanged.
_LOG_RATIO_LIMIT = 20.0


def group_advantages(rewards: np.ndarray, group_size: int, eps: float = 1e-6) -> tuple[np.ndarray, dict[str, float]]:
    """(r - mean) / (std + eps) within each group of `group_size` consecutive rows.

    std is the unbiased (ddof=1) standard deviation, as in the original. Groups whose
    rewards are all equal get advantage exactly 0. A response is "solved" when its
    reward is > 0. Returns float32 advantages (N,) and group statistics.
    """
    rewards = np.asarray(rewards, dtype=np.float64).reshape(-1)
    if group_size < 2:
        raise E1Error(f"GRPO needs at least 2 samples per prompt (group size {group_size})")
    if rewards.size % group_size:
        raise E1Error(f"{rewards.size} rewards do not split into groups of {group_size}")
    groups = rewards.reshape(-1, group_size)
    mean = groups.mean(axis=1, keepdims=True)
    std = groups.std(axis=1, ddof=1, keepdims=True)
    equal = np.all(groups == groups[:, :1], axis=1)
    adv = (groups - mean) / (std + eps)
    adv[equal] = 0.0
    solved = groups > 0
    stats = {
        "num_groups": float(groups.shape[0]),
        "equal_reward_groups": float(equal.mean()) if groups.size else 0.0,
        "solved_all": float(solved.all(axis=1).mean()) if groups.size else 0.0,
        "solved_none": float((~solved).all(axis=1).mean()) if groups.size else 0.0,
        "reward_mean": float(rewards.mean()) if rewards.size else 0.0,
    }
    return adv.reshape(-1).astype(np.float32), stats


def response_loss_mask(
    response: np.ndarray,
    forced: np.ndarray | None = None,
    *,
    train_forced_tokens: bool = False,
    width: int | None = None,
) -> np.ndarray:
    """(N, L) bool mask of the response tokens to train on, in response coordinates.

    `response` is either lengths (N,) (the first `length` tokens of each row are real)
    or a (N, L) mask of real response tokens. Padding is excluded; forced tokens
    (`forced`, (N, L) bool, e.g. GenerationOutput.forced) are excluded unless
    `train_forced_tokens`. `width` sets L when only lengths are given (default:
    forced.shape[1], else max length).
    """
    response = np.asarray(response)
    if response.ndim == 1:
        if width is None:
            width = forced.shape[1] if forced is not None else int(response.max(initial=0))
        if response.size and int(response.max()) > width:
            raise E1Error(f"response length {int(response.max())} exceeds the response width {width}")
        mask = np.arange(width)[None, :] < response[:, None]
    elif response.ndim == 2:
        mask = response.astype(bool)
    else:
        raise E1Error(f"response lengths/mask must be 1-D or 2-D, got shape {response.shape}")
    if forced is not None and not train_forced_tokens:
        forced = np.asarray(forced, dtype=bool)
        if forced.shape != mask.shape:
            raise E1Error(f"forced mask shape {forced.shape} does not match response shape {mask.shape}")
        mask = mask & ~forced
    return mask


def _masked_sum(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask, x, 0.0))


def grpo_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    loss_mask: jax.Array,
    cfg: GRPOConfig,
    ref_logp: jax.Array | None = None,
    entropy: jax.Array | None = None,
    num_tokens: jax.Array | float | None = None,
    token_weight: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Token-level GRPO loss, token-mean over `num_tokens` (default: this batch's count).

    logp/old_logp/ref_logp/entropy/loss_mask: (B, T); advantages: (B,) or (B, T).
    Every loss-like metric is a sum over the masked tokens divided by `num_tokens`, so
    summing them over micro-batches that share one `num_tokens` gives the mini-batch
    value; `ratio_max`/`ratio_min` are -inf/+inf when no token is masked in. How each
    metric combines over micro- and mini-batches: e1jax.rl.update.METRIC_REDUCTION.
    `token_weight` (B,): the weight of each of a row's trained tokens in the returned loss
    instead of 1 / num_tokens (verl's loss scale, e1jax.rl.verl_scale); metrics stay token means.
    """
    mask = loss_mask.astype(bool)
    logp = logp.astype(jnp.float32)
    old_logp = old_logp.astype(jnp.float32)
    adv = advantages.astype(jnp.float32)
    if adv.ndim == 1:
        adv = adv[:, None]
    adv = jnp.broadcast_to(adv, logp.shape)
    if num_tokens is None:
        num_tokens = jnp.sum(mask)
    denom = jnp.maximum(jnp.asarray(num_tokens, jnp.float32), 1.0)

    log_ratio = jnp.clip(logp - old_logp, -_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
    ratio = jnp.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    pg_terms = unclipped if cfg.unclipped_objective else jnp.maximum(unclipped, clipped)
    clip_high = (adv > 0) & (ratio > 1.0 + cfg.clip_high)
    clip_low = (adv < 0) & (ratio < 1.0 - cfg.clip_low)

    pg_loss = _masked_sum(pg_terms, mask) / denom
    loss = pg_loss
    objective_terms = pg_terms
    metrics = {
        "pg_loss": pg_loss,
        "clip_frac": _masked_sum((clip_high | clip_low).astype(jnp.float32), mask) / denom,
        "clip_frac_high": _masked_sum(clip_high.astype(jnp.float32), mask) / denom,
        "clip_frac_low": _masked_sum(clip_low.astype(jnp.float32), mask) / denom,
        "ratio_mean": _masked_sum(ratio, mask) / denom,
        "ratio_max": jnp.max(jnp.where(mask, ratio, -jnp.inf)),
        "ratio_min": jnp.min(jnp.where(mask, ratio, jnp.inf)),
        "approx_kl": _masked_sum(old_logp - logp, mask) / denom,  # verl's ppo_kl
    }
    if ref_logp is not None:
        diff = jnp.clip(ref_logp.astype(jnp.float32) - logp, -_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
        kl_terms = jnp.clip(jnp.exp(diff) - diff - 1.0, -cfg.kl_clamp, cfg.kl_clamp)
        kl = _masked_sum(kl_terms, mask) / denom
        metrics["kl"] = kl
        if cfg.kl_coef:
            loss = loss + cfg.kl_coef * kl
            objective_terms = objective_terms + cfg.kl_coef * kl_terms
    if entropy is not None:
        ent_terms = entropy.astype(jnp.float32)
        ent = _masked_sum(ent_terms, mask) / denom
        metrics["entropy"] = ent
        if cfg.entropy_coef:
            loss = loss - cfg.entropy_coef * ent
            objective_terms = objective_terms - cfg.entropy_coef * ent_terms
    if token_weight is not None:
        loss = _masked_sum(objective_terms * token_weight.astype(jnp.float32)[:, None], mask)
    metrics["loss"] = loss
    return loss, metrics

