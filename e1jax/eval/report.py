"""Evaluation reports: results.json, the paper-style markdown table, the accuracy-vs-tokens plot.

Tables follow the paper: one row per model; per column (unconstrained first,
then each thinking budget) the mean response length "Tokens" and "Acc"
(avg@n, %); one table per dataset plus the average over datasets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from e1jax.errors import E1Error
from e1jax.eval.metrics import PLAIN, average_metrics, sorted_budget_keys
from e1jax.eval.store import RESULTS_FILE

TABLE_FILE = "results.md"
PLOT_FILE = "accuracy_vs_tokens.png"
AVERAGE = "average"


def load_results(path: str | Path) -> dict:
    """results.json, given the file or the evaluation's output folder."""
    path = Path(path)
    file = path / RESULTS_FILE if path.is_dir() else path
    if not file.is_file():
        raise E1Error(f"no {RESULTS_FILE} in {path}" if path.is_dir() else f"results file not found: {path}")
    try:
        results = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise E1Error(f"{file}: malformed JSON ({err.msg})") from None
    if not isinstance(results, dict) or "datasets" not in results or "settings" not in results:
        raise E1Error(f"{file} is not an e1jax evaluation result (no 'datasets'/'settings')")
    return results


def merge_results(results_list: Sequence[Mapping]) -> dict:
    """One model's results from several runs (e.g. an unconstrained run and a budget sweep).

    Budget columns are united per dataset; a later run's column replaces an earlier one's.
    """
    if not results_list:
        raise E1Error("nothing to merge")
    merged = {"model": results_list[0].get("model"), "settings": dict(results_list[0]["settings"]), "datasets": {},
              "runs": [r["settings"] for r in results_list]}
    for r in results_list:
        for key in ("think_budgets", "solution_budget", "max_new_tokens"):
            if r["settings"].get(key) not in (None, [], ()):
                merged["settings"][key] = r["settings"][key]
        for name, entry in r["datasets"].items():
            target = merged["datasets"].setdefault(name, {k: v for k, v in entry.items() if k != "budgets"} | {"budgets": {}})
            target["budgets"].update(entry["budgets"])
    modes = {r["settings"].get("mode") for r in results_list}
    if len(modes) > 1:
        merged["settings"]["mode"] = "both"
    merged["average"] = average_over(merged, list(merged["datasets"]))
    return merged


def average_over(results: Mapping, names: Sequence[str]) -> dict:
    """Average cells over `names` for each budget key all of them have."""
    if not names:
        return {}
    keys = set.intersection(*(set(results["datasets"][n]["budgets"]) for n in names))
    return {k: average_metrics([results["datasets"][n]["budgets"][k] for n in names]) for k in sorted_budget_keys(keys)}


def _column_label(key: str) -> str:
    return "Unconstrained" if key == PLAIN else f"t={key}"


def _fmt_tokens(cell: Mapping | None) -> str:
    return "–" if cell is None else f"{cell['mean_tokens']:.0f}"


def _fmt_acc(cell: Mapping | None) -> str:
    return "–" if cell is None else f"{100 * cell['avg_at_n']:.1f}"


def _table(rows: Sequence[tuple[str, Mapping[str, Mapping]]], keys: Sequence[str]) -> list[str]:
    header = ["Model"] + [f"{_column_label(k)} {part}" for k in keys for part in ("Tokens", "Acc")]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for name, cells in rows:
        values = [f(cells.get(k)) for k in keys for f in (_fmt_tokens, _fmt_acc)]
        lines.append("| " + " | ".join([name.replace("|", "\\|")] + values) + " |")
    return lines


def _settings_note(results_list: Sequence[Mapping], names: Sequence[str]) -> str:
    def describe(s: Mapping) -> str:
        parts = [f"avg@{s['n']}", f"temperature {s['temperature']}", f"top-p {s['top_p']}"]
        if s.get("solution_budget") is not None:
            parts.append(f"solution budget s={s['solution_budget']}")
        if s.get("max_new_tokens") is not None:
            parts.append(f"unconstrained limit {s['max_new_tokens']} tokens")
        return ", ".join(parts)

    described = [describe(r["settings"]) for r in results_list]
    if len(set(described)) == 1:
        return described[0]
    return "; ".join(f"{name}: {d}" for name, d in zip(names, described))


