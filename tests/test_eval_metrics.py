"""Evaluation arithmetic, reports and the resumable store, on hand-made samples (no model)."""

import json
import math

import pytest

from e1jax.errors import E1Error
from e1jax.eval.metrics import budget_key, cell_metrics, sorted_budget_keys, summarize
from e1jax.eval.report import (
    combine_runs,
    comparison_markdown,
    merge_results,
    plot_accuracy_vs_tokens,
    write_comparison_table,
)
from e1jax.eval.runner import EvalSettings
from e1jax.eval.store import RunStore


def sample(problem, correct, tokens=10, thinking=6, solution=3, truncated=False, finish="eos", dataset="d", budget=4,
           reason=None, index=0):
    return {"dataset": dataset, "problem_id": problem, "sample": index, "budget": budget, "tokens": tokens,
            "thinking_tokens": thinking, "solution_tokens": solution, "truncated": truncated, "finish_reason": finish,
            "correct": correct, "reason": reason or ("correct" if correct else "mismatch")}


def test_cell_metrics_avg_pass_tokens_truncation():
    # problem 0: 2 of 4 correct, problem 1: none, problem 2: all four
    correct = {0: [1, 0, 1, 0], 1: [0, 0, 0, 0], 2: [1, 1, 1, 1]}
    samples = []
    for p, flags in correct.items():
        for j, c in enumerate(flags):
            samples.append(sample(p, bool(c), tokens=10 * (p + 1) + j, thinking=5 + j, solution=p,
                                  truncated=(p == 1), finish="solution_budget" if j == 3 else "eos", index=j))
    m = cell_metrics(samples)
    assert m["num_problems"] == 3 and m["num_samples"] == 12 and m["samples_per_problem"] == 4
    assert m["avg_at_n"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert m["pass_at_n"] == pytest.approx(2 / 3)
    per = [0.5, 0.0, 1.0]
    mean = sum(per) / 3
    assert m["accuracy_stderr"] == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in per) / 2 / 3))
    tokens = [10 * (p + 1) + j for p in range(3) for j in range(4)]
    assert m["mean_tokens"] == pytest.approx(sum(tokens) / 12)
    assert m["max_tokens"] == max(tokens)
    assert m["mean_thinking_tokens"] == pytest.approx(6.5)
    assert m["mean_solution_tokens"] == pytest.approx(1.0)
    assert m["truncation_rate"] == pytest.approx(4 / 12)
    assert m["finish_reasons"] == {"eos": 9, "solution_budget": 3}
    assert m["grade_reasons"] == {"correct": 6, "mismatch": 6}


def test_avg_at_n_weights_problems_equally_and_pass_needs_one_correct():
    samples = [sample(0, True, index=0), sample(0, False, index=1), sample(1, False, index=0), sample(1, False, index=1)]
    m = cell_metrics(samples)
    assert m["avg_at_n"] == pytest.approx(0.25)
    assert m["pass_at_n"] == pytest.approx(0.5)
    assert cell_metrics([sample(0, False)])["accuracy_stderr"] == 0.0


def test_summarize_orders_budgets_and_averages_over_datasets():
    samples = []
    for budget in (8, "plain", 4):
        # dataset a: 2 problems, accuracy 1.0 at budget 4, 0.5 at 8, 0 unconstrained; dataset b: 1 problem, all wrong
        for p in range(2):
            ok = budget == 4 or (budget == 8 and p == 0)
            samples.append(sample(p, ok, tokens=100 if budget == "plain" else int(budget), dataset="a", budget=budget))
        samples.append(sample(0, False, tokens=50, dataset="b", budget=budget))
    out = summarize(samples, ["b", "a"])
    assert list(out["datasets"]) == ["b", "a"]
    assert list(out["datasets"]["a"]["budgets"]) == ["plain", "4", "8"]
    assert out["datasets"]["a"]["budgets"]["8"]["avg_at_n"] == pytest.approx(0.5)
    # the average is over datasets (unweighted), not over problems
    assert out["average"]["4"]["avg_at_n"] == pytest.approx(0.5)
    assert out["average"]["plain"]["mean_tokens"] == pytest.approx((100 + 50) / 2)
    assert out["average"]["4"]["num_datasets"] == 2
    assert budget_key("plain") == "plain" and budget_key(512) == "512"
    assert sorted_budget_keys(["1024", "plain", "512"]) == ["plain", "512", "1024"]


def results_for(model, cells_by_dataset, settings=None):
    datasets = {}
    for name, cells in cells_by_dataset.items():
        budgets = {k: {"avg_at_n": acc, "pass_at_n": acc, "mean_tokens": tok, "mean_thinking_tokens": tok,
                       "mean_solution_tokens": 0.0, "truncation_rate": 0.0} for k, (tok, acc) in cells.items()}
        datasets[name] = {"num_problems": 30, "ability": "math", "budgets": budgets}
    settings = settings or {"mode": "elastic", "think_budgets": [512, 1024], "solution_budget": 1024,
                            "max_new_tokens": None, "n": 16, "temperature": 0.6, "top_p": 0.95}
    return {"model": model, "settings": settings, "datasets": datasets, "average": {}}


