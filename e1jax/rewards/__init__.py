"""Rewards: math (boxed answer vs ground truth) and code (tests in a sandbox).

Graders are imported lazily so that `import e1jax.rewards` stays cheap; `e1jax.task.Task.grade`
chooses between them.
"""

from __future__ import annotations

from e1jax.rewards.types import GradeResult

__all__ = ["GradeResult"]
