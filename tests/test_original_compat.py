"""compat.original_compat, piece by piece, each against a hand-computed case: the phantom EOS,
verl's loss scale (its micro-batch partition and weights), EOS while thinking in training,
and the switches the compat mode sets."""

from __future__ import annotations

import numpy as np
import pytest
from test_rollout import CLOSE, EOS, PAD, _rollout, fake_generation

from e1jax.errors import E1Error
from e1jax.rl.config import GRPOConfig, load_train_config
from e1jax.rl.rollout import build_sequences
from e1jax.rl.verl_scale import balanced_partition, verl_token_weights

BASE = ["model.path=m", "data.train_files=[d]"]


def test_compat_sets_each_switch_and_each_is_its_own():
    eff = load_train_config(None, BASE + ["compat.original_compat=true"]).effective()
    assert eff.grpo.train_forced_tokens and eff.grpo.unclipped_objective and eff.grpo.phantom_eos
    assert eff.grpo.loss_scale == "verl" and eff.reward.grader == "original"
    # in the original's training an EOS while thinking ends the sample (its mask stops there)
    assert eff.rollout.eos_in_thinking == "stop"
    assert load_train_config(None, BASE + ["compat.original_compat=true", "rollout.eos_in_thinking=append_close"]
                             ).effective().rollout.eos_in_thinking == "stop"
    default = load_train_config(None, BASE).effective()
    assert not default.grpo.phantom_eos and default.grpo.loss_scale == "token_mean"
    assert default.reward.grader == "e1jax"
    one = load_train_config(None, BASE + ["grpo.phantom_eos=true"]).effective()
    assert one.grpo.phantom_eos and one.grpo.loss_scale == "token_mean" and not one.grpo.unclipped_objective
    with pytest.raises(E1Error, match="grpo.loss_scale"):
        GRPOConfig(loss_scale="sum")
    with pytest.raises(E1Error, match="verl_world_size"):
        load_train_config(None, BASE + ["grpo.loss_scale=verl", "grpo.verl_world_size=3"])


def test_phantom_eos_is_appended_and_trained_after_a_solution_cut_at_its_budget():
    # row 2 is cut at its solution budget (no EOS); the others end with their own EOS
    responses = [[5, 6, CLOSE, 7, EOS], [5, CLOSE, 8, EOS], [9, 9, 9, CLOSE, 8], [6, CLOSE, 8, EOS]]
    result, _ = _rollout(fake_generation(responses, {2: 3}, n=2))
    plain = build_sequences(result, pad_id=PAD, train_forced_tokens=True)
    seqs = build_sequences(result, pad_id=PAD, train_forced_tokens=True, phantom_eos_id=EOS)
    assert seqs.response_width == plain.response_width + 1
    p = seqs.prompt_width
    assert seqs.tokens[2, p:p + 6].tolist() == [9, 9, 9, CLOSE, 8, EOS]
    assert np.flatnonzero(seqs.loss_mask[2]).tolist() == [0, 1, 2, 3, 4, 5]
    assert seqs.attention_mask[2].sum() == 1 + 6
    assert np.isnan(seqs.sampler_logp[2, 5])  # never sampled: left out of the logp_diff diagnostic
    for row in (0, 1, 3):  # ended by a sampled EOS: unchanged
        assert seqs.loss_mask[row].sum() == plain.loss_mask[row].sum() == len(responses[row])
        assert (seqs.tokens[row, p + len(responses[row]):] == PAD).all()


def test_eos_while_thinking_scores_zero_and_trains_nothing_after_it():
    # row 0 emits EOS while thinking (the sampler's "stop": the response ends there)
    responses = [[5, 6, EOS], [5, CLOSE, 7, EOS], [5, CLOSE, 7, EOS], [5, CLOSE, 8, EOS]]
    gen = fake_generation(responses, {}, n=2)
    gen.finish_reason[0] = "eos_in_thinking"
    result, _ = _rollout(gen)
    assert result.grades[0].reward == 0.0 and result.grades[0].reason == "format_error"
    seqs = build_sequences(result, pad_id=PAD, train_forced_tokens=True, phantom_eos_id=EOS)
    assert np.flatnonzero(seqs.loss_mask[0]).tolist() == [0, 1, 2]  # up to and including the EOS


