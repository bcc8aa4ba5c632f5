"""One GRPO rollout: sample n budget-constrained responses per prompt, grade them,
turn rewards into group advantages, and lay the samples out as training sequences.

Host side only (NumPy, the tokenizer, the graders); the sampler and the trainer's
log-prob pass are the jitted parts. Sample j of prompt i is row i * n + j
throughout, so a group is n consecutive rows and a mini-batch of m prompts is
m * n consecutive rows.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from e1jax.errors import E1Error
from e1jax.rewards.types import GradeResult
from e1jax.rl.grpo import group_advantages, response_loss_mask

Record = dict[str, Any]
# reward_fn(responses, records) -> one GradeResult per response
RewardFn = Callable[[Sequence[str], Sequence[Record]], list[GradeResult]]
GenerateFn = Callable[..., Any]


def step_seed(run_seed: int, step: int, stream: int = 0) -> int:
    """The sampling seed of a step: a pure function of (run seed, step), never carried state."""
    state = np.random.SeedSequence([int(run_seed) & 0xFFFFFFFF, int(step), int(stream)]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


def prompt_width(length: int) -> int:
    """Prompt columns of the training sequences: a power of two (at least 16), so the
    log-prob and update steps compile once per bucket rather than once per step."""
    return max(16, 1 << (max(length, 1) - 1).bit_length())


# ----------------------------------------------------------------- rewards


def _as_grade(value: Any) -> GradeResult:
    if isinstance(value, GradeResult):
        return value
    try:
        reward = float(value)
    except (TypeError, ValueError) as err:
        raise E1Error(f"reward function returned {value!r}, expected a number or a GradeResult") from err
    return GradeResult(reward, reward >= 1.0, None, "custom")


def load_callable(path: str) -> Callable:
    """'package.module:function' -> the function."""
    module_name, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise E1Error(f"cannot import reward module '{module_name}': {err}") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise E1Error(f"reward module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise E1Error(f"reward '{path}' is not callable")
    return obj


def make_reward_fn(kind: str, *, workers: int = 0, timeout_s: float = 5.0) -> RewardFn:
    """The grader of `reward.kind`.

    "math": DESIGN §2 math reward (needs `</think>`; record["ground_truth"] is the answer).
    "code": all tests in record["ground_truth"] must pass.
    "module:function": function(responses, records) -> numbers or GradeResults;
    a number r counts as correct when r >= 1.
    """
    workers_arg = workers or None
    if kind == "math":
        def math_fn(responses, records):
            from e1jax.rewards.math import grade_math_batch

            return grade_math_batch(responses, [r["ground_truth"] for r in records],
                                    workers=workers_arg, timeout_s=timeout_s)

        return math_fn
    if kind == "code":
        def code_fn(responses, records):
            from e1jax.rewards.code import grade_code_batch

            return grade_code_batch(responses, [r["ground_truth"] for r in records],
                                    workers=workers_arg, time_limit_s=timeout_s)

        return code_fn
    fn = load_callable(kind)

    def custom_fn(responses, records):
        values = list(fn(list(responses), list(records)))
        if len(values) != len(responses):
            raise E1Error(f"reward '{kind}' returned {len(values)} values for {len(responses)} responses")
        return [_as_grade(v) for v in values]

    return custom_fn


# ------------------------------------------------------------------ rollout


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
    n: int = 8
    think_budget: int = 1024
    solution_budget: int = 1024
    temperature: float = 0.6
    top_p: float = 1.0
    top_k: int = 0
    eos_in_thinking: str = "stop"
    chunk_prompts: int = 0  # prompts per sampler call; 0: all at once

    @classmethod
    def from_config(cls, section: Any) -> RolloutSettings:
        return cls(**{f.name: getattr(section, f.name) for f in dataclasses.fields(cls)})


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


def response_text(tokens: np.ndarray, length: int, decode: Callable[[list[int]], str],
                  strip_ids: Sequence[int]) -> str:
    """Decoded response without a trailing EOS/pad token (the graders read `</think>`, so
    special tokens are kept: decode with skip_special_tokens=False)."""
    ids = [int(t) for t in tokens[:length]]
    while ids and ids[-1] in strip_ids:
        ids.pop()
    return decode(ids)


def run_rollout(
    model_config: Any,
    params: Any,
    records: Sequence[Record],
    *,
    settings: RolloutSettings,
    ids: Any,  # e1jax.sampling.SpecialIds
    decode: Callable[[list[int]], str],
    reward_fn: RewardFn,
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
        generate_fn, model_config, params, prompts, chunk_prompts=settings.chunk_prompts, pad_id=ids.pad_id,
        ids=ids, mode="elastic", think_budget=settings.think_budget, solution_budget=settings.solution_budget,
        sampling=sampling, n=settings.n, seed=seed, mesh=mesh,
        eos_in_thinking=settings.eos_in_thinking, max_prompt_len=max_prompt_len,
    )
    generate_s = time.perf_counter() - start
    expected = len(prompts) * settings.n
    if len(gen.lengths) != expected or not np.array_equal(gen.prompt_index, np.repeat(np.arange(len(prompts)), settings.n)):
        raise E1Error(f"the sampler returned {len(gen.lengths)} samples, expected {expected} in prompt order")

    start = time.perf_counter()
    strip = tuple(ids.eos_ids) + (ids.pad_id,)
    texts = [response_text(gen.tokens[i], int(gen.lengths[i]), decode, strip) for i in range(expected)]
    sample_records = [records[i] for i in gen.prompt_index]
    grades = list(reward_fn(texts, sample_records))
    grading_s = time.perf_counter() - start

    rewards = np.asarray([g.reward for g in grades], np.float32)
    correct = np.asarray([g.correct for g in grades], bool)
    advantages, stats = group_advantages(rewards, settings.n, eps=adv_eps)
    return Rollout(records=records, prompts=prompts, n=settings.n, gen=gen, texts=texts, grades=grades,
                   rewards=rewards, correct=correct, advantages=advantages, group_stats=stats,
                   generate_s=generate_s, grading_s=grading_s)


# --------------------------------------------------------- training layout


@dataclasses.dataclass
class SequenceBatch:
    """Training sequences [left-padded prompt (P) | response, right-padded (L)] (host arrays);
    the loss mask and the sampler's log-probs in response coordinates (entry j: token P + j)."""

    tokens: np.ndarray  # (N, P + L) int32
    attention_mask: np.ndarray  # (N, P + L) bool
    loss_mask: np.ndarray  # (N, L) bool
    advantages: np.ndarray  # (N,) f32
    sampler_logp: np.ndarray  # (N, L) f32, the sampler's log-probs where loss_mask (diagnostics)
    prompt_width: int

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def rows(self, start: int, stop: int) -> SequenceBatch:
        return dataclasses.replace(
            self, tokens=self.tokens[start:stop], attention_mask=self.attention_mask[start:stop],
            loss_mask=self.loss_mask[start:stop], advantages=self.advantages[start:stop],
            sampler_logp=self.sampler_logp[start:stop])


