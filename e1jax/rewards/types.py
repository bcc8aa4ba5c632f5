"""The result every grader returns."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class GradeResult:
    reward: float
    correct: bool
    extracted: str | None
    reason: str  # "correct", "format_error", "no_answer", "mismatch", "timeout", "runtime_error", ...

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
