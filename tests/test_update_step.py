"""The jitted GRPO update step on a tiny random model: direction, accumulation, sharding, dtypes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e1jax.errors import E1Error
from e1jax.models.config import ModelConfig
from e1jax.models.params import init_params
from e1jax.models.scoring import next_token_logprobs
from e1jax.bench.update import bench_update
from e1jax.rl.batch import TrainBatch, shard_batch
from e1jax.rl.config import GRPOConfig, OptimConfig
from e1jax.rl.grpo import group_advantages, response_loss_mask
from e1jax.rl.update import (
    METRIC_REDUCTION,
    compute_logprobs,
    init_train_state,
    make_optimizer,
    make_schedule,
    make_update_fn,
    mini_batches,
    reduce_mini_batches,
    train_state_shardings,
)
from e1jax.sharding import make_mesh

TINY = ModelConfig("qwen2", vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0)
GRPO = GRPOConfig(kl_coef=0.001, entropy_coef=0.001, temperature=0.6)
PROMPT_W, RESP_W, B, GROUP = 5, 9, 8, 4


def _host_batch(config=TINY, seed=0):
    """[left-padded prompt | response] rows with real padding, forced tokens and mixed rewards."""
    rng = np.random.default_rng(seed)
    prompt_lens = rng.integers(2, PROMPT_W + 1, B)
    resp_lens = rng.integers(3, RESP_W + 1, B)
    tokens = np.zeros((B, PROMPT_W + RESP_W), np.int32)
    attn = np.zeros_like(tokens, dtype=bool)
    for i in range(B):
        tokens[i, PROMPT_W - prompt_lens[i] : PROMPT_W] = rng.integers(1, config.vocab_size, prompt_lens[i])
        attn[i, PROMPT_W - prompt_lens[i] : PROMPT_W] = True
        tokens[i, PROMPT_W : PROMPT_W + resp_lens[i]] = rng.integers(1, config.vocab_size, resp_lens[i])
        attn[i, PROMPT_W : PROMPT_W + resp_lens[i]] = True
    forced = np.zeros((B, RESP_W), bool)
    forced[np.arange(B), resp_lens // 2] = True
    rewards = np.array([1, 0, 0, 1, 0, 1, 1, 1], np.float32)
    adv, _ = group_advantages(rewards, GROUP)
    mask = response_loss_mask(resp_lens, forced)
    return tokens, attn, mask, adv


@pytest.fixture(scope="module")
def setup():
    params = init_params(TINY, 0)
    tokens, attn, mask, adv = _host_batch()
    old = compute_logprobs(TINY, params, tokens, attn, GRPO.temperature, micro_batch=4, response_width=RESP_W)
    ref = old + 0.05 * jax.random.normal(jax.random.key(1), old.shape)  # a reference that differs a little
    batch = TrainBatch(
        tokens=jnp.asarray(tokens), attention_mask=jnp.asarray(attn), loss_mask=jnp.asarray(mask),
        advantages=jnp.asarray(adv), old_logp=old, ref_logp=ref,
    )
    return params, batch


def _fresh(params):
    return jax.tree.map(jnp.array, params)  # the update donates its state


# Adam's first step is lr * g / (|g| + eps): with the default eps 1e-8 an element whose
# gradient is ~1e-8 can land anywhere in [-lr, lr] under float reordering. Comparisons
# of two ways of computing the same step use eps 1e-3, which keeps the step smooth in g.
SMOOTH = dict(lr=1e-3, eps=1e-3)
_UPDATES: dict = {}


def _update_fn(micro, lr, eps, grpo, mesh):
    key = (micro, lr, eps, grpo, mesh)
    if key not in _UPDATES:  # one jit (and compile) per setting across tests
        opt = make_optimizer(OptimConfig(learning_rate=lr, eps=eps))
        _UPDATES[key] = (opt, make_update_fn(TINY, grpo, opt, micro_batch=micro, mesh=mesh))
    return _UPDATES[key]


def _step(params, batch, micro, lr=1e-2, eps=1e-8, mesh=None, grpo=GRPO):
    opt, update = _update_fn(micro, lr, eps, grpo, mesh)
    state = init_train_state(params, opt)
    if mesh is not None:
        batch = shard_batch(batch, mesh)
    new_state, metrics = update(state, batch)
    return new_state, {k: float(v) for k, v in metrics.items()}


def test_compute_logprobs_micro_batched_equals_direct(setup):
    params, batch = setup
    direct, ent = jax.jit(next_token_logprobs, static_argnums=(0, 5))(
        TINY, params, batch.tokens, batch.attention_mask, 0.6, True
    )
    assert direct.shape == (B, PROMPT_W + RESP_W - 1)
    np.testing.assert_allclose(batch.old_logp, direct[:, -RESP_W:], atol=2e-5)  # micro-batches of 4, response only
    # 3 does not divide 8: rows are padded to 9 and the padding dropped
    got, got_ent = compute_logprobs(TINY, params, batch.tokens, batch.attention_mask, 0.6, 3, with_entropy=True)
    assert got.shape == (B, PROMPT_W + RESP_W - 1) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, direct, atol=2e-5)
    np.testing.assert_allclose(got_ent, ent, atol=2e-5)


def test_update_moves_logprobs_with_advantage_sign(setup):
    params, batch = setup
    state, metrics = _step(_fresh(params), batch, micro=4, lr=1e-2)
    mask = np.asarray(batch.loss_mask, bool)
    before = np.asarray(batch.old_logp)
    after = np.asarray(compute_logprobs(TINY, state.params, batch.tokens, batch.attention_mask, 0.6, response_width=RESP_W))
    delta = (after - before)[mask]
    adv = np.broadcast_to(np.asarray(batch.advantages)[:, None], mask.shape)[mask]
    # responses share tokens, so single rows may move against their sign; the groups may not
    assert delta[adv > 0].mean() > 0.05, delta[adv > 0].mean()
    assert delta[adv < 0].mean() < -0.05, delta[adv < 0].mean()
    assert np.sum(adv * delta) > 0
    # first mini-batch of a rollout is on-policy: ratio 1, nothing clipped
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["clip_frac"] == 0.0
    assert metrics["num_tokens"] == mask.sum()
    assert metrics["learning_rate"] == pytest.approx(1e-2)
    assert metrics["grad_norm"] > 0 and metrics["kl"] > 0 and metrics["entropy"] > 0
    assert int(state.step) == 1
    assert set(metrics) <= set(METRIC_REDUCTION)  # every metric says how it reduces


def test_micro_batch_accumulation_equals_one_big_batch(setup):
    params, batch = setup
    full_state, full_m = _step(_fresh(params), batch, micro=None, **SMOOTH)
    for micro in (1, 2, 4):
        state, m = _step(_fresh(params), batch, micro=micro, **SMOOTH)
        for key in ("loss", "pg_loss", "kl", "entropy", "grad_norm", "ratio_mean", "num_tokens"):
            assert m[key] == pytest.approx(full_m[key], rel=1e-5, abs=1e-7), (micro, key)
        _assert_same_step(state, full_state)
    with pytest.raises(E1Error):
        _step(_fresh(params), batch, micro=3)


def _assert_same_step(state, expected):
    """Params within 1e-6 (steps are ~1e-3) and Adam's first moment (= 0.1 * the
    accumulated gradient) to float rounding."""
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, atol=1e-6, rtol=0), state.params, expected.params)
    mu, mu_expected = state.opt_state[1].mu, expected.opt_state[1].mu
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(mu_expected))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, atol=1e-5 * scale, rtol=1e-4), mu, mu_expected)


# micro-batches of 4 rows: the batch axes (data x fsdp) of each mesh divide them
@pytest.mark.parametrize("spec,kl", [("data=2,tensor=4", True), ("fsdp=4,tensor=2", False)])
def test_sharded_step_equals_single_device(setup, spec, kl):
    params, batch = setup
    grpo = GRPO if kl else GRPOConfig(kl_coef=0.0)
    if not kl:
        batch = batch.replace(ref_logp=None)
    single_state, single_m = _step(_fresh(params), batch, micro=4, grpo=grpo, **SMOOTH)
    mesh = make_mesh(spec)
    opt, update = _update_fn(4, SMOOTH["lr"], SMOOTH["eps"], grpo, mesh)
    sharded_params = init_params(TINY, 0, mesh=mesh)
    state = init_train_state(sharded_params, opt)
    expected = train_state_shardings(TINY, opt, mesh)
    jax.tree.map(lambda x, s: _assert_same_sharding(x, s), state, expected)
    sharded_batch = shard_batch(batch, mesh)
    assert not sharded_batch.tokens.sharding.is_fully_replicated
    new_state, metrics = update(state, sharded_batch)
    assert set(metrics) == set(single_m)
    jax.tree.map(lambda x, s: _assert_same_sharding(x, s), new_state, expected)
    # the mesh really splits something
    assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
               for x in jax.tree.leaves(new_state.params))
    for key, value in single_m.items():
        assert float(metrics[key]) == pytest.approx(value, rel=1e-4, abs=1e-6), key
    _assert_same_step(new_state, single_state)


def _assert_same_sharding(x, sharding):
    assert x.sharding.is_equivalent_to(sharding, x.ndim), (x.shape, x.sharding, sharding)


def test_bf16_params_keep_fp32_optimizer_state(setup):
    """Also: without KL the update needs no reference log-probs at all."""
    _, batch = setup
    batch = batch.replace(ref_logp=None)
    config = TINY.replace(param_dtype="bfloat16", dtype="bfloat16")
    params = init_params(config, 0)
    opt = make_optimizer(OptimConfig(learning_rate=1e-2))
    state = init_train_state(params, opt)
    before = jax.tree.map(np.asarray, params)
    update = make_update_fn(config, GRPOConfig(kl_coef=0.0), opt, micro_batch=4)
    new_state, metrics = update(state, batch)
    assert "kl" not in metrics
    assert {x.dtype for x in jax.tree.leaves(new_state.params)} == {jnp.dtype(jnp.bfloat16)}
    adam = new_state.opt_state[1]
    assert {x.dtype for x in jax.tree.leaves((adam.mu, adam.nu))} == {jnp.dtype(jnp.float32)}
    assert all(np.isfinite(v) for v in jax.tree.map(float, metrics).values())
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), new_state.params, before)
    assert all(jax.tree.leaves(changed))


def test_kl_without_reference_is_an_error(setup):
    params, batch = setup
    no_ref = batch.replace(ref_logp=None)
    with pytest.raises(E1Error):
        _step(_fresh(params), no_ref, micro=4)


def test_mini_batches_are_consecutive_placed_prompt_groups(setup):
    _, batch = setup
    batch = batch.replace(sampler_logp=batch.old_logp)
    mesh = make_mesh("data=2,fsdp=2,tensor=2")
    placed = shard_batch(batch, mesh)
    parts = mini_batches(placed, GROUP, mesh)
    assert len(parts) == B // GROUP
    for i, part in enumerate(parts):
        rows = slice(i * GROUP, (i + 1) * GROUP)
        for name in ("tokens", "attention_mask", "loss_mask", "advantages", "old_logp", "ref_logp"):
            got, whole = getattr(part, name), getattr(placed, name)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(whole)[rows])
            assert got.sharding.spec == whole.sharding.spec and not got.sharding.is_fully_replicated, name
        assert part.sampler_logp is None  # the update does not read it
    with pytest.raises(E1Error, match="mini-batches"):
        mini_batches(placed, 3, mesh)


def test_metrics_reduce_over_mini_batches_by_their_rule():
    rows = [{"loss": np.float32(1.0), "ratio_max": 2.0, "ratio_min": 0.5, "num_tokens": 10.0},
            {"loss": np.float32(4.0), "ratio_max": 1.5, "ratio_min": 0.25, "num_tokens": 20.0}]
    assert reduce_mini_batches(rows) == {"loss": 2.5, "ratio_max": 2.0, "ratio_min": 0.25, "num_tokens": 15.0}
    with pytest.raises(KeyError, match="METRIC_REDUCTION"):
        reduce_mini_batches([{"made_up": 1.0}])


def test_schedules():
    const = make_schedule(OptimConfig(learning_rate=1e-3, warmup_steps=10))
    assert float(const(0)) == 0.0 and float(const(5)) == pytest.approx(5e-4) and float(const(50)) == pytest.approx(1e-3)
    cos = make_schedule(OptimConfig(learning_rate=1e-3, schedule="cosine", total_steps=100))
    assert float(cos(0)) == pytest.approx(1e-3) and float(cos(50)) == pytest.approx(5e-4) and float(cos(100)) == pytest.approx(0.0)
    lin = make_schedule(OptimConfig(learning_rate=1e-3, schedule="linear", warmup_steps=10, total_steps=110))
    assert float(lin(10)) == pytest.approx(1e-3) and float(lin(60)) == pytest.approx(5e-4)
    with pytest.raises(E1Error):
        OptimConfig(schedule="step")


def test_bench_update_reports_throughput():
    result = bench_update(TINY, batch_size=4, seq_len=12, micro_batch=2, steps=1, warmup=1, peak_flops=1e12)
    assert result["tokens_per_s"] > 0 and result["compile_s"] > 0
    assert result["flops_per_step"] == pytest.approx(
        4 * 12 * (6 * (TINY.num_params() - 128 * 64) + 12 * 2 * 4 * 16 * 12)
    )
    assert result["mfu"] == pytest.approx(result["flops_per_s"] / 1e12)
    assert np.isfinite(result["loss"])
