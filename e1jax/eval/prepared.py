"""Evaluation sets with their prompts, tokenized once by the task."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence

from e1jax.errors import E1Error


@dataclasses.dataclass(frozen=True)
class PreparedSet:
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


def prepare_sets(task, datasets: Mapping[str, Sequence[Mapping]]) -> list[PreparedSet]:
    """Each named set's records with their prompts (`task.prompt`)."""
    if not datasets:
        raise E1Error("no datasets to evaluate")
    prepared = []
    for name, records in datasets.items():
        records = [dict(r) for r in records]
        if not records:
            raise E1Error(f"dataset '{name}' has no problems")
        for i, record in enumerate(records):
            for field in ("problem", "ground_truth"):
                if field not in record:
                    raise E1Error(f"dataset '{name}' problem {i}: missing field '{field}'")
        prepared.append(PreparedSet(name, records, [task.prompt(r) for r in records]))
    return prepared
