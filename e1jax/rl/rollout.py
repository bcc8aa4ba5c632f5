"""One GRPO rollout: sample n budget-constrained responses per prompt, grade them,
turn rewards into group advantages, and lay the samples out as training sequences.

Host side only (NumPy, the tokenizer, the graders); the sampler and the trainer's
log-prob pass are the jitted parts. Sample j of prompt i is row i * n + j
throughout, so a group is n consecutive rows and a mini-batch of m prompts is
m * n consecutive rows.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from e1jax.errors import E1Error
from e1jax.rl.config import RolloutSection
from e1jax.rewards.types import GradeResult
from e1jax.rl.batch import TrainBatch
from e1jax.rl.grpo import group_advantages, response_loss_mask
from e1jax.sampling.prepare import prompt_bucket

Record = dict[str, Any]
GenerateFn = Callable[..., Any]


def step_seed(run_seed: int, step: int, stream: int = 0) -> int:
    """The sampling seed of a step: a pure function of (run seed, step), never carried state."""
    state = np.random.SeedSequence([int(run_seed) & 0xFFFFFFFF, int(step), int(stream)]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


# ------------------------------------------------------------------ rollout


@dataclasses.dataclass
class Rollout:
    """The samples of one step (host arrays, N = prompts * n rows)."""

    records: list[Record]  # one per prompt
    prompts: list[list[int]]  # prompt token ids, one per prompt
    n: int
    gen: Any  # GenerationOutput
    texts: list[str]  # decoded responses
    grades: list[GradeResult]
    rewards: np.ndarray  # (N,) f32
    correct: np.ndarray  # (N,) bool
    advantages: np.ndarray  # (N,) f32
    group_stats: dict[str, float]
    generate_s: float
    grading_s: float

    @property
    def num_samples(self) -> int:
        return len(self.rewards)


def generate_in_chunks(generate_fn: GenerateFn, model_config: Any, params: Any, prompts: list[list[int]], *,
                       chunk_prompts: int, n: int, pad_id: int, **kwargs: Any) -> Any:
    """generate_fn over `chunk_prompts` prompts at a time (all at once when 0), joined in
    prompt order. Each chunk passes the global sample ids, so the samples do not depend
    on the chunking (the sampler keys its randomness by (seed, sample id))."""
    if not chunk_prompts or chunk_prompts >= len(prompts):
        return generate_fn(model_config, params, prompts, n=n, **kwargs)
    parts = []
    for start in range(0, len(prompts), chunk_prompts):
        chunk = prompts[start:start + chunk_prompts]
        sample_ids = np.arange(start * n, (start + len(chunk)) * n)
        parts.append(generate_fn(model_config, params, chunk, n=n, sample_ids=sample_ids, **kwargs))
    return concat_generations(parts, pad_id=pad_id)


def concat_generations(parts: Sequence[Any], *, pad_id: int) -> Any:
    """Join GenerationOutputs of consecutive prompt chunks (response widths padded to the widest)."""
    first = parts[0]
    names = ([f.name for f in dataclasses.fields(first)] if dataclasses.is_dataclass(first)
             else list(vars(first)))
    width = max(p.tokens.shape[1] for p in parts)
    fill = {"tokens": pad_id, "logprobs": 0.0, "forced": False}
    fields: dict[str, Any] = {}
    offsets = np.cumsum([0] + [int(p.prompt_index.max()) + 1 for p in parts[:-1]])
    for name in names:
        values = [getattr(p, name) for p in parts]
        if name == "prompt_index":
            fields[name] = np.concatenate([v + off for v, off in zip(values, offsets)])
        elif isinstance(values[0], np.ndarray) and values[0].ndim == 2:
            padded = [np.pad(v, ((0, 0), (0, width - v.shape[1])), constant_values=fill.get(name, 0)) for v in values]
            fields[name] = np.concatenate(padded)
        elif isinstance(values[0], np.ndarray):
            fields[name] = np.concatenate(values)
        else:
            fields[name] = [x for v in values for x in v]
    return type(first)(**fields)


def run_rollout(
    model_config: Any,
    params: Any,
    records: Sequence[Record],
    *,
    settings: RolloutSection,
    task: Any,  # e1jax.task.Task: special ids, response texts, grading
    seed: int,
    mesh: Any = None,
    max_prompt_len: int | None = None,
    adv_eps: float = 1e-6,
    generate_fn: GenerateFn | None = None,
) -> Rollout:
    """Sample `settings.n` elastic responses for every record's `prompt_ids`, grade, advantage."""
    if generate_fn is None:
        from e1jax.models.params import decode_layout
        from e1jax.sampling import generate as generate_fn

        params = decode_layout(params)  # once, not per chunk
    from e1jax.sampling import SamplingParams

    records = list(records)
    prompts = [list(map(int, r["prompt_ids"])) for r in records]
    sampling = SamplingParams(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    start = time.perf_counter()
    gen = generate_in_chunks(
        generate_fn, model_config, params, prompts, chunk_prompts=settings.chunk_prompts,
        pad_id=task.special_ids.pad_id, ids=task.special_ids, mode="elastic", think_budget=settings.think_budget,
        solution_budget=settings.solution_budget,
        sampling=sampling, n=settings.n, seed=seed, mesh=mesh,
        eos_in_thinking=settings.eos_in_thinking, max_prompt_len=max_prompt_len,
    )
    generate_s = time.perf_counter() - start
    expected = len(prompts) * settings.n
    if len(gen.lengths) != expected or not np.array_equal(gen.prompt_index, np.repeat(np.arange(len(prompts)), settings.n)):
        raise E1Error(f"the sampler returned {len(gen.lengths)} samples, expected {expected} in prompt order")

    start = time.perf_counter()
    texts = [task.text(gen.tokens[i], int(gen.lengths[i])) for i in range(expected)]
    grades = task.grade(texts, [records[i] for i in gen.prompt_index])
    grading_s = time.perf_counter() - start

    rewards = np.asarray([g.reward for g in grades], np.float32)
    correct = np.asarray([g.correct for g in grades], bool)
    advantages, stats = group_advantages(rewards, settings.n, eps=adv_eps)
    return Rollout(records=records, prompts=prompts, n=settings.n, gen=gen, texts=texts, grades=grades,
                   rewards=rewards, correct=correct, advantages=advantages, group_stats=stats,
                   generate_s=generate_s, grading_s=grading_s)


# --------------------------------------------------------- training layout


def build_sequences(rollout: Rollout, *, pad_id: int, train_forced_tokens: bool = False,
                    phantom_eos_id: int | None = None, min_prompt_width: int = 0) -> TrainBatch:
    """Lay the rollout out for the trainer: the step's TrainBatch (host arrays, no trainer
    log-probs yet). The loss mask covers the sampled response tokens (EOS included); the
    forced close only with `train_forced_tokens`. With `phantom_eos_id`, a response cut at
    its solution budget gets that token appended and trained, as the original's mask trains
    the first pad (= EOS) after it; the response width grows by one column for it."""
    gen = rollout.gen
    n_rows = gen.tokens.shape[0]
    lengths = np.asarray(gen.lengths, np.int64)
    gen_tokens, gen_logprobs, forced = gen.tokens, np.asarray(gen.logprobs, np.float32), np.asarray(gen.forced, bool)
    if phantom_eos_id is not None:
        gen_tokens = np.pad(gen_tokens, ((0, 0), (0, 1)), constant_values=pad_id)
        gen_logprobs = np.pad(gen_logprobs, ((0, 0), (0, 1)))
        forced = np.pad(forced, ((0, 0), (0, 1)))
        phantom = np.asarray([reason == "solution_budget" for reason in gen.finish_reason])
        gen_tokens[phantom, lengths[phantom]] = phantom_eos_id
        gen_logprobs[phantom, lengths[phantom]] = np.nan
        lengths = lengths + phantom
    width = gen_tokens.shape[1]
    longest = max(len(p) for p in rollout.prompts)
    p_width = max(prompt_bucket(longest), min_prompt_width)  # one compile per bucket, not per step
    tokens = np.full((n_rows, p_width + width), pad_id, np.int32)
    attention = np.zeros((n_rows, p_width + width), bool)
    for row, prompt_index in enumerate(gen.prompt_index):
        prompt = rollout.prompts[prompt_index]
        tokens[row, p_width - len(prompt):p_width] = prompt
        attention[row, p_width - len(prompt):p_width] = True
    tokens[:, p_width:] = gen_tokens
    real = np.arange(width)[None, :] < lengths[:, None]
    attention[:, p_width:] = real
    tokens[:, p_width:][~real] = pad_id
    loss_mask = response_loss_mask(lengths, forced, train_forced_tokens=train_forced_tokens, width=width)
    sampler_logp = np.where(loss_mask, gen_logprobs, 0.0).astype(np.float32)
    return TrainBatch(tokens=tokens, attention_mask=attention, loss_mask=loss_mask,
                      advantages=np.asarray(rollout.advantages, np.float32), sampler_logp=sampler_logp)


# ------------------------------------------------------------------ metrics


def rollout_metrics(rollout: Rollout) -> dict[str, float]:
    gen = rollout.gen
    lengths = np.asarray(gen.lengths, np.float64)
    reasons = [g.reason for g in rollout.grades]
    finish = list(gen.finish_reason)
    stats = rollout.group_stats
    metrics = {
        "reward/mean": float(rollout.rewards.mean()),
        "reward/std": float(rollout.rewards.std()),
        "reward/accuracy": float(rollout.correct.mean()),
        "reward/format_error_rate": reasons.count("format_error") / len(reasons),
        "groups/solved_all": stats["solved_all"],
        "groups/solved_none": stats["solved_none"],
        "groups/equal_reward": stats["equal_reward_groups"],
        "groups/equal_reward_count": stats["equal_reward_groups"] * stats["num_groups"],
        "response/length_mean": float(lengths.mean()),
        "response/length_max": float(lengths.max()),
        "response/thinking_mean": float(np.mean(gen.thinking_tokens)),
        "response/solution_mean": float(np.mean(gen.solution_tokens)),
        "response/truncation_rate": float(np.mean(gen.truncated)),
        "response/eos_rate": finish.count("eos") / len(finish),
        "response/solution_budget_rate": finish.count("solution_budget") / len(finish),
        "response/eos_in_thinking_rate": finish.count("eos_in_thinking") / len(finish),
    }
    if rollout.correct.any():
        metrics["response/length_correct_mean"] = float(lengths[rollout.correct].mean())
    return metrics
