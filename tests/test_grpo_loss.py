"""GRPO math against plain NumPy references written independently here."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e1jax.errors import E1Error
from e1jax.rl.config import GRPOConfig
from e1jax.rl.grpo import group_advantages, grpo_loss, response_loss_mask


# ---------------------------------------------------------------- references


def ref_advantages(rewards, group_size, eps=1e-6):
    out = []
    for start in range(0, len(rewards), group_size):
        group = [float(r) for r in rewards[start : start + group_size]]
        mean = sum(group) / len(group)
        var = sum((r - mean) ** 2 for r in group) / (len(group) - 1)
        std = math.sqrt(var)
        if all(r == group[0] for r in group):
            out += [0.0] * len(group)
        else:
            out += [(r - mean) / (std + eps) for r in group]
    return np.array(out)


def ref_loss(logp, old, adv, mask, cfg, ref=None, ent=None, num_tokens=None):
    """Token by token: returns (loss, pg, kl, entropy, clip_frac_low, clip_frac_high, dloss/dlogp)."""
    n = float(mask.sum()) if num_tokens is None else float(num_tokens)
    pg = kl = entropy = low = high = 0.0
    grad = np.zeros(logp.shape)
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if not mask[b, t]:
                continue
            a = float(adv[b])
            r = math.exp(float(logp[b, t]) - float(old[b, t]))
            r_clip = min(max(r, 1 - cfg.clip_low), 1 + cfg.clip_high)
            if cfg.unclipped_objective:
                pg += -r * a
                grad[b, t] += -r * a / n
            else:
                pg += -min(r * a, r_clip * a)
                if r * a <= r_clip * a:  # unclipped branch active: gradient flows
                    grad[b, t] += -r * a / n
            if a > 0 and r > 1 + cfg.clip_high:
                high += 1
            if a < 0 and r < 1 - cfg.clip_low:
                low += 1
            if ref is not None:
                d = float(ref[b, t]) - float(logp[b, t])
                k3 = math.exp(d) - d - 1
                kl += min(max(k3, -cfg.kl_clamp), cfg.kl_clamp)
                if cfg.kl_coef and abs(k3) < cfg.kl_clamp:
                    grad[b, t] += cfg.kl_coef * (1 - math.exp(d)) / n
            if ent is not None:
                entropy += float(ent[b, t])
    loss = pg / n
    if ref is not None and cfg.kl_coef:
        loss += cfg.kl_coef * kl / n
    if ent is not None and cfg.entropy_coef:
        loss -= cfg.entropy_coef * entropy / n
    return loss, pg / n, kl / n, entropy / n, low / n, high / n, grad


def run_loss(logp, old, adv, mask, cfg, ref=None, ent=None, num_tokens=None):
    def f(lp):
        return grpo_loss(
            lp, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask), cfg,
            ref_logp=None if ref is None else jnp.asarray(ref),
            entropy=None if ent is None else jnp.asarray(ent),
            num_tokens=num_tokens,
        )

    (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(logp, jnp.float32))
    return float(loss), {k: float(v) for k, v in metrics.items()}, np.asarray(grad)


# ---------------------------------------------------------------- advantages


def test_group_advantages_match_numpy_unbiased_std():
    rng = np.random.default_rng(0)
    rewards = np.concatenate([
        rng.random(8),                       # continuous rewards
        [1, 0, 0, 1, 1, 0, 0, 0],            # binary
        [1] * 8,                             # all solved
        [0] * 8,                             # none solved
        [0.5] * 8,                           # equal, non-binary
    ])
    adv, stats = group_advantages(rewards, 8)
    np.testing.assert_allclose(adv, ref_advantages(rewards, 8), rtol=1e-5, atol=1e-6)
    assert adv.dtype == np.float32
    assert np.all(adv[16:] == 0.0)
    # unbiased: 3 of 8 correct -> std = sqrt(8/7 * 3/8 * 5/8)
    std = math.sqrt(3 / 8 * 5 / 8 * 8 / 7)
    assert adv[8] == pytest.approx((1 - 3 / 8) / (std + 1e-6), rel=1e-6)
    assert stats["num_groups"] == 5
    assert stats["equal_reward_groups"] == pytest.approx(3 / 5)
    assert stats["solved_all"] == pytest.approx(3 / 5)  # [1]*8, [0.5]*8 and the random group (all > 0)
    assert stats["solved_none"] == pytest.approx(1 / 5)
    # groups are consecutive rows
    adv4, _ = group_advantages([1, 0, 1, 1, 0, 0, 0, 1], 4)
    np.testing.assert_allclose(adv4, ref_advantages([1, 0, 1, 1, 0, 0, 0, 1], 4), rtol=1e-5)


def test_group_advantages_errors():
    with pytest.raises(E1Error):
        group_advantages(np.zeros(6), 4)
    with pytest.raises(E1Error):
        group_advantages(np.zeros(4), 1)


# ---------------------------------------------------------------- masks


def test_response_loss_mask_forced_tokens_and_padding():
    lengths = np.array([5, 3, 0])
    forced = np.zeros((3, 6), bool)
    forced[0, 2] = True  # forced </think> inside row 0
    forced[1, 1] = True
    excluded = response_loss_mask(lengths, forced, train_forced_tokens=False)
    included = response_loss_mask(lengths, forced, train_forced_tokens=True)
    np.testing.assert_array_equal(excluded, [
        [1, 1, 0, 1, 1, 0],
        [1, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
    ])
    np.testing.assert_array_equal(included, [
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
    ])
    # a 2-D real-token mask gives the same as lengths
    np.testing.assert_array_equal(response_loss_mask(np.arange(6)[None] < lengths[:, None], forced), excluded)
    with pytest.raises(E1Error):
        response_loss_mask(np.ones((3, 6), bool), np.zeros((3, 5), bool))
    with pytest.raises(E1Error):
        response_loss_mask(lengths, np.zeros((3, 4), bool))  # length 5 > width 4


# ---------------------------------------------------------------- loss


def _clipping_batch():
    """Rows: A>0 with ratios far above/below the clip range, A<0 likewise, and a zero-advantage row."""
    ratios = np.array([
        [3.0, 1.1, 0.5, 1.0, 1.5, 0.2],   # A = +1.5
        [3.0, 1.1, 0.5, 1.0, 1.5, 0.2],   # A = -0.7
        [0.05, 0.7, 1.19, 1.25, 0.79, 1.0],  # A = +0.3
        [0.05, 0.7, 1.19, 1.25, 0.79, 1.0],  # A = -2.0
        [2.0, 0.3, 1.0, 1.0, 1.0, 1.0],   # A = 0 (equal-reward group)
    ])
    rng = np.random.default_rng(1)
    old = -rng.random(ratios.shape) * 3 - 0.1
    logp = old + np.log(ratios)
    adv = np.array([1.5, -0.7, 0.3, -2.0, 0.0])
    mask = np.array([
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0, 0],
    ], bool)
    ref = logp + rng.normal(0, 0.5, ratios.shape)
    ref[0, 0] = logp[0, 0] + 5.0    # k3 = e^5 - 6 > 10: clamped
    ref[1, 1] = logp[1, 1] - 15.0   # k3 = e^-15 + 14 > 10: clamped
    ent = rng.random(ratios.shape) * 4
    return logp, old, adv, mask, ref, ent


@pytest.mark.parametrize("kl_coef", [0.0, 0.05])
@pytest.mark.parametrize("unclipped", [False, True])
def test_loss_matches_numpy_reference(kl_coef, unclipped):
    logp, old, adv, mask, ref, ent = _clipping_batch()
    cfg = GRPOConfig(clip_low=0.2, clip_high=0.28, kl_coef=kl_coef, entropy_coef=0.01, unclipped_objective=unclipped)
    loss, m, grad = run_loss(logp, old, adv, mask, cfg, ref=ref, ent=ent)
    r_loss, r_pg, r_kl, r_ent, r_low, r_high, r_grad = ref_loss(logp, old, adv, mask, cfg, ref=ref, ent=ent)
    assert loss == pytest.approx(r_loss, rel=1e-5, abs=1e-6)
    assert m["loss"] == pytest.approx(loss)
    assert m["pg_loss"] == pytest.approx(r_pg, rel=1e-5, abs=1e-6)
    assert m["kl"] == pytest.approx(r_kl, rel=1e-5, abs=1e-6)
    assert m["entropy"] == pytest.approx(r_ent, rel=1e-5)
    assert m["clip_frac_low"] == pytest.approx(r_low)
    assert m["clip_frac_high"] == pytest.approx(r_high)
    assert m["clip_frac"] == pytest.approx(r_low + r_high)
    np.testing.assert_allclose(grad, r_grad, rtol=1e-4, atol=1e-6)
    assert r_low > 0 and r_high > 0  # both sides really clip in this batch


def test_clip_counts_by_hand():
    logp, old, adv, mask, *_ = _clipping_batch()
    _, m, _ = run_loss(logp, old, adv, mask, GRPOConfig(clip_low=0.2, clip_high=0.28))
    n = mask.sum()  # 6 + 5 + 5 + 4 + 3 = 23
    assert n == 23
    # high (A>0, r>1.28): row0 3.0, 1.5; row2's 1.19, 1.25 stay inside -> 2
    # low (A<0, r<0.8): row1 0.5 (its 0.2 is masked); row3 0.05, 0.7 (its 0.79 is masked) -> 3
    assert m["clip_frac_high"] * n == pytest.approx(2)
    assert m["clip_frac_low"] * n == pytest.approx(3)
    # with clip_high=0.2 row2's 1.25 joins the high side
    _, m2, _ = run_loss(logp, old, adv, mask, GRPOConfig(clip_low=0.2, clip_high=0.2))
    assert m2["clip_frac_high"] * n == pytest.approx(3)
    assert m2["ratio_max"] == pytest.approx(3.0, rel=1e-5)
    assert m2["ratio_min"] == pytest.approx(0.05, rel=1e-4)
    assert m2["ratio_mean"] == pytest.approx(np.exp(logp - old)[mask].mean(), rel=1e-5)
    assert m2["approx_kl"] == pytest.approx((old - logp)[mask].mean(), rel=1e-5, abs=1e-6)


def test_zero_advantage_rows_count_tokens_but_add_nothing():
    logp, old, adv, mask, *_ = _clipping_batch()
    cfg = GRPOConfig(kl_coef=0.0, entropy_coef=0.0)
    full, _, grad = run_loss(logp, old, adv, mask, cfg)
    assert np.all(grad[4] == 0.0)
    # dropping the A=0 row changes only the token count (the denominator)
    part, _, _ = run_loss(logp[:4], old[:4], adv[:4], mask[:4], cfg, num_tokens=mask.sum())
    assert part == pytest.approx(full, rel=1e-6)


def test_kl_off_and_no_reference():
    logp, old, adv, mask, ref, ent = _clipping_batch()
    with_ref, m_ref, _ = run_loss(logp, old, adv, mask, GRPOConfig(kl_coef=0.0, entropy_coef=0.0), ref=ref)
    no_ref, m_none, _ = run_loss(logp, old, adv, mask, GRPOConfig(kl_coef=0.0, entropy_coef=0.0))
    assert with_ref == pytest.approx(no_ref)
    assert "kl" in m_ref and m_ref["kl"] > 0 and "kl" not in m_none
    assert "entropy" not in m_none
    on, m_on, _ = run_loss(logp, old, adv, mask, GRPOConfig(kl_coef=0.1, entropy_coef=0.0), ref=ref)
    assert on == pytest.approx(no_ref + 0.1 * m_ref["kl"], rel=1e-6)
    # the clamp is active on two tokens: each contributes exactly kl_clamp
    _, _, r_kl, *_ = ref_loss(logp, old, adv, mask, GRPOConfig(), ref=ref)
    assert m_ref["kl"] == pytest.approx(r_kl, rel=1e-5)


def test_num_tokens_makes_micro_batches_additive():
    logp, old, adv, mask, ref, ent = _clipping_batch()
    cfg = GRPOConfig(clip_low=0.2, clip_high=0.28, kl_coef=0.01, entropy_coef=0.01)
    full, m_full, _ = run_loss(logp, old, adv, mask, cfg, ref=ref, ent=ent)
    n = int(mask.sum())
    parts = [run_loss(logp[s], old[s], adv[s], mask[s], cfg, ref=ref[s], ent=ent[s], num_tokens=n) for s in (slice(0, 2), slice(2, 5))]
    assert sum(p[0] for p in parts) == pytest.approx(full, rel=1e-5)
    for key in ("pg_loss", "kl", "entropy", "clip_frac", "ratio_mean"):
        assert sum(p[1][key] for p in parts) == pytest.approx(m_full[key], rel=1e-5)


def test_forced_tokens_in_and_out_of_the_loss():
    """End to end: response lengths + forced mask -> loss mask (response coordinates) -> loss, both settings."""
    rng = np.random.default_rng(3)
    lengths = np.array([6, 4, 6, 2])
    forced = np.zeros((4, 6), bool)
    forced[0, 3] = forced[2, 2] = True
    old = -rng.random((4, 6)) * 2
    logp = old + rng.normal(0, 0.4, old.shape)
    adv = np.array([1.0, -1.0, 0.5, -0.5])
    for train_forced in (False, True):
        cfg = GRPOConfig(kl_coef=0.0, entropy_coef=0.0, train_forced_tokens=train_forced)
        mask = response_loss_mask(lengths, forced, train_forced_tokens=cfg.train_forced_tokens)
        assert mask.sum() == lengths.sum() - (0 if train_forced else 2)
        assert bool(mask[0, 3]) == train_forced and bool(mask[2, 2]) == train_forced
        assert not mask[3, 2:].any()
        loss, _, grad = run_loss(logp, old, adv, mask, cfg)
        r_loss, *_, r_grad = ref_loss(logp, old, adv, mask, cfg)
        assert loss == pytest.approx(r_loss, rel=1e-5)
        np.testing.assert_allclose(grad, r_grad, rtol=1e-4, atol=1e-7)
        assert (grad[0, 3] != 0) == train_forced


def test_grpo_config_defaults_and_validation():
    # the original's quirks are off unless compat.original_compat (TrainConfig.effective) turns them on
    assert not GRPOConfig().train_forced_tokens and not GRPOConfig().unclipped_objective
    with pytest.raises(E1Error):
        GRPOConfig(temperature=0.0)
    with pytest.raises(E1Error):
        GRPOConfig(clip_low=-0.1)
