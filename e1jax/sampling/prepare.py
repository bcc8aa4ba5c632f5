"""Host side of a sampler call, shared by `generate` and `budget_sweep`: the request checks
(`check_context`), the shape buckets, the padded prompt and per-row arrays placed on the mesh,
the loop's traced settings, and the assembly of the results into a `GenerationOutput`."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, Sequence

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from e1jax.errors import E1Error
from e1jax.models.config import ModelConfig
from e1jax.sampling import loop
from e1jax.sampling.ops import SamplingParams
from e1jax.sharding import from_host, named_sharding

EosInThinking = Literal["stop", "append_close"]


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """The tokenizer's special tokens as the sampler uses them."""

    think_close_ids: tuple[int, ...]  # forced at the thinking budget (default: the single </think>)
    eos_ids: tuple[int, ...]
    pad_id: int
    natural_close_id: int | None = None  # the token that ends thinking when sampled (default: the last close id)

    @property
    def natural_close(self) -> int:
        return self.natural_close_id if self.natural_close_id is not None else self.think_close_ids[-1]


@dataclasses.dataclass
class GenerationOutput:
    """Per-sample results (host numpy). Sample j of prompt i is row i * n + j."""

    prompt_index: np.ndarray  # (N,)
    tokens: np.ndarray  # (N, L) response tokens, pad after `lengths`
    logprobs: np.ndarray  # (N, L) log-prob under softmax(logits / temperature)
    forced: np.ndarray  # (N, L) True where the close was forced
    lengths: np.ndarray  # (N,)
    thinking_tokens: np.ndarray  # (N,) tokens before the close
    solution_tokens: np.ndarray  # (N,) tokens after the close (EOS included)
    truncated: np.ndarray  # (N,) the close was forced at the thinking budget
    finish_reason: list[str]
    think_budget: np.ndarray  # (N,)
    solution_budget: np.ndarray  # (N,)

    def response_ids(self, row: int) -> list[int]:
        return self.tokens[row, : self.lengths[row]].tolist()

    def __len__(self) -> int:
        return len(self.lengths)


# ---------------------------------------------------------------- request checks


def per_prompt(value: int | Sequence[int], count: int, name: str) -> np.ndarray:
    """`value` (one, or one per prompt) as a positive int64 array of `count` entries."""
    arr = np.full(count, value, np.int64) if np.isscalar(value) else np.asarray(value, np.int64)
    if arr.shape != (count,):
        raise E1Error(f"{name} must be one value or one per prompt ({count}), got {arr.shape[0] if arr.ndim else 1}")
    if np.any(arr <= 0):
        raise E1Error(f"{name} must be positive, got {int(arr.min())}")
    return arr