def comparison_markdown(results_list: Sequence[Mapping], names: Sequence[str] | None = None) -> str:
    """The paper-style tables for one or more models (one row each)."""
    if not results_list:
        raise E1Error("no results to tabulate")
    names = list(names) if names is not None else [str(r.get("model") or f"model {i}") for i, r in enumerate(results_list)]
    if len(names) != len(results_list):
        raise E1Error(f"{len(names)} names for {len(results_list)} results")
    datasets: list[str] = []
    for r in results_list:
        datasets += [d for d in r["datasets"] if d not in datasets]
    lines = ["# Elastic reasoning evaluation", "",
             "Tokens: mean response length (thinking + `</think>` + solution, prompt excluded). "
             "Acc: mean correctness over problems and samples (avg@n), in %. "
             "t: thinking budget.", "",
             f"Settings: {_settings_note(results_list, names)}.", ""]
    for name in datasets:
        present = [(label, r) for label, r in zip(names, results_list) if name in r["datasets"]]
        keys = sorted_budget_keys(k for _, r in present for k in r["datasets"][name]["budgets"])
        problems = {r["datasets"][name]["num_problems"] for _, r in present}
        count = f"{problems.pop()} problems" if len(problems) == 1 else "problem counts differ"
        lines += [f"## {name} ({count})", ""]
        lines += _table([(label, r["datasets"][name]["budgets"]) for label, r in present], keys)
        lines.append("")
    common = [d for d in datasets if all(d in r["datasets"] for r in results_list)]
    if len(common) > 1:
        averages = [average_over(r, common) for r in results_list]
        keys = sorted_budget_keys(k for a in averages for k in a)
        lines += [f"## Average over {', '.join(common)}", ""]
        lines += _table(list(zip(names, averages)), keys)
        lines.append("")
    return "\n".join(lines)


def write_comparison_table(results_list: Sequence[Mapping], names: Sequence[str] | None, path: str | Path) -> Path:
    """Write the markdown tables of several models (one row per model) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(comparison_markdown(results_list, names) + "\n", encoding="utf-8")
    return path


def plot_accuracy_vs_tokens(results_list: Sequence[Mapping], names: Sequence[str] | None, path: str | Path) -> Path:
    """Accuracy (%) against mean response tokens: one line per dataset (and model), budgets in order.

    The unconstrained point is drawn as a star, joined by a dotted line to the largest budget.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(names) if names is not None else [str(r.get("model") or f"model {i}") for i, r in enumerate(results_list)]
    many = len(results_list) > 1
    styles = ["-", "--", "-.", ":"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    datasets: list[str] = []
    for r in results_list:
        datasets += [d for d in r["datasets"] if d not in datasets]
    for mi, (label, r) in enumerate(zip(names, results_list)):
        series = [(d, r["datasets"][d]["budgets"]) for d in datasets if d in r["datasets"]]
        if len(series) > 1 and r.get("average"):
            series.append((AVERAGE, r["average"]))
        for d, cells in series:
            color = "black" if d == AVERAGE else colors[datasets.index(d) % len(colors)]
            text = f"{label}: {d}" if many else d
            budgets = [k for k in sorted_budget_keys(cells) if k != PLAIN]
            xs = [cells[k]["mean_tokens"] for k in budgets]
            ys = [100 * cells[k]["avg_at_n"] for k in budgets]
            style = styles[mi % len(styles)]
            if budgets:
                ax.plot(xs, ys, style, marker="o", color=color, label=text)
            if PLAIN in cells:
                px, py = cells[PLAIN]["mean_tokens"], 100 * cells[PLAIN]["avg_at_n"]
                ax.plot([px], [py], marker="*", markersize=12, color=color, linestyle="none",
                        label=None if budgets else f"{text} (unconstrained)")
                if budgets:
                    ax.plot([xs[-1], px], [ys[-1], py], ":", color=color, linewidth=1)
    ax.set_xlabel("mean response tokens (thinking + </think> + solution)")
    ax.set_ylabel("accuracy, avg@n (%)")
    ax.set_title("Accuracy vs. tokens (circles: thinking budgets; stars: unconstrained)", fontsize=10)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results_json(results: Mapping, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_run_reports(results: Mapping, out_dir: str | Path) -> dict[str, Path]:
    """results.json, results.md and accuracy_vs_tokens.png of one evaluation in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    body = {k: v for k, v in results.items() if k != "samples"}
    return {
        "results": write_results_json(body, out_dir / RESULTS_FILE),
        "table": write_comparison_table([body], [str(body.get("model") or "model")], out_dir / TABLE_FILE),
        "plot": plot_accuracy_vs_tokens([body], [str(body.get("model") or "model")], out_dir / PLOT_FILE),
    }


def combine_runs(paths: Sequence[str | Path], names: Sequence[str] | None = None) -> tuple[list[dict], list[str]]:
    """Load results from `paths` and merge runs that share a name (default: the model name) into one row."""
    loaded = [load_results(p) for p in paths]
    labels = list(names) if names is not None else [str(r.get("model") or Path(p).name) for r, p in zip(loaded, paths)]
    if len(labels) != len(loaded):
        raise E1Error(f"{len(labels)} names for {len(loaded)} results")
    groups: dict[str, list[dict]] = {}
    for label, r in zip(labels, loaded):
        groups.setdefault(label, []).append(r)
    merged = [merge_results(g) if len(g) > 1 else g[0] for g in groups.values()]
    return merged, list(groups)


__all__ = [
    "combine_runs",
    "comparison_markdown",
    "load_results",
    "merge_results",
    "plot_accuracy_vs_tokens",
    "write_comparison_table",
    "write_results_json",
    "write_run_reports",
]
