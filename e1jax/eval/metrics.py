"""Metric arithmetic over graded samples: avg@n, pass@n, token counts, truncation.

A sample is a mapping with at least: dataset, problem_id, budget (an int
thinking budget or "plain"), tokens (response length: thinking + close +
solution, prompt excluded), thinking_tokens, solution_tokens, truncated,
finish_reason, correct and reason (the grader's).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping, Sequence

PLAIN = "plain"

# Cell metrics averaged over datasets in the "average" entry (the paper's Avg column).
AVERAGED = ("avg_at_n", "pass_at_n", "mean_tokens", "mean_thinking_tokens", "mean_solution_tokens", "truncation_rate")


def budget_key(budget: int | str) -> str:
    """The JSON key of a budget: "plain" for the unconstrained column, else the thinking budget."""
    if budget == PLAIN:
        return PLAIN
    return str(int(budget))


def budget_sort_key(key: str) -> tuple[int, int]:
    """Unconstrained first, then thinking budgets in ascending order."""
    return (0, 0) if key == PLAIN else (1, int(key))


def sorted_budget_keys(keys: Iterable[str]) -> list[str]:
    return sorted(set(keys), key=budget_sort_key)


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def cell_metrics(samples: Sequence[Mapping]) -> dict:
    """Metrics of one (dataset, budget) cell.

    avg_at_n: mean correctness over problems x samples (the original's "pass@1"),
    taken as the mean over problems of each problem's share of correct samples;
    pass_at_n: share of problems with at least one correct sample;
    accuracy_stderr: standard error of avg_at_n across problems.
    """
    by_problem: dict = collections.defaultdict(list)
    for s in samples:
        by_problem[s["problem_id"]].append(bool(s["correct"]))
    per_problem = [sum(c) / len(c) for c in by_problem.values()]
    problems = len(per_problem)
    avg = _mean(per_problem)
    if problems > 1:
        var = sum((p - avg) ** 2 for p in per_problem) / (problems - 1)
        stderr = math.sqrt(var / problems)
    else:
        stderr = 0.0
    counts = {len(c) for c in by_problem.values()}
    return {
        "num_problems": problems,
        "num_samples": len(samples),
        "samples_per_problem": counts.pop() if len(counts) == 1 else None,
        "avg_at_n": avg,
        "pass_at_n": _mean([float(any(c)) for c in by_problem.values()]),
        "accuracy_stderr": stderr,
        "mean_tokens": _mean([s["tokens"] for s in samples]),
        "mean_thinking_tokens": _mean([s["thinking_tokens"] for s in samples]),
        "mean_solution_tokens": _mean([s["solution_tokens"] for s in samples]),
        "max_tokens": max((int(s["tokens"]) for s in samples), default=0),
        "truncation_rate": _mean([float(bool(s["truncated"])) for s in samples]),
        "finish_reasons": dict(sorted(collections.Counter(s["finish_reason"] for s in samples).items())),
        "grade_reasons": dict(sorted(collections.Counter(s["reason"] for s in samples).items())),
    }


def average_metrics(cells: Sequence[Mapping]) -> dict:
    """Unweighted mean over datasets of each cell's AVERAGED metrics."""
    out = {name: _mean([c[name] for c in cells]) for name in AVERAGED}
    out["num_datasets"] = len(cells)
    return out


def summarize(samples: Iterable[Mapping], dataset_order: Sequence[str] | None = None) -> dict:
    """{"datasets": {name: {"budgets": {key: cell}}}, "average": {key: averaged}}.

    The average covers the budget keys present in every dataset.
    """
    cells: dict = collections.defaultdict(lambda: collections.defaultdict(list))
    for s in samples:
        cells[s["dataset"]][budget_key(s["budget"])].append(s)
    names = [n for n in (dataset_order or []) if n in cells] + sorted(n for n in cells if n not in (dataset_order or []))
    datasets = {
        name: {"budgets": {key: cell_metrics(cells[name][key]) for key in sorted_budget_keys(cells[name])}}
        for name in names
    }
    common = set.intersection(*(set(d["budgets"]) for d in datasets.values())) if datasets else set()
    average = {
        key: average_metrics([datasets[name]["budgets"][key] for name in names]) for key in sorted_budget_keys(common)
    }
    return {"datasets": datasets, "average": average}