def test_comparison_table_layout_one_row_per_model():
    base = results_for("base", {"aime": {"plain": (10050, 0.41), "512": (1488, 0.052), "1024": (1904, 0.096)},
                                "amc": {"512": (1000, 0.2), "1024": (1500, 0.3)}})
    e1 = results_for("e1", {"aime": {"512": (1340, 0.135), "1024": (1799, 0.175)},
                            "amc": {"512": (900, 0.401), "1024": (1300, 0.501)}})
    text = comparison_markdown([base, e1], ["DeepScaleR-1.5B", "E1-Math-1.5B"])
    lines = text.splitlines()
    aime = lines.index("## aime (30 problems)")
    header = lines[aime + 2]
    assert header.split("|")[2].strip() == "Unconstrained Tokens"
    assert "| t=512 Tokens | t=512 Acc | t=1024 Tokens | t=1024 Acc |" in header
    assert lines[aime + 4] == "| DeepScaleR-1.5B | 10050 | 41.0 | 1488 | 5.2 | 1904 | 9.6 |"
    assert lines[aime + 5] == "| E1-Math-1.5B | – | – | 1340 | 13.5 | 1799 | 17.5 |"
    avg = lines.index("## Average over aime, amc")
    # averages over the datasets both models have, for the budgets every dataset has
    assert lines[avg + 4] == "| DeepScaleR-1.5B | 1244 | 12.6 | 1702 | 19.8 |"
    assert lines[avg + 5] == "| E1-Math-1.5B | 1120 | 26.8 | 1550 | 33.8 |"
    assert "avg@16" in text and "solution budget s=1024" in text


def test_merge_plain_and_elastic_runs_into_one_row(tmp_path):
    plain_settings = {"mode": "plain", "think_budgets": [], "solution_budget": None, "max_new_tokens": 32768,
                      "n": 16, "temperature": 0.6, "top_p": 0.95}
    plain = results_for("m", {"aime": {"plain": (9000, 0.4)}}, plain_settings)
    elastic = results_for("m", {"aime": {"512": (1400, 0.1), "1024": (1800, 0.2)}})
    other = results_for("other", {"aime": {"512": (1300, 0.15)}})
    merged = merge_results([plain, elastic])
    assert list(merged["datasets"]["aime"]["budgets"]) == ["plain", "512", "1024"]
    assert merged["settings"]["max_new_tokens"] == 32768 and merged["settings"]["solution_budget"] == 1024
    assert merged["settings"]["mode"] == "both"
    assert merged["average"]["plain"]["avg_at_n"] == pytest.approx(0.4)

    paths = []
    for i, r in enumerate([plain, elastic, other]):
        d = tmp_path / f"run{i}"
        d.mkdir()
        (d / "results.json").write_text(json.dumps(r))
        paths.append(d)
    rows, names = combine_runs(paths)
    assert names == ["m", "other"] and len(rows) == 2
    table = write_comparison_table(rows, names, tmp_path / "cmp" / "results.md").read_text()
    assert "| m | 9000 | 40.0 | 1400 | 10.0 | 1800 | 20.0 |" in table
    assert "| other | – | – | 1300 | 15.0 | – | – |" in table
    rows, names = combine_runs(paths, ["a", "b", "c"])
    assert names == ["a", "b", "c"]
    with pytest.raises(E1Error, match="2 names for 3"):
        combine_runs(paths, ["a", "b"])
    with pytest.raises(E1Error, match="no results.json"):
        combine_runs([tmp_path])
    png = plot_accuracy_vs_tokens(rows, names, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_settings_validation():
    with pytest.raises(E1Error, match="thinking budgets must be positive"):
        EvalSettings(think_budgets=(0, 4))
    with pytest.raises(E1Error, match="solution budget must be positive"):
        EvalSettings(solution_budget=-1)
    with pytest.raises(E1Error, match="top-p"):
        EvalSettings(top_p=1.5)
    with pytest.raises(E1Error, match="top-p"):
        EvalSettings(top_p=0.0)
    with pytest.raises(E1Error, match="needs max_new_tokens"):
        EvalSettings(mode="plain")
    with pytest.raises(E1Error, match="mode must be"):
        EvalSettings(mode="fast")
    s = EvalSettings(think_budgets=(8, 4, 8), mode="both", max_new_tokens=16)
    assert s.think_budgets == (4, 8) and s.kinds == ("sweep", "plain")
    p = EvalSettings(mode="plain", max_new_tokens=16)
    assert p.think_budgets == () and p.solution_budget is None and p.kinds == ("plain",)


def test_store_commits_resumes_and_refuses_other_settings(tmp_path):
    out = tmp_path / "run"
    fp = {"settings": {"n": 2, "think_budgets": [4, 8]}, "datasets": {"d": {"num_problems": 3}}}
    store = RunStore.open(out, fp)
    store.commit("sweep", "d", [0, 1], [{"problem_id": 0, "x": 1}, {"problem_id": 1, "x": 2}])
    committed = (out / "samples.jsonl").stat().st_size
    # a crash between appending samples and writing the state leaves unrecorded bytes behind
    with (out / "samples.jsonl").open("a") as f:
        f.write('{"problem_id": 2, "x": 3}\n{"problem_id": 2, "x"')
    again = RunStore.open(out, fp)
    assert (out / "samples.jsonl").stat().st_size == committed
    assert again.is_done("sweep", "d", 1) and not again.is_done("sweep", "d", 2)
    assert [s["x"] for s in again.iter_samples()] == [1, 2]
    assert list(again.iter_samples(["x"])) == [{"x": 1}, {"x": 2}]

    other = {"settings": {"n": 4, "think_budgets": [4, 8]}, "datasets": {"d": {"num_problems": 3}}}
    with pytest.raises(E1Error, match=r"different settings \(settings.n: 2 -> 4\)"):
        RunStore.open(out, other)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "samples.jsonl").write_text("{}\n")
    with pytest.raises(E1Error, match="without state.json"):
        RunStore.open(foreign, fp)
    (out / "samples.jsonl").write_text("")
    with pytest.raises(E1Error, match="shorter than state.json"):
        RunStore.open(out, fp)
