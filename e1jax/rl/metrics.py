"""Training metrics: one JSONL row and one set of TensorBoard scalars per step (process 0 only).

Keys are "section/name". Everything outside `time/` and `perf/` is a pure
function of (config, run seed, step), so a resumed run reproduces those values
exactly; wall-clock timings and throughputs naturally differ.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

TIMING_PREFIXES = ("time/", "perf/")
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def to_float(value: Any) -> float:
    return float(np.asarray(value, dtype=np.float64))


def deterministic_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """A metrics row without wall-clock dependent keys (what must match after a resume)."""
    return {k: v for k, v in row.items() if not k.startswith(TIMING_PREFIXES)}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLogger:
    """Appends rows to `<out_dir>/metrics.jsonl` and scalars to `<out_dir>/tensorboard`.

    `resume_step`: rows (and TensorBoard events) of later steps are dropped, so
    that a run resumed from checkpoint `resume_step` rewrites them once; a fresh start
    (0) drops every row, the initial validation's step 0 included.
    Inactive (all methods no-ops) on processes other than 0.
    """

    def __init__(self, out_dir: str | Path, *, tensorboard: bool = True, resume_step: int = 0,
                 active: bool | None = None):
        if active is None:
            import jax

            active = jax.process_index() == 0
        self.active = active
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / METRICS_FILE
        self._writer = None
        self._file = None
        if not active:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        self._file = self.path.open("a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            kwargs = {"purge_step": resume_step + 1} if resume_step > 0 else {}
            self._writer = SummaryWriter(str(self.out_dir / TENSORBOARD_DIR), **kwargs)

    def _truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if step > 0 and row.get("step", math.inf) <= step:
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        row = {"step": int(step)}
        for key, value in metrics.items():
            row[key] = value if isinstance(value, (str, bool)) else to_float(value)
        if not self.active:
            return row
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, float) and math.isfinite(value):
                    self._writer.add_scalar(key, value, global_step=step)
            self._writer.flush()
        return row

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
