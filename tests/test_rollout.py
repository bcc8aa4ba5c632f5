"""Rollout: sampling through an injected generate, grading, group advantages, sequence layout."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from e1jax.errors import E1Error
from e1jax.rl.config import RolloutSection
from e1jax.rl.rollout import (
    build_sequences,
    rollout_metrics,
    run_rollout,
    step_seed,
)

PAD, EOS, CLOSE = 0, 1, 2


def fake_generation(responses: list[list[int]], forced_at: dict[int, int], n: int, logprob: float = -0.5):
    """A GenerationOutput-shaped object for given response token lists."""
    width = max(len(r) for r in responses) + 2
    rows = len(responses)
    tokens = np.full((rows, width), PAD, np.int32)
    forced = np.zeros((rows, width), bool)
    logprobs = np.zeros((rows, width), np.float32)
    for i, r in enumerate(responses):
        tokens[i, :len(r)] = r
        logprobs[i, :len(r)] = logprob
        if i in forced_at:
            forced[i, forced_at[i]] = True
            logprobs[i, forced_at[i]] = 0.0
    lengths = np.asarray([len(r) for r in responses])
    return SimpleNamespace(
        prompt_index=np.repeat(np.arange(rows // n), n), tokens=tokens, logprobs=logprobs, forced=forced,
        lengths=lengths, thinking_tokens=np.asarray([r.index(CLOSE) if CLOSE in r else len(r) for r in responses]),
        solution_tokens=np.asarray([len(r) - r.index(CLOSE) - 1 if CLOSE in r else 0 for r in responses]),
        truncated=np.asarray([i in forced_at for i in range(rows)]),
        finish_reason=["eos" if r[-1] == EOS else "solution_budget" for r in responses],
    )


# Prompt 0 (2 samples): one correct, one wrong -> advantages +-0.707; prompt 1: both wrong -> 0.
RESPONSES = [[5, 6, CLOSE, 7, EOS], [5, CLOSE, 8, EOS], [9, 9, 9, CLOSE, 8], [6, CLOSE, 8, EOS]]
FORCED = {2: 3}
TEXT = {5: "a", 6: "b", 7: "\\boxed{3}", 8: "\\boxed{4}", 9: "c", CLOSE: "</think>", EOS: "<eos>"}


class FakeTokenizer:
    think_close_id, eos_ids, pad_id = CLOSE, (EOS,), PAD

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(TEXT[i] for i in ids)


def task(reward_kind: str = "math"):
    from e1jax.task import RewardSpec, Task

    return Task(FakeTokenizer(), reward=RewardSpec(kind=reward_kind, workers=1))


def test_step_seed_is_a_function_of_seed_and_step():
    assert step_seed(0, 5) == step_seed(0, 5)
    seeds = {step_seed(0, s) for s in range(1, 200)} | {step_seed(1, 1)} | {step_seed(0, 1, stream=1)}
    assert len(seeds) == 201
    assert all(0 <= s < 2**31 for s in seeds)


def _rollout(generation, reward_kind="math", seed=7):
    calls = {}

    def generate_fn(config, params, prompts, **kwargs):
        calls.update(kwargs, prompts=prompts)
        return generation

    records = [{"id": 0, "prompt_ids": [3, 4, 5], "ground_truth": "3"},
               {"id": 1, "prompt_ids": [4], "ground_truth": "3"}]
    settings = RolloutSection(n=2, think_budget=3, solution_budget=2, temperature=0.6, top_p=1.0)
    result = run_rollout(None, None, records, settings=settings, task=task(reward_kind), seed=seed,
                         generate_fn=generate_fn)
    return result, calls


def test_rollout_grades_decoded_text_and_computes_group_advantages():
    result, calls = _rollout(fake_generation(RESPONSES, FORCED, n=2))
    assert calls["prompts"] == [[3, 4, 5], [4]]
    assert calls["n"] == 2 and calls["seed"] == 7 and calls["mode"] == "elastic"
    assert calls["think_budget"] == 3 and calls["solution_budget"] == 2
    assert calls["sampling"].temperature == 0.6 and calls["sampling"].top_p == 1.0
    # trailing EOS is stripped before grading; the text after </think> is graded
    assert result.texts[0] == "ab</think>\\boxed{3}"
    assert result.rewards.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert result.correct.tolist() == [True, False, False, False]
    np.testing.assert_allclose(result.advantages, [1 / np.sqrt(2), -1 / np.sqrt(2), 0, 0], atol=1e-5)
    m = rollout_metrics(result)
    assert m["reward/mean"] == 0.25 and m["reward/accuracy"] == 0.25
    assert m["groups/solved_all"] == 0.0 and m["groups/solved_none"] == 0.5
    assert m["groups/equal_reward"] == 0.5 and m["groups/equal_reward_count"] == 1.0
    assert m["response/truncation_rate"] == 0.25
    assert m["response/length_mean"] == pytest.approx(np.mean([5, 4, 5, 4]))


def test_missing_think_close_is_a_format_error():
    responses = [[5, 7, EOS], [5, CLOSE, 7, EOS], [5, CLOSE, 7, EOS], [5, CLOSE, 7, EOS]]
    result, _ = _rollout(fake_generation(responses, {}, n=2))
    assert [g.reason for g in result.grades] == ["format_error", "correct", "correct", "correct"]
    assert rollout_metrics(result)["reward/format_error_rate"] == 0.25


def test_sequence_layout_and_loss_mask():
    gen = fake_generation(RESPONSES, FORCED, n=2)
    result, _ = _rollout(gen)
    seqs = build_sequences(result, pad_id=PAD)
    p = seqs.prompt_width
    assert p == 16
    assert seqs.tokens.shape == (4, p + gen.tokens.shape[1])
    assert seqs.loss_mask.shape == gen.tokens.shape  # response coordinates
    # left-padded prompt, then the response
    assert seqs.tokens[0, p - 3:p].tolist() == [3, 4, 5] and (seqs.tokens[0, :p - 3] == PAD).all()
    assert seqs.tokens[2, p - 1] == 4 and seqs.attention_mask[2, :p - 1].sum() == 0
    assert seqs.tokens[0, p:p + 5].tolist() == RESPONSES[0]
    assert seqs.attention_mask[0].sum() == 3 + 5 and seqs.attention_mask[3].sum() == 1 + 4
    # loss_mask[j] scores response token j (sequence token p + j): exactly the response tokens,
    # EOS included, forced close excluded
    for row, response in enumerate(RESPONSES):
        scored = np.flatnonzero(seqs.loss_mask[row])
        expected = [j for j in range(len(response)) if not (row in FORCED and FORCED[row] == j)]
        assert scored.tolist() == expected
    with_forced = build_sequences(result, pad_id=PAD, train_forced_tokens=True)
    assert with_forced.loss_mask[2].sum() == len(RESPONSES[2])
    # the sampler's log-probs sit where the loss mask is
    assert (seqs.sampler_logp[seqs.loss_mask] == -0.5).all() and (seqs.sampler_logp[~seqs.loss_mask] == 0).all()
    np.testing.assert_array_equal(seqs.advantages, result.advantages)


def test_sampler_returning_the_wrong_count_is_refused():
    gen = fake_generation(RESPONSES[:2], {}, n=1)
    with pytest.raises(E1Error, match="expected 4"):
        _rollout(gen)