def check_context(
    config: ModelConfig,
    prompts: Sequence[Sequence[int]] | None = None,
    *,
    ids: SpecialIds,
    think_budget: int | Sequence[int] | None = None,
    solution_budget: int | Sequence[int] | None = None,
    max_new_tokens: int | Sequence[int] | None = None,
    max_prompt_len: int | None = None,
    longest_prompt: int | None = None,
    label: str | Callable[[int], str] = "prompt",
    where: str = "",
) -> None:
    """Refuse, before any compilation, a request the model cannot take, with a one-line E1Error.

    Give either the `prompts` (token ids: each must be non-empty, within `max_prompt_len` if
    set, and within the vocabulary) or, before any prompt exists, `longest_prompt` (a length).
    Elastic when `think_budget` is given: prompt + thinking budget + close (len(ids.think_close_ids))
    + solution budget must fit config.max_position_embeddings; plain when `max_new_tokens` is
    given: prompt + max_new_tokens must (both are checked when both are given). Budgets are one
    value or one per prompt. `label` names prompt i in messages (a word, read "<label> <i>", or a
    callable i -> name); `where`, if set, starts every message (e.g. "dataset 'aime'")."""
    prefix = f"{where}: " if where else ""
    label_of = label if callable(label) else (lambda i: f"{label} {i}")
    if not ids.think_close_ids or not ids.eos_ids:
        raise E1Error(f"{prefix}think_close_ids and eos_ids must not be empty")
    if think_budget is None and max_new_tokens is None:
        raise E1Error(f"{prefix}give a thinking budget (elastic) or max_new_tokens (plain)")
    if think_budget is not None and solution_budget is None:
        raise E1Error(f"{prefix}a thinking budget needs a solution budget")
    if (prompts is None) == (longest_prompt is None):
        raise E1Error(f"{prefix}give either the prompts or the longest prompt length")
    context = config.max_position_embeddings
    if prompts is None:
        if longest_prompt <= 0:
            raise E1Error(f"{prefix}the longest prompt length must be positive, got {longest_prompt}")
        lengths, subject = np.array([longest_prompt], np.int64), lambda i: "the longest prompt"
    else:
        if not len(prompts):
            raise E1Error(f"{prefix}no prompts given")
        lengths, subject = np.array([len(p) for p in prompts], np.int64), label_of
        limit = max_prompt_len or context
        for i, prompt in enumerate(prompts):
            if not len(prompt):
                raise E1Error(f"{prefix}{label_of(i)} is empty")
            if len(prompt) > limit:
                over = int(np.sum(lengths > limit))
                others = f" ({over} of the {len(prompts)} prompts are)" if len(prompts) > 1 else ""
                raise E1Error(f"{prefix}{label_of(i)} is {len(prompt)} tokens, longer than the limit {limit}{others}")
            low, high = min(prompt), max(prompt)
            if low < 0 or high >= config.vocab_size:
                raise E1Error(f"{prefix}{label_of(i)} has token id {low if low < 0 else high} outside the model's "
                              f"vocabulary (size {config.vocab_size}): do the tokenizer and the model match?")

    def worst(*budgets: np.ndarray) -> tuple[int, int]:
        totals = lengths + sum(budgets)
        i = int(np.argmax(totals))
        return i, int(totals[i])

    count = len(lengths)
    per_row = prompts is not None  # budgets may then be one per prompt; else the largest counts
    if think_budget is not None:
        close = len(ids.think_close_ids)
        t = _budget(think_budget, count, per_row, "thinking budget", prefix)
        s = _budget(solution_budget, count, per_row, "solution budget", prefix)
        i, total = worst(t, s, np.full(count, close))
        if total > context:
            raise E1Error(f"{prefix}{subject(i)} ({lengths[i]} tokens) + thinking budget {t[i]} + close {close} + "
                          f"solution budget {s[i]} = {total} tokens exceed the model's context of {context}")
    if max_new_tokens is not None:
        m = _budget(max_new_tokens, count, per_row, "max_new_tokens", prefix)
        i, total = worst(m)
        if total > context:
            raise E1Error(f"{prefix}{subject(i)} ({lengths[i]} tokens) + max new tokens {m[i]} = {total} tokens "
                          f"exceed the model's context of {context}")


def _budget(value: int | Sequence[int], count: int, per_row: bool, what: str, prefix: str) -> np.ndarray:
    """`count` budgets: from one value, one per prompt (`per_row`), or else the largest of several."""
    arr = np.asarray(value, np.int64)
    if arr.ndim == 0 or (not per_row and arr.size):
        arr = np.full(count, arr.max(), np.int64)
    if arr.shape != (count,):
        raise E1Error(f"{prefix}{what} must be one value or one per prompt ({count})")
    if np.any(arr <= 0):
        raise E1Error(f"{prefix}{what} must be positive, got {int(arr.min())}")
    return arr


# ---------------------------------------------------------------- shapes


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def prompt_bucket(length: int) -> int:
    """Prompt lengths round up to a power of two (at least 16)."""
    return max(16, 1 << (max(length, 1) - 1).bit_length())


def generation_bucket(steps: int) -> int:
    """Response columns: a multiple of 64 up to 512 steps, of 256 beyond."""
    return _round_up(max(steps, 1), 64 if steps <= 512 else 256)


def batch_bucket(batch: int, multiple: int = 1) -> int:
    """Prompt rows: a power of two, rounded up to a multiple of the mesh's batch devices."""
    return _round_up(1 << (max(batch, 1) - 1).bit_length(), multiple)


def data_multiple(mesh: Mesh | None) -> int:
    """The devices the rows split over (data x fsdp; 1 without a mesh)."""
    if mesh is None:
        return 1
    return mesh.shape["data"] * mesh.shape["fsdp"]


# ---------------------------------------------------------------- inputs


def pad_prompts(prompts: list[list[int]], width: int, rows: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, mask) of `rows` prompts left-padded to `width`; filler rows copy prompt 0."""
    tokens = np.full((rows, width), pad_id, np.int32)
    mask = np.zeros((rows, width), bool)
    for i in range(rows):
        seq = prompts[i] if i < len(prompts) else prompts[0]
        tokens[i, width - len(seq) :] = seq
        mask[i, width - len(seq) :] = True
    return tokens, mask


def sample_id_rows(sample_ids: Sequence[int] | None, count: int, n: int, rows: int) -> np.ndarray:
    """Per-row random-stream ids (default 0..count*n-1), zero for the filler rows."""
    ids = np.arange(count * n) if sample_ids is None else np.asarray(sample_ids, np.int64)
    if ids.shape != (count * n,):
        raise E1Error(f"sample_ids must have one id per sample ({count * n})")
    return np.concatenate([ids, np.zeros((rows - count) * n, np.int64)]).astype(np.uint32)


def place(mesh: Mesh | None, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Host arrays onto the devices, rows split over the mesh's batch axes."""
    if mesh is None:
        return {k: jnp.asarray(v) for k, v in arrays.items()}
    return {k: from_host(v, named_sharding(("batch",) + (None,) * (v.ndim - 1), v.shape, mesh)) for k, v in arrays.items()}