def build_sequences(rollout: Rollout, *, pad_id: int, train_forced_tokens: bool = False,
                    min_prompt_width: int = 0) -> SequenceBatch:
    """Lay the rollout out for the trainer. The loss mask covers the sampled response
    tokens (EOS included); the forced close only with `train_forced_tokens`."""
    gen = rollout.gen
    n_rows, width = gen.tokens.shape
    longest = max(len(p) for p in rollout.prompts)
    p_width = max(prompt_width(longest), min_prompt_width)
    tokens = np.full((n_rows, p_width + width), pad_id, np.int32)
    attention = np.zeros((n_rows, p_width + width), bool)
    lengths = np.asarray(gen.lengths, np.int64)
    for row, prompt_index in enumerate(gen.prompt_index):
        prompt = rollout.prompts[prompt_index]
        tokens[row, p_width - len(prompt):p_width] = prompt
        attention[row, p_width - len(prompt):p_width] = True
    tokens[:, p_width:] = gen.tokens
    real = np.arange(width)[None, :] < lengths[:, None]
    attention[:, p_width:] = real
    tokens[:, p_width:][~real] = pad_id
    loss_mask = response_loss_mask(lengths, np.asarray(gen.forced, bool),
                                   train_forced_tokens=train_forced_tokens, width=width)
    sampler_logp = np.where(loss_mask, gen.logprobs, 0.0).astype(np.float32)
    return SequenceBatch(tokens=tokens, attention_mask=attention, loss_mask=loss_mask,
                         advantages=np.asarray(rollout.advantages, np.float32),
                         sampler_logp=sampler_logp, prompt_width=p_width)


def mini_batches(batch: SequenceBatch, prompts_per_mini_batch: int, n: int) -> list[SequenceBatch]:
    """Consecutive groups of `prompts_per_mini_batch` prompts (no shuffling, as the original)."""
    rows = prompts_per_mini_batch * n
    if len(batch) % rows:
        raise E1Error(f"{len(batch)} samples do not split into mini-batches of {rows}")
    return [batch.rows(start, start + rows) for start in range(0, len(batch), rows)]


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
