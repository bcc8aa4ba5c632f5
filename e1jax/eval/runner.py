"""Budget-sweep evaluation: sample every problem n times at every thinking budget, grade, measure.

Problems go through the sampler in fixed-size chunks (the last one padded with
copies, whose samples are dropped). Sample j of problem i always uses the random
stream (seed, i * n + j), so results do not depend on chunking or on resuming.
Elastic mode runs one `budget_sweep` per chunk (all budgets from one thinking
pass); plain mode runs `generate(mode="plain")` for the unconstrained column.
Grading a chunk overlaps with generating the next one. With an output folder,
every finished chunk is committed to samples.jsonl, and a rerun with the same
settings skips the problems already done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from e1jax.errors import E1Error
from e1jax.eval.metrics import PLAIN, budget_key, summarize
from e1jax.eval.store import RunStore

# reward_fn(responses, records) -> one GradeResult per response (e1jax.rewards.types)
RewardFn = Callable[[Sequence[str], Sequence[Mapping]], Sequence[Any]]
MODES = ("elastic", "plain", "both")
SWEEP = "sweep"
DEFAULT_BUDGETS = (512, 1024, 2048, 3072)

# What metrics need of a sample (samples.jsonl holds more: text, token ids, ...).
METRIC_FIELDS = ("dataset", "problem_id", "sample", "budget", "tokens", "thinking_tokens", "solution_tokens",
                 "truncated", "finish_reason", "correct", "reason")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Everything that determines the samples (batch size and mesh do not)."""

    mode: str = "elastic"  # elastic: the budget columns; plain: the unconstrained column; both
    think_budgets: tuple[int, ...] = DEFAULT_BUDGETS
    solution_budget: int | None = 1024
    max_new_tokens: int | None = None  # plain mode's limit
    n: int = 16
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    seed: int = 0
    chat_template: bool = True
    eos_in_thinking: str = "stop"
    max_prompt_len: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise E1Error(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.elastic:
            budgets = tuple(sorted(set(int(b) for b in self.think_budgets)))
            if not budgets:
                raise E1Error("no thinking budgets given")
            if budgets[0] <= 0:
                raise E1Error(f"thinking budgets must be positive, got {budgets[0]}")
            if self.solution_budget is None or self.solution_budget <= 0:
                raise E1Error(f"the solution budget must be positive, got {self.solution_budget}")
            object.__setattr__(self, "think_budgets", budgets)
        else:
            object.__setattr__(self, "think_budgets", ())
            object.__setattr__(self, "solution_budget", None)
        if self.plain:
            if self.max_new_tokens is None:
                raise E1Error(f"mode {self.mode} needs max_new_tokens (the unconstrained column's limit)")
            if self.max_new_tokens <= 0:
                raise E1Error(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        else:
            object.__setattr__(self, "max_new_tokens", None)
        if self.n < 1:
            raise E1Error(f"n must be at least 1, got {self.n}")
        if self.eos_in_thinking not in ("stop", "append_close"):
            raise E1Error(f"eos_in_thinking must be stop or append_close, got {self.eos_in_thinking!r}")
        if self.max_prompt_len is not None and self.max_prompt_len <= 0:
            raise E1Error(f"max_prompt_len must be positive, got {self.max_prompt_len}")
        self.sampling()  # temperature, top-p, top-k checks

    @property
    def elastic(self) -> bool:
        return self.mode in ("elastic", "both")

    @property
    def plain(self) -> bool:
        return self.mode in ("plain", "both")

    @property
    def kinds(self) -> tuple[str, ...]:
        """Generation passes: the sweep (cheap budgets) before the unconstrained run."""
        return ((SWEEP,) if self.elastic else ()) + ((PLAIN,) if self.plain else ())

    def budget_keys(self, kind: str) -> list[str]:
        return [PLAIN] if kind == PLAIN else [budget_key(b) for b in self.think_budgets]

    def sampling(self):
        from e1jax.sampling import SamplingParams

        return SamplingParams(self.temperature, self.top_p, self.top_k)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclasses.dataclass
class _Dataset:
    name: str
    records: list[dict]
    prompts: list[list[int]]

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for record, prompt in zip(self.records, self.prompts):
            item = [record.get("ability", "math"), record["problem"], record["ground_truth"], prompt]
            h.update(json.dumps(item, sort_keys=True, default=str).encode())
        return h.hexdigest()[:16]

    @property
    def abilities(self) -> list[str]:
        return sorted({r.get("ability", "math") for r in self.records})


def is_code(record: Mapping) -> bool:
    return record.get("ability") == "code"


def encode_prompt(tokenizer, record: Mapping, chat_template: bool = True) -> list[int]:
    """A problem's prompt: the E1 instruction for math, the problem as is for code (as the original)."""
    return list(tokenizer.encode_prompt(record["problem"], chat_template=chat_template,
                                        e1_instruction=not is_code(record)))


def prepare_datasets(tokenizer, datasets: Mapping[str, Sequence[Mapping]], settings: EvalSettings) -> list[_Dataset]:
    """Tokenized prompts (see encode_prompt)."""
    if not datasets:
        raise E1Error("no datasets to evaluate")
    prepared = []
    for name, records in datasets.items():
        records = [dict(r) for r in records]
        if not records:
            raise E1Error(f"dataset '{name}' has no problems")
        prompts = []
        for i, record in enumerate(records):
            for field in ("problem", "ground_truth"):
                if field not in record:
                    raise E1Error(f"dataset '{name}' problem {i}: missing field '{field}'")
            prompts.append(encode_prompt(tokenizer, record, settings.chat_template))
        prepared.append(_Dataset(name, records, prompts))
    return prepared


def check_fits(config, prepared: Sequence[_Dataset], settings: EvalSettings, close_len: int) -> None:
    """Prompt lengths, token ids and budgets against the model, before any generation."""
    longest = 0
    for d in prepared:
        for i, prompt in enumerate(d.prompts):
            if not prompt:
                raise E1Error(f"dataset '{d.name}' problem {i}: the prompt is empty")
            if settings.max_prompt_len is not None and len(prompt) > settings.max_prompt_len:
                over = sum(len(p) > settings.max_prompt_len for p in d.prompts)
                raise E1Error(f"dataset '{d.name}' problem {i}: prompt is {len(prompt)} tokens, longer than the "
                              f"maximum prompt length {settings.max_prompt_len} ({over} prompts of '{d.name}' are)")
            if max(prompt) >= config.vocab_size or min(prompt) < 0:
                raise E1Error(f"dataset '{d.name}' problem {i}: the prompt has a token id outside the model's "
                              f"vocabulary (size {config.vocab_size}); tokenizer and model do not match")
            longest = max(longest, len(prompt))
    context = config.max_position_embeddings
    if settings.elastic:
        total = longest + settings.think_budgets[-1] + close_len + settings.solution_budget
        if total > context:
            raise E1Error(f"thinking budget {settings.think_budgets[-1]} + close {close_len} + solution budget "
                          f"{settings.solution_budget} + longest prompt {longest} = {total} tokens exceed the "
                          f"model's context of {context}")
    if settings.plain:
        total = longest + settings.max_new_tokens
        if total > context:
            raise E1Error(f"max new tokens {settings.max_new_tokens} + longest prompt {longest} = {total} tokens "
                          f"exceed the model's context of {context}")


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _strip_eos(ids: list[int], eos_ids: Sequence[int]) -> list[int]:
    return ids[:-1] if ids and ids[-1] in eos_ids else ids


def _generate_chunk(config, params, tokenizer, d: _Dataset, problem_ids: list[int], width: int, kind: str,
                    settings: EvalSettings, ids, mesh) -> dict[str, Any]:
    """{budget key: GenerationOutput} for a chunk padded to `width` problems (padding rows included)."""
    from e1jax.sampling import budget_sweep, generate

    n = settings.n
    padded = [problem_ids[j % len(problem_ids)] for j in range(width)]
    prompts = [d.prompts[i] for i in padded]
    sample_ids = [i * n + j for i in padded for j in range(n)]
    common = dict(ids=ids, sampling=settings.sampling(), n=n, seed=settings.seed, sample_ids=sample_ids, mesh=mesh,
                  eos_in_thinking=settings.eos_in_thinking, max_prompt_len=settings.max_prompt_len)
    if kind == PLAIN:
        out = generate(config, params, prompts, mode="plain", max_new_tokens=settings.max_new_tokens, **common)
        return {PLAIN: out}
    sweep = budget_sweep(config, params, prompts, think_budgets=settings.think_budgets,
                         solution_budget=settings.solution_budget, **common)
    return {budget_key(b): out for b, out in sweep.items()}


def _raw_samples(outputs: Mapping[str, Any], d: _Dataset, problem_ids: list[int], n: int, tokenizer) -> list[dict]:
    """Ungraded sample dicts of the chunk's real problems (padding rows dropped)."""
    samples = []
    for key, out in outputs.items():
        for row in range(len(problem_ids) * n):
            token_ids = [int(t) for t in out.response_ids(row)]
            finish = out.finish_reason[row]
            if key == PLAIN:
                # Plain decoding runs in the solution phase, whose budget is max_new_tokens: hitting it is "length".
                finish = "length" if finish == "solution_budget" else finish
                truncated = finish == "length"
            else:
                truncated = bool(out.truncated[row])
            samples.append({
                "dataset": d.name,
                "problem_id": problem_ids[row // n],
                "sample": row % n,
                "budget": PLAIN if key == PLAIN else int(key),
                "response": tokenizer.decode(_strip_eos(token_ids, tokenizer.eos_ids)),
                "token_ids": token_ids,
                "tokens": int(out.lengths[row]),
                "thinking_tokens": int(out.thinking_tokens[row]),
                "solution_tokens": int(out.solution_tokens[row]),
                "truncated": truncated,
                "finish_reason": finish,
            })
    return samples


def grade_samples(samples: list[dict], records: Sequence[Mapping], *, workers: int | None = None,
                  reward_fn: RewardFn | None = None) -> None:
    """Add reward, correct, extracted and reason to each sample (math or code grader by the record's
    ability, or `reward_fn(responses, records)` -> one GradeResult per response when given)."""
    if reward_fn is not None:
        graded = list(reward_fn([s["response"] for s in samples], [records[s["problem_id"]] for s in samples]))
        if len(graded) != len(samples):
            raise E1Error(f"the reward function returned {len(graded)} grades for {len(samples)} responses")
        for s, g in zip(samples, graded):
            s.update(reward=float(g.reward), correct=bool(g.correct), extracted=g.extracted, reason=g.reason)
        return
    by_kind: dict[bool, list[int]] = {False: [], True: []}
    for i, s in enumerate(samples):
        by_kind[is_code(records[s["problem_id"]])].append(i)
    results: dict[int, Any] = {}
    if by_kind[False]:
        from e1jax.rewards.math import grade_math_batch

        graded = grade_math_batch([samples[i]["response"] for i in by_kind[False]],
                                  [records[samples[i]["problem_id"]]["ground_truth"] for i in by_kind[False]],
                                  workers=workers)
        results.update(zip(by_kind[False], graded))
    if by_kind[True]:
        from e1jax.rewards.code import grade_code_batch

        graded = grade_code_batch([samples[i]["response"] for i in by_kind[True]],
                                  [records[samples[i]["problem_id"]]["ground_truth"] for i in by_kind[True]],
                                  workers=workers)
        results.update(zip(by_kind[True], graded))
    for i, s in enumerate(samples):
        g = results[i]
        s.update(reward=float(g.reward), correct=bool(g.correct), extracted=g.extracted, reason=g.reason)


def _fingerprint(settings: EvalSettings, prepared: Sequence[_Dataset], model_name: str, identity: Mapping | None) -> dict:
    return {
        "model": model_name,
        "identity": dict(identity or {}),
        "settings": settings.to_dict(),
        "datasets": {d.name: {"num_problems": len(d.records), "digest": d.digest} for d in prepared},
    }


def preflight(config, tokenizer, datasets: Mapping[str, Sequence[Mapping]], settings: EvalSettings, *,
              out_dir: str | Path | None = None, model_name: str = "model", identity: Mapping | None = None) -> None:
    """The checks `run_evaluation` starts with (prompts, budgets vs context, resumability of `out_dir`),
    for callers that want them before loading parameters; `config` may come from config.json alone."""
    prepared = prepare_datasets(tokenizer, datasets, settings)
    check_fits(config, prepared, settings, 1)
    if out_dir is not None:
        RunStore.open(out_dir, _fingerprint(settings, prepared, model_name, identity), writer=False)


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="eval", unit="problem", file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, leave=True)


def run_evaluation(
    config,
    params,
    tokenizer,
    datasets: Mapping[str, Sequence[Mapping]],
    settings: EvalSettings,
    *,
    batch_size: int = 8,
    mesh=None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    model_name: str = "model",
    identity: Mapping | None = None,
    grade_workers: int | None = None,
    keep_samples: bool = False,
    on_chunk: Callable[[dict], None] | None = None,
    reward_fn: RewardFn | None = None,
) -> dict:
    """Evaluate and return the results dict (see `evaluate`)."""
    import jax

    from e1jax.sampling import SpecialIds

    if batch_size < 1:
        raise E1Error(f"batch size must be at least 1, got {batch_size}")
    ids = SpecialIds(think_close_ids=(tokenizer.think_close_id,), eos_ids=tuple(tokenizer.eos_ids),
                     pad_id=tokenizer.pad_id)
    prepared = prepare_datasets(tokenizer, datasets, settings)
    names = [d.name for d in prepared]
    check_fits(config, prepared, settings, len(ids.think_close_ids))
    fingerprint = _fingerprint(settings, prepared, model_name, identity)
    is_main = jax.process_index() == 0
    store, error = None, None
    if out_dir is not None and is_main:  # only process 0 touches the folder (see _plan_on_process_zero)
        try:
            store = RunStore.open(out_dir, fingerprint)
        except E1Error as err:
            error = err
    done = _plan_on_process_zero(store, error is not None, settings, prepared)
    if error is not None:
        raise error

    # The chunk width depends only on the data, so a resumed run compiles and samples exactly as a fresh one.
    width = min(batch_size, max(len(d.records) for d in prepared))
    plan = []
    for kind in settings.kinds:
        for d in prepared:
            pending = [i for i in range(len(d.records)) if not done[kind, d.name][i]]
            plan += [(kind, d, chunk) for chunk in _chunks(pending, width)]
    if plan:
        from e1jax.models.params import decode_layout

        params = decode_layout(params)  # once, not per chunk
    total = len(settings.kinds) * sum(len(d.records) for d in prepared)
    compact: list[dict] = []
    full: list[dict] = []

    def commit(kind: str, d: _Dataset, problem_ids: list[int], samples: list[dict]) -> list[dict]:
        grade_samples(samples, d.records, workers=grade_workers, reward_fn=reward_fn)
        if store is not None:
            store.commit(kind, d.name, problem_ids, samples)
        return samples

    def finish(future: Future, kind: str, d: _Dataset, problem_ids: list[int]) -> None:
        samples = future.result()
        compact.extend({k: s[k] for k in METRIC_FIELDS} for s in samples)
        if keep_samples:
            full.extend(samples)
        bar.update(len(problem_ids))
        if on_chunk is not None:
            on_chunk({"kind": kind, "dataset": d.name, "problem_ids": list(problem_ids)})

    bar = _progress_bar(total, total - sum(len(c) for _, _, c in plan), progress and is_main)
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval-grade") as pool:
            inflight = None
            for kind, d, chunk in plan:
                bar.set_postfix_str(f"{d.name} {'unconstrained' if kind == PLAIN else 'budgets'}", refresh=False)
                outputs = _generate_chunk(config, params, tokenizer, d, chunk, width, kind, settings, ids, mesh)
                samples = _raw_samples(outputs, d, chunk, settings.n, tokenizer)
                if inflight is not None:
                    finish(*inflight)
                inflight = (pool.submit(commit, kind, d, chunk, samples), kind, d, chunk)
            if inflight is not None:
                finish(*inflight)
    finally:
        bar.close()

    if store is not None and store.writer:
        # Every committed sample, this run's and earlier runs' (other processes of a multi-host
        # run keep only this run's samples: they do not write, and may not see, the folder).
        compact = list(store.iter_samples(METRIC_FIELDS))
        _check_complete(compact, prepared, settings, store)
    results = build_results(compact, prepared, settings, model_name, identity)
    if keep_samples:
        results["samples"] = sorted(full, key=_sample_order(names))
    if store is not None and store.writer:
        from e1jax.eval.report import write_run_reports

        write_run_reports(results, store.out_dir)
        store.mark_complete()
    return results


def _plan_on_process_zero(store: RunStore | None, failed: bool, settings: EvalSettings,
                          prepared: Sequence[_Dataset]) -> dict[tuple[str, str], list[bool]]:
    """{(kind, dataset): done flag per problem} as process 0's store has them, on every process.

    Every process must sample the same chunks in the same order (the sampler's collectives
    pair up across hosts), so the others take process 0's view of a resumed folder instead of
    reading it themselves: no race with process 0 creating it, no shared filesystem needed.
    `failed`: process 0 could not open the folder; the others stop too instead of waiting."""
    import jax
    import numpy as np

    keys = [(kind, d) for kind in settings.kinds for d in prepared]
    flags = np.array([int(failed)] + [int(store is not None and store.is_done(kind, d.name, i))
                                      for kind, d in keys for i in range(len(d.records))], np.int32)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        flags = np.asarray(multihost_utils.broadcast_one_to_all(flags))
    if flags[0] and jax.process_index() != 0:
        raise E1Error("process 0 could not open the output folder (its error names the problem)")
    done, start = {}, 1
    for kind, d in keys:
        done[kind, d.name] = [bool(f) for f in flags[start:start + len(d.records)]]
        start += len(d.records)
    return done


def _sample_order(names: Sequence[str]):
    rank = {name: i for i, name in enumerate(names)}

    def key(s: Mapping) -> tuple:
        b = s["budget"]
        return (rank.get(s["dataset"], len(rank)), (0, 0) if b == PLAIN else (1, int(b)), s["problem_id"], s["sample"])

    return key


def _check_complete(samples: Sequence[Mapping], prepared: Sequence[_Dataset], settings: EvalSettings, store: RunStore) -> None:
    counts: dict[tuple[str, str], int] = {}
    for s in samples:
        k = (s["dataset"], budget_key(s["budget"]))
        counts[k] = counts.get(k, 0) + 1
    for kind in settings.kinds:
        for d in prepared:
            for key in settings.budget_keys(kind):
                want = len(d.records) * settings.n
                if counts.get((d.name, key), 0) != want:
                    raise E1Error(f"{store.samples_path} holds {counts.get((d.name, key), 0)} samples of "
                                  f"{d.name} at budget {key}, expected {want}; use a fresh --out")


def build_results(samples: Sequence[Mapping], prepared: Sequence[_Dataset], settings: EvalSettings,
                  model_name: str, identity: Mapping | None) -> dict:
    names = [d.name for d in prepared]
    summary = summarize(sorted(samples, key=_sample_order(names)), names)
    datasets = {}
    for d in prepared:
        datasets[d.name] = {
            "num_problems": len(d.records),
            "ability": ",".join(d.abilities),
            "digest": d.digest,
            "budgets": summary["datasets"].get(d.name, {"budgets": {}})["budgets"],
        }
    return {
        "model": model_name,
        "identity": dict(identity or {}),
        "settings": settings.to_dict(),
        "datasets": datasets,
        "average": summary["average"],
    }


def evaluate(
    config,
    params,
    tokenizer,
    datasets: Mapping[str, Sequence[Mapping]],
    *,
    think_budgets: Sequence[int] = DEFAULT_BUDGETS,
    solution_budget: int = 1024,
    n: int = 16,
    sampling=None,
    seed: int = 0,
    batch_size: int = 8,
    mesh=None,
    mode: str = "elastic",
    max_new_tokens: int | None = None,
    chat_template: bool = True,
    eos_in_thinking: str = "stop",
    max_prompt_len: int | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    model_name: str = "model",
    identity: Mapping | None = None,
    grade_workers: int | None = None,
    keep_samples: bool = False,
    on_chunk: Callable[[dict], None] | None = None,
    reward_fn: RewardFn | None = None,
) -> dict:
    """Elastic (and/or unconstrained) evaluation of a model on named problem sets.

    `datasets` maps a name to records {"problem", "ground_truth", "ability"}; the
    tokenizer needs encode_prompt, decode, think_close_id, eos_ids and pad_id
    (e1jax.tokenizer.Tokenizer). `sampling` is a SamplingParams (default:
    temperature 0.6, top-p 0.95). mode "elastic" sweeps `think_budgets` with
    `solution_budget`; "plain" runs unconstrained up to `max_new_tokens`; "both" does both.

    Returns {"model", "identity", "settings", "datasets": {name: {"num_problems",
    "ability", "digest", "budgets": {key: metrics}}}, "average": {key: metrics}}
    where key is a thinking budget as a string or "plain", and metrics hold
    avg_at_n, pass_at_n, mean_tokens, mean_thinking_tokens, mean_solution_tokens,
    truncation_rate, finish_reasons, grade_reasons, ... (e1jax.eval.metrics).
    With `keep_samples`, results["samples"] lists every graded sample.
    With `out_dir`, samples.jsonl, state.json, results.json, results.md and
    accuracy_vs_tokens.png are written there and an interrupted run resumes;
    `identity` (e.g. model path and dtype) is part of what must match to resume.
    `on_chunk` is called after each committed chunk with its kind, dataset and problem ids.
    `reward_fn(responses, records)` -> GradeResults replaces the math/code graders (e.g. a
    trainer's custom reward); it is not part of what must match to resume, so name it in `identity`.
    On several hosts only process 0 reads and writes `out_dir` (the others follow its plan), so
    the folder need only be on process 0's filesystem; the returned results are complete there.
    """
    from e1jax.sampling import SamplingParams

    sampling = sampling if sampling is not None else SamplingParams(0.6, 0.95)
    settings = EvalSettings(
        mode=mode, think_budgets=tuple(think_budgets), solution_budget=solution_budget, max_new_tokens=max_new_tokens,
        n=n, temperature=float(sampling.temperature), top_p=float(sampling.top_p), top_k=int(sampling.top_k),
        seed=seed, chat_template=chat_template, eos_in_thinking=eos_in_thinking, max_prompt_len=max_prompt_len,
    )
    return run_evaluation(
        config, params, tokenizer, datasets, settings, batch_size=batch_size, mesh=mesh, out_dir=out_dir,
        progress=progress, model_name=model_name, identity=identity, grade_workers=grade_workers,
        keep_samples=keep_samples, on_chunk=on_chunk, reward_fn=reward_fn,
    )