def loop_settings(sampling: SamplingParams, ids: SpecialIds, max_steps: int) -> loop.LoopSettings:
    """The traced settings of one decode loop."""
    arrays = sampling.as_arrays()
    return loop.LoopSettings(
        temperature=arrays["temperature"],
        top_p=arrays["top_p"],
        top_k=arrays["top_k"],
        close_ids=jnp.asarray(ids.think_close_ids, jnp.int32),
        natural_close_id=jnp.int32(ids.natural_close),
        eos_ids=jnp.asarray(ids.eos_ids, jnp.int32),
        pad_id=jnp.int32(ids.pad_id),
        max_steps=jnp.int32(max_steps),
    )


def request_budgets(config: Any, prompts: Sequence[Sequence[int]], *, ids: SpecialIds, mode: str, n: int,
                    think_budget: int | Sequence[int], solution_budget: int | Sequence[int],
                    max_new_tokens: int | Sequence[int] | None, max_prompt_len: int | None
                    ) -> tuple[bool, np.ndarray, np.ndarray]:
    """(plain, thinking budgets, solution budgets) per prompt of a generate request, after its
    checks (n, mode, budgets, the context); plain mode's solution budget is max_new_tokens."""
    count = len(prompts)
    if n < 1:
        raise E1Error(f"n must be >= 1, got {n}")
    if mode not in ("elastic", "plain"):
        raise E1Error(f"mode must be elastic or plain, got {mode}")
    if mode == "plain":
        if max_new_tokens is None:
            raise E1Error("plain mode needs max_new_tokens")
        sb = per_prompt(max_new_tokens, count, "max_new_tokens")
        check_context(config, prompts, ids=ids, max_new_tokens=sb, max_prompt_len=max_prompt_len)
        return True, np.ones(count, np.int64), sb
    tb = per_prompt(think_budget, count, "thinking budget")
    sb = per_prompt(solution_budget, count, "solution budget")
    check_context(config, prompts, ids=ids, think_budget=tb, solution_budget=sb, max_prompt_len=max_prompt_len)
    return False, tb, sb


# ---------------------------------------------------------------- outputs


def _split_counts(tokens: np.ndarray, forced: np.ndarray, lengths: np.ndarray, natural_close: int, close_len: int):
    """(thinking, solution) token counts per row: around the first close, forced or sampled."""
    thinking = np.zeros(len(lengths), np.int64)
    solution = np.zeros(len(lengths), np.int64)
    for i, length in enumerate(lengths):
        row = tokens[i, :length]
        forced_at = np.flatnonzero(forced[i, :length])
        natural_at = np.flatnonzero(row == natural_close)
        if len(forced_at) and (not len(natural_at) or forced_at[0] < natural_at[0]):
            start, width = int(forced_at[0]), close_len
        elif len(natural_at):
            start, width = int(natural_at[0]), 1
        else:
            thinking[i] = length
            continue
        thinking[i] = start
        solution[i] = length - start - width
    return thinking, solution


def _finish_name(code: int, plain: bool) -> str:
    if plain and code == loop.SOLUTION_BUDGET:
        return "length"
    return loop.FINISH_NAMES[code]


def assemble(out: dict[str, np.ndarray], count: int, n: int, ids: SpecialIds, plain: bool, think_budget: np.ndarray,
             solution_budget: np.ndarray) -> GenerationOutput:
    """The host arrays of the count * n real rows (tokens, logprobs, forced, lengths, truncated,
    finish) and the per-prompt budgets as a GenerationOutput."""
    lengths = out["lengths"].astype(np.int64)
    thinking, solution = _split_counts(out["tokens"], out["forced"], lengths, ids.natural_close, len(ids.think_close_ids))
    return GenerationOutput(
        prompt_index=np.repeat(np.arange(count), n),
        tokens=out["tokens"],
        logprobs=out["logprobs"],
        forced=out["forced"],
        lengths=lengths,
        thinking_tokens=thinking,
        solution_tokens=solution,
        truncated=out["truncated"].astype(bool),
        finish_reason=[_finish_name(int(f), plain) for f in out["finish"]],
        think_budget=np.repeat(think_budget, n),
        solution_budget=np.repeat(solution_budget, n),
    )
