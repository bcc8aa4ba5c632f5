"""Elastic evaluation: budget sweeps, avg@n / pass@n / token metrics, paper-style tables and plots."""

from e1jax.eval.metrics import PLAIN, budget_key, cell_metrics, summarize
from e1jax.eval.report import (
    combine_runs,
    comparison_markdown,
    load_results,
    merge_results,
    plot_accuracy_vs_tokens,
    write_comparison_table,
    write_run_reports,
)
from e1jax.eval.runner import Evaluation
from e1jax.eval.settings import EvalSettings

__all__ = [
    "PLAIN",
    "EvalSettings",
    "Evaluation",
    "budget_key",
    "cell_metrics",
    "combine_runs",
    "comparison_markdown",
    "load_results",
    "merge_results",
    "plot_accuracy_vs_tokens",
    "summarize",
    "write_comparison_table",
    "write_run_reports",
]
