"""What determines an evaluation's samples (batch size and mesh do not)."""

from __future__ import annotations

import dataclasses
import json

from e1jax.errors import E1Error
from e1jax.eval.metrics import PLAIN, budget_key

MODES = ("elastic", "plain", "both")
SWEEP = "sweep"
DEFAULT_BUDGETS = (512, 1024, 2048, 3072)
EOS_IN_THINKING = ("stop", "append_close")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    mode: str = "elastic"  # elastic: the budget columns; plain: the unconstrained column; both
    think_budgets: tuple[int, ...] = DEFAULT_BUDGETS
    solution_budget: int | None = 1024
    max_new_tokens: int | None = None  # plain mode's limit
    n: int = 16
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    seed: int = 0
    eos_in_thinking: str = "stop"
    max_prompt_len: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise E1Error(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.elastic:
            budgets = tuple(sorted(set(int(b) for b in self.think_budgets)))
            if not budgets:
                raise E1Error("no thinking budgets given")
            if budgets[0] <= 0:
                raise E1Error(f"thinking budgets must be positive, got {budgets[0]}")
            if self.solution_budget is None or self.solution_budget <= 0:
                raise E1Error(f"the solution budget must be positive, got {self.solution_budget}")
            object.__setattr__(self, "think_budgets", budgets)
        else:
            object.__setattr__(self, "think_budgets", ())
            object.__setattr__(self, "solution_budget", None)
        if self.plain:
            if self.max_new_tokens is None:
                raise E1Error(f"mode {self.mode} needs max_new_tokens (the unconstrained column's limit)")
            if self.max_new_tokens <= 0:
                raise E1Error(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        else:
            object.__setattr__(self, "max_new_tokens", None)
        if self.n < 1:
            raise E1Error(f"n must be at least 1, got {self.n}")
        if self.eos_in_thinking not in EOS_IN_THINKING:
            raise E1Error(f"eos_in_thinking must be one of {', '.join(EOS_IN_THINKING)}, got {self.eos_in_thinking!r}")
        if self.max_prompt_len is not None and self.max_prompt_len <= 0:
            raise E1Error(f"max_prompt_len must be positive, got {self.max_prompt_len}")
        self.sampling()  # temperature, top-p, top-k checks

    @property
    def elastic(self) -> bool:
        return self.mode in ("elastic", "both")

    @property
    def plain(self) -> bool:
        return self.mode in ("plain", "both")

    @property
    def kinds(self) -> tuple[str, ...]:
        """Generation passes: the sweep (cheap budgets) before the unconstrained run."""
        return ((SWEEP,) if self.elastic else ()) + ((PLAIN,) if self.plain else ())

    def budget_keys(self, kind: str) -> list[str]:
        return [PLAIN] if kind == PLAIN else [budget_key(b) for b in self.think_budgets]

    def sampling(self):
        from e1jax.sampling.ops import SamplingParams

        return SamplingParams(self.temperature, self.top_p, self.top_k)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))
