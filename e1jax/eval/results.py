"""An evaluation's fingerprint (what must match to resume) and its results dict."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from e1jax.errors import E1Error
from e1jax.eval.metrics import PLAIN, budget_key, summarize
from e1jax.eval.prepared import PreparedSet
from e1jax.eval.settings import EvalSettings

# What metrics need of a sample (samples.jsonl holds more: text, token ids, ...).
METRIC_FIELDS = ("dataset", "problem_id", "sample", "budget", "tokens", "thinking_tokens", "solution_tokens",
                 "truncated", "finish_reason", "correct", "reason")


def fingerprint(settings: EvalSettings, prepared: Sequence[PreparedSet], reward, model_name: str,
                identity: Mapping | None) -> dict:
    return {
        "model": model_name,
        "identity": dict(identity or {}),
        "settings": settings.to_dict(),
        "reward": dataclasses.asdict(reward),
        "datasets": {d.name: {"num_problems": len(d.records), "digest": d.digest} for d in prepared},
    }


def sample_order(names: Sequence[str]):
    rank = {name: i for i, name in enumerate(names)}

    def key(s: Mapping) -> tuple:
        b = s["budget"]
        return (rank.get(s["dataset"], len(rank)), (0, 0) if b == PLAIN else (1, int(b)), s["problem_id"], s["sample"])

    return key


def check_complete(samples: Sequence[Mapping], prepared: Sequence[PreparedSet], settings: EvalSettings,
                   where: str) -> None:
    counts: dict[tuple[str, str], int] = {}
    for s in samples:
        k = (s["dataset"], budget_key(s["budget"]))
        counts[k] = counts.get(k, 0) + 1
    for kind in settings.kinds:
        for d in prepared:
            for key in settings.budget_keys(kind):
                want = len(d.records) * settings.n
                if counts.get((d.name, key), 0) != want:
                    raise E1Error(f"{where} holds {counts.get((d.name, key), 0)} samples of "
                                  f"{d.name} at budget {key}, expected {want}; use a fresh --out")


def build_results(samples: Sequence[Mapping], prepared: Sequence[PreparedSet], settings: EvalSettings,
                  model_name: str, identity: Mapping | None) -> dict:
    names = [d.name for d in prepared]
    summary = summarize(sorted(samples, key=sample_order(names)), names)
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
