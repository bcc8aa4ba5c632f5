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

import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from e1jax.errors import E1Error
from e1jax.eval.metrics import PLAIN
from e1jax.eval.prepared import PreparedSet, prepare_sets
from e1jax.eval.results import METRIC_FIELDS, build_results, check_complete, fingerprint, sample_order
from e1jax.eval.settings import EvalSettings
from e1jax.eval.store import RunStore, agreed_done_flags


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class Evaluation:
    """One evaluation of `datasets` ({name: records}) under `settings`, prepared before the
    parameters load: prompts made once by `task`, every prompt and budget checked against
    `model_config`, the output folder opened (process 0 only) and the plan of chunks agreed
    by every process. `run(config, params)` samples, grades and returns the results dict.

    Results: {"model", "identity", "settings", "datasets": {name: {"num_problems", "ability",
    "digest", "budgets": {key: metrics}}}, "average": {key: metrics}}, where key is a thinking
    budget as a string or "plain" and metrics are e1jax.eval.metrics'. With `keep_samples`,
    results["samples"] lists every graded sample. With `out_dir`, samples.jsonl, state.json,
    results.json, results.md and accuracy_vs_tokens.png are written there and an interrupted
    run resumes; `identity` (e.g. model path and dtype) and the task's reward are part of what
    must match to resume. On several hosts only process 0 reads and writes `out_dir`, so the
    folder need only be on process 0's filesystem; the returned results are complete there.
    """

    def __init__(self, task, datasets: Mapping[str, Sequence[Mapping]], settings: EvalSettings, *,
                 model_config, batch_size: int = 8, out_dir: str | Path | None = None,
                 model_name: str = "model", identity: Mapping | None = None) -> None:
        import jax

        from e1jax.sampling import check_context

        if batch_size < 1:
            raise E1Error(f"batch size must be at least 1, got {batch_size}")
        self.task, self.settings = task, settings
        self.model_name, self.identity = model_name, identity
        self.prepared = prepare_sets(task, datasets)
        for d in self.prepared:
            check_context(model_config, d.prompts, ids=task.special_ids,
                          think_budget=settings.think_budgets[-1] if settings.elastic else None,
                          solution_budget=settings.solution_budget, max_new_tokens=settings.max_new_tokens,
                          max_prompt_len=settings.max_prompt_len, label="problem", where=f"dataset '{d.name}'")
        self.is_main = jax.process_index() == 0
        self.store, error = None, None
        if out_dir is not None and self.is_main:
            try:
                self.store = RunStore.open(out_dir, fingerprint(settings, self.prepared, task.reward, model_name,
                                                                identity))
            except E1Error as err:
                error = err
        keys = [(kind, d.name, len(d.records)) for kind in settings.kinds for d in self.prepared]
        done = agreed_done_flags(self.store, error is not None, keys)
        if error is not None:
            raise error
        # The chunk width depends only on the data, so a resumed run compiles and samples exactly as a fresh one.
        self.width = min(batch_size, max(len(d.records) for d in self.prepared))
        self.plan: list[tuple[str, PreparedSet, list[int]]] = []
        for kind in settings.kinds:
            for d in self.prepared:
                pending = [i for i in range(len(d.records)) if not done[kind, d.name][i]]
                self.plan += [(kind, d, chunk) for chunk in _chunks(pending, self.width)]

    @property
    def total_problems(self) -> int:
        return len(self.settings.kinds) * sum(len(d.records) for d in self.prepared)

    def run(self, config, params, *, mesh=None, progress: bool = True, keep_samples: bool = False,
            on_chunk: Callable[[dict], None] | None = None) -> dict:
        """Sample and grade the pending chunks; `on_chunk` is called after each committed chunk
        with its kind, dataset and problem ids."""
        settings, store = self.settings, self.store
        if self.plan:
            from e1jax.models.params import decode_layout

            params = decode_layout(params)  # once, not per chunk
        compact: list[dict] = []
        full: list[dict] = []

        def commit(kind: str, d: PreparedSet, problem_ids: list[int], samples: list[dict]) -> list[dict]:
            graded = self.task.grade([s["response"] for s in samples], [d.records[s["problem_id"]] for s in samples])
            for s, g in zip(samples, graded):
                s.update(reward=float(g.reward), correct=bool(g.correct), extracted=g.extracted, reason=g.reason)
            if store is not None:
                store.commit(kind, d.name, problem_ids, samples)
            return samples

        def finish(future: Future, kind: str, d: PreparedSet, problem_ids: list[int]) -> None:
            samples = future.result()
            compact.extend({k: s[k] for k in METRIC_FIELDS} for s in samples)
            if keep_samples:
                full.extend(samples)
            bar.update(len(problem_ids))
            if on_chunk is not None:
                on_chunk({"kind": kind, "dataset": d.name, "problem_ids": list(problem_ids)})

        bar = _progress_bar(self.total_problems, self.total_problems - sum(len(c) for _, _, c in self.plan),
                            progress and self.is_main)
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval-grade") as pool:
                inflight = None
                for kind, d, chunk in self.plan:
                    bar.set_postfix_str(f"{d.name} {'unconstrained' if kind == PLAIN else 'budgets'}", refresh=False)
                    samples = self._samples(self._generate(config, params, d, chunk, kind, mesh), d, chunk)
                    if inflight is not None:
                        finish(*inflight)
                    inflight = (pool.submit(commit, kind, d, chunk, samples), kind, d, chunk)
                if inflight is not None:
                    finish(*inflight)
        finally:
            bar.close()

        if store is not None:
            # Every committed sample, this run's and earlier runs' (other processes of a multi-host
            # run keep only this run's samples: they do not write, and may not see, the folder).
            compact = list(store.iter_samples(METRIC_FIELDS))
            check_complete(compact, self.prepared, settings, str(store.samples_path))
        results = build_results(compact, self.prepared, settings, self.model_name, self.identity)
        if keep_samples:
            results["samples"] = sorted(full, key=sample_order([d.name for d in self.prepared]))
        if store is not None:
            from e1jax.eval.report import write_run_reports

            write_run_reports(results, store.out_dir)
            store.mark_complete()
        return results

    def _generate(self, config, params, d: PreparedSet, problem_ids: list[int], kind: str, mesh) -> dict[Any, Any]:
        """{budget (int, or PLAIN): GenerationOutput} for a chunk padded to the chunk width."""
        from e1jax.sampling import budget_sweep, generate

        settings, n = self.settings, self.settings.n
        padded = [problem_ids[j % len(problem_ids)] for j in range(self.width)]
        prompts = [d.prompts[i] for i in padded]
        sample_ids = [i * n + j for i in padded for j in range(n)]
        common = dict(ids=self.task.special_ids, sampling=settings.sampling(), n=n, seed=settings.seed,
                      sample_ids=sample_ids, mesh=mesh, eos_in_thinking=settings.eos_in_thinking,
                      max_prompt_len=settings.max_prompt_len)
        if kind == PLAIN:
            return {PLAIN: generate(config, params, prompts, mode="plain", max_new_tokens=settings.max_new_tokens,
                                    **common)}
        return budget_sweep(config, params, prompts, think_budgets=settings.think_budgets,
                            solution_budget=settings.solution_budget, **common)

    def _samples(self, outputs: Mapping[Any, Any], d: PreparedSet, problem_ids: list[int]) -> list[dict]:
        """Ungraded sample dicts of the chunk's real problems (padding rows dropped)."""
        n = self.settings.n
        samples = []
        for budget, out in outputs.items():
            for row in range(len(problem_ids) * n):
                token_ids = [int(t) for t in out.response_ids(row)]
                finish = out.finish_reason[row]
                if budget == PLAIN:
                    # Plain decoding runs in the solution phase, whose budget is max_new_tokens: hitting it is "length".
                    finish = "length" if finish == "solution_budget" else finish
                    truncated = finish == "length"
                else:
                    truncated = bool(out.truncated[row])
                samples.append({
                    "dataset": d.name,
                    "problem_id": problem_ids[row // n],
                    "sample": row % n,
                    "budget": PLAIN if budget == PLAIN else int(budget),
                    "response": self.task.text(token_ids),
                    "token_ids": token_ids,
                    "tokens": int(out.lengths[row]),
                    "thinking_tokens": int(out.thinking_tokens[row]),
                    "solution_tokens": int(out.solution_tokens[row]),
                    "truncated": truncated,
                    "finish_reason": finish,
                })
        return samples


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="eval", unit="problem", file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, leave=True)
