"""The synthetic reasoning task of the miniature E1 demo: labelled digit sums mod 10.

A problem lists k labelled digits, ``Sum mod 10: a3 b7 c5 d2``; the answer is
their sum mod 10 (here 7). The chain of thought walks through the running sums,
so it can be cut anywhere, and the answer depends on every step: a guess from a
truncated trace is right about one time in ten. Each problem carries the same
reasoning in two styles:

- verbose, about 8 tokens a step, every ``check_every``-th step re-checked:
  ``a3:0+3=3 b7:3+7=0 c5:0+5=5 check:5-5=0 ok d2:5+2=7``
- concise, 4 tokens a step: ``a3=3 b7=0 c5=5 d2=7``

The third token of the thinking (``:`` or ``=``) commits to a style. Supervised
data mixes the styles (``verbose_fraction``), so budget-constrained GRPO has a
shorter way of reasoning to discover, as E1 shortens real reasoning. Each step
is a label lookup in the problem (an induction-head pattern: the digit follows
its label) and a one-digit addition; every trace token is determined by the
problem and the style.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

import numpy as np

from e1jax.errors import E1Error
from e1jax.toy.vocab import ANSWER_PREFIX, ANSWER_SUFFIX, CHECK_WORD, LABELS, OK_WORD, PROBLEM_PREFIX, THINK_CLOSE

DATA_SOURCE = "toy"
MODULUS = 10

_FIRST_STEP = re.compile(rf"{LABELS[0]}\d([=:])")

Style = Literal["verbose", "concise"]
STYLES: tuple[str, ...] = ("verbose", "concise")


@dataclasses.dataclass(frozen=True)
class ToyTaskConfig:
    min_steps: int = 2
    max_steps: int = 8
    verbose_fraction: float = 0.7  # share of records whose supervised trace is verbose
    check_every: int = 3  # verbose traces re-check every n-th step; 0 disables checks

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps <= len(LABELS):
            raise E1Error(
                f"toy task needs 1 <= min_steps <= max_steps <= {len(LABELS)}, "
                f"got min_steps={self.min_steps} max_steps={self.max_steps}"
            )
        if not 0.0 <= self.verbose_fraction <= 1.0:
            raise E1Error(f"toy task verbose_fraction must be in [0, 1], got {self.verbose_fraction}")
        if self.check_every < 0:
            raise E1Error(f"toy task check_every must be >= 0, got {self.check_every}")


def running_sums(digits: list[int]) -> list[int]:
    """The running sums mod 10 after each step; the last one is the answer."""
    sums, total = [], 0
    for d in digits:
        total = (total + d) % MODULUS
        sums.append(total)
    return sums


def problem_text(digits: list[int]) -> str:
    items = " ".join(f"{LABELS[i]}{d}" for i, d in enumerate(digits))
    return f"{PROBLEM_PREFIX} {items}"


def concise_trace(digits: list[int]) -> str:
    return " ".join(f"{LABELS[i]}{d}={s}" for i, (d, s) in enumerate(zip(digits, running_sums(digits))))


def verbose_trace(digits: list[int], check_every: int) -> str:
    parts, prev = [], 0
    for i, (d, s) in enumerate(zip(digits, running_sums(digits))):
        parts.append(f"{LABELS[i]}{d}:{prev}+{d}={s}")
        if check_every and (i + 1) % check_every == 0:
            parts.append(f"{CHECK_WORD.strip()}:{s}-{d}={prev}{OK_WORD}")
        prev = s
    return " ".join(parts)


def trace_style(response: str) -> Style | None:
    """Which style a (generated) response's thinking follows, judged by its first
    step (``a3=3`` concise, ``a3:0+3=3`` verbose); None when it follows neither."""
    match = _FIRST_STEP.match(response)
    if match is None:
        return None
    return "concise" if match.group(1) == "=" else "verbose"


def solution_text(answer: str) -> str:
    return f"{ANSWER_PREFIX}{answer}{ANSWER_SUFFIX}"


def make_record(idx: int, digits: list[int], style: Style, config: ToyTaskConfig) -> dict:
    answer = str(running_sums(digits)[-1])
    return {
        "id": idx,
        "data_source": DATA_SOURCE,
        "problem": problem_text(digits),
        "ground_truth": answer,
        "thinking_verbose": verbose_trace(digits, config.check_every),
        "thinking_concise": concise_trace(digits),
        "solution": solution_text(answer),
        "num_steps": len(digits),
        "digits": list(digits),
        "sft_style": style,
    }


def generate_problems(n: int, seed: int, config: ToyTaskConfig = ToyTaskConfig()) -> list[dict]:
    """`n` problems drawn from `seed`: step counts uniform in [min_steps, max_steps],
    digits uniform in 0..9, and each record's supervised style verbose with
    probability `verbose_fraction`. Small step counts have few distinct problems
    (100 for k = 2), so differently seeded sets overlap there."""
    if n < 0:
        raise E1Error(f"toy task needs a non-negative number of problems, got {n}")
    rng = np.random.default_rng(seed)
    records = []
    for idx in range(n):
        k = int(rng.integers(config.min_steps, config.max_steps + 1))
        digits = [int(d) for d in rng.integers(0, MODULUS, size=k)]
        style: Style = "verbose" if rng.random() < config.verbose_fraction else "concise"
        records.append(make_record(idx, digits, style, config))
    return records


def thinking_text(record: dict, style: Style | None = None) -> str:
    style = record["sft_style"] if style is None else style
    if style not in STYLES:
        raise E1Error(f"toy trace style must be one of {', '.join(STYLES)}, got {style!r}")
    return record[f"thinking_{style}"]


def response_text(record: dict, style: Style | None = None) -> str:
    """What the model writes after the prompt's `<think>`: thinking, `</think>`,
    solution (EOS is the tokenizer's and not part of the text)."""
    return thinking_text(record, style) + THINK_CLOSE + record["solution"]