def test_balanced_partition_by_hand():
    # largest differencing, k=2, lengths 5 4 3 2 1 (rows 0-4): {5}{4} -> spread 1, {3}{2} -> spread 1;
    # ties pop the larger first set: {5}{4} with {3}{2} crosswise -> {5,2}{4,3} (7 and 7, ordered by
    # their rows: {4,3} first); {1} (spread 1) then takes the crosswise set: {1,5,2}{4,3}
    assert balanced_partition([5, 4, 3, 2, 1], 2) == [[0, 3, 4], [1, 2]]
    assert balanced_partition([7, 1, 1, 1], 2) == [[0], [1, 2, 3]]
    # equal lengths: ties go to the later row, parts come largest-row first
    assert balanced_partition([3, 3, 3], 3) == [[2], [1], [0]]
    with pytest.raises(E1Error, match="into 3 parts"):
        balanced_partition([1, 2], 3)


def test_verl_token_weights_by_hand():
    # one mini-batch of 4 rows on 2 ranks, micro-batches of at most 10 tokens: rank 0 holds
    # rows 0-1 (12 tokens -> 2 micro-batches), rank 1 rows 2-3 (6 tokens -> 1), and every rank
    # takes the largest count (verl's all-reduce MAX): 2 micro-batches each, one row apiece.
    # weight = 1 / (2 ranks x trained tokens of the row's micro-batch)
    weights = verl_token_weights([6, 6, 3, 3], [4, 2, 1, 1], update_rows=4, world_size=2, max_token_len=10)
    np.testing.assert_allclose(weights, [1 / 8, 1 / 4, 1 / 2, 1 / 2])
    # room for all: one micro-batch per rank, its own token mean
    weights = verl_token_weights([6, 6, 3, 3], [4, 2, 1, 1], update_rows=4, world_size=2, max_token_len=100)
    np.testing.assert_allclose(weights, [1 / 12, 1 / 12, 1 / 4, 1 / 4])
    # two mini-batches are weighed apart
    weights = verl_token_weights([2, 2, 2, 2], [1, 1, 3, 3], update_rows=2, world_size=1, max_token_len=100)
    np.testing.assert_allclose(weights, [1 / 2, 1 / 2, 1 / 6, 1 / 6])
    with pytest.raises(E1Error, match="ranks"):
        verl_token_weights([1, 1, 1], [1, 1, 1], update_rows=3, world_size=2, max_token_len=10)


def test_grpo_loss_under_token_weights_is_the_weighted_sum():
    import jax.numpy as jnp

    from e1jax.rl.grpo import grpo_loss

    cfg = GRPOConfig(kl_coef=0.0, entropy_coef=0.0)
    logp = jnp.log(jnp.array([[0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]))
    mask = jnp.array([[True, True, False], [True, False, False]])
    adv = jnp.array([1.0, -2.0])
    weight = jnp.array([0.5, 0.25])
    loss, metrics = grpo_loss(logp, logp, adv, mask, cfg, token_weight=weight)
    # ratio 1: every trained token's term is -advantage; rows weigh 0.5 and 0.25 a token
    assert float(loss) == pytest.approx(0.5 * (-1.0) * 2 + 0.25 * 2.0 * 1)
    assert float(metrics["pg_loss"]) == pytest.approx((-1.0 * 2 + 2.0) / 3)  # metrics stay token means
    plain, _ = grpo_loss(logp, logp, adv, mask, cfg)
    assert float(plain) == pytest.approx(float(metrics["pg_loss"]))


def test_verl_batch_deals_the_step_as_verl_by_hand():
    from e1jax.rl.batch import TrainBatch
    from e1jax.rl.verl_scale import verl_batch, verl_row_order

    # lengths 1..8 into 2 equal parts: pairs (2,1) (4,3) (6,5) (8,7) merge to {8,5,3,2} {7,6,4,1};
    # each rank's part, in order, gives its 2 rows to each of the 2 mini-batches of 4
    lengths = np.arange(1, 9)
    assert verl_row_order(lengths, update_rows=4, world_size=2).tolist() == [1, 2, 0, 3, 4, 7, 5, 6]
    attention = np.arange(8)[None, :] >= 8 - lengths[:, None]
    trained = attention[:, -3:]
    batch = TrainBatch(tokens=np.arange(64).reshape(8, 8), attention_mask=attention, loss_mask=trained,
                       advantages=np.arange(8, dtype=np.float32))
    out = verl_batch(batch, update_rows=4, world_size=2, max_token_len=1000)
    assert out.advantages.tolist() == [1, 2, 0, 3, 4, 7, 5, 6]
    np.testing.assert_array_equal(out.tokens[0], batch.tokens[1])
    # one micro-batch per rank: its own trained-token mean, over 2 ranks
    # trained tokens in the new order: 2 3 | 1 3 || 3 3 | 3 3 (rank 0 | rank 1 of each mini-batch)
    np.testing.assert_allclose(out.token_weight, [1 / 10, 1 / 10, 1 / 8, 1 / 8] + [1 / 12] * 4)
