"""Rewards: math (boxed answer vs ground truth) and code (tests in a sandbox).

Graders are imported lazily so that `import e1jax.rewards` stays cheap.
"""

from __future__ import annotations

from e1jax.errors import E1Error
from e1jax.rewards.types import GradeResult

KINDS = ("math", "code")


def grade(kind: str, response: str, ground_truth_or_tests, **kwargs) -> GradeResult:
    """Grade one response: kind "math" takes a ground truth, kind "code" takes tests.

    Keyword arguments go to `grade_math` or `grade_code`.
    """
    if kind == "math":
        from e1jax.rewards.math import grade_math

        return grade_math(response, ground_truth_or_tests, **kwargs)
    if kind == "code":
        from e1jax.rewards.code import grade_code

        return grade_code(response, ground_truth_or_tests, **kwargs)
    raise E1Error(f"unknown reward kind '{kind}' (expected one of: {', '.join(KINDS)})")


__all__ = ["GradeResult", "KINDS", "grade"]
