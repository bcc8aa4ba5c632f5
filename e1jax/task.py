"""The E1 episode: a problem's prompt, the ids that end and close thinking, a response's
text and its grade, and the datasets problems come from.

A `Task` is built once from a tokenizer, a `PromptSpec` and a `RewardSpec`, and handed to
evaluation, training and the generate / score / grade commands; none of them builds
prompts, special ids, response texts or grader calls of its own.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from e1jax.errors import E1Error
from e1jax.rewards.types import GradeResult

Record = Mapping[str, Any]
INSTRUCTION_RULES = ("auto", "always", "never")
BUILTIN_REWARDS = ("auto", "math", "code")
MATH_GRADERS = ("e1jax", "original")
CODE_TESTS = ("original", "all")  # e1jax.rewards.code.CODE_TESTS
MATH_TIMEOUT_S = 5.0  # per symbolic comparison
ORIGINAL_MATH_TIMEOUT_S = 30.0  # a safety limit: the original grader has none


@dataclasses.dataclass(frozen=True)
class PromptSpec:
    """How a record becomes the model's prompt."""

    chat_template: bool = True
    # auto: math problems get the E1 instruction ("Let's think step by step ... \boxed{}"),
    # code problems (which carry their own instructions) do not, as in the original
    instruction: Literal["auto", "always", "never"] = "auto"
    key: str = "problem"  # the record field holding the problem text

    def __post_init__(self) -> None:
        if self.instruction not in INSTRUCTION_RULES:
            raise E1Error(f"instruction must be one of {', '.join(INSTRUCTION_RULES)}, got {self.instruction!r}")

    def adds_instruction(self, record: Record) -> bool:
        if self.instruction == "auto":
            return not is_code(record)
        return self.instruction == "always"


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """Which grader scores a response."""

    # auto: math or code by each record's ability; math / code: every record so;
    # "package.module:function": function(responses, records) -> numbers or GradeResults
    kind: str = "auto"
    workers: int = 0  # parallel graders; 0: one per CPU
    timeout_s: float = 0.0  # per math answer / per code test; 0: the grader's (5 s, original 30 s / code_tests')
    require_think_close: bool = True  # math: a response without </think> is a format error
    # math records only (code records are unaffected): e1jax's rules (e1jax.rewards.math) or the
    # original E1 grader's (e1jax.rewards.original_math), to compare with the paper's numbers
    grader: Literal["e1jax", "original"] = "e1jax"
    # code: the original's tests per data_source (15 longest inputs at 12 s; livecodebench all at 6 s)
    # or all tests at 6 s each; timeout_s > 0 overrides the per-test limit
    code_tests: Literal["original", "all"] = "original"

    def __post_init__(self) -> None:
        if self.kind not in BUILTIN_REWARDS and not _is_callable_path(self.kind):
            raise E1Error(f"reward kind '{self.kind}' is not one of {', '.join(BUILTIN_REWARDS)} "
                          "or a python callable 'module:function'")
        if self.workers < 0:
            raise E1Error(f"reward workers must be >= 0, got {self.workers}")
        if self.timeout_s < 0:
            raise E1Error(f"reward timeout must be >= 0, got {self.timeout_s}")
        if self.grader not in MATH_GRADERS:
            raise E1Error(f"reward grader must be one of {', '.join(MATH_GRADERS)}, got {self.grader!r}")
        if self.code_tests not in CODE_TESTS:
            raise E1Error(f"reward code_tests must be one of {', '.join(CODE_TESTS)}, got {self.code_tests!r}")

    @property
    def custom(self) -> bool:
        return self.kind not in BUILTIN_REWARDS


def is_code(record: Record) -> bool:
    return record.get("ability") == "code"


class Task:
    """The E1 episode for one tokenizer (None: grading only) and one reward."""

    def __init__(self, tokenizer: Any = None, *, prompt: PromptSpec = PromptSpec(),
                 reward: RewardSpec = RewardSpec(), close: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.prompt_spec = prompt
        self.reward = reward
        self._close = close
        self._custom = _load_callable(reward.kind) if reward.custom else None

    def _need_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise E1Error("this task has no tokenizer (it can only grade)")
        return self.tokenizer

    # ----------------------------------------------------------------- ids

    @functools.cached_property
    def special_ids(self):
        """The sampler's SpecialIds: the forced close (the single </think> token, or the
        tokens of `close`), the tokenizer's EOS ids and its pad id."""
        from e1jax.sampling import SpecialIds

        tok = self._need_tokenizer()
        close_ids = (tok.think_close_id,) if self._close is None else tuple(tok.encode(self._close))
        if not close_ids:
            raise E1Error(f"the close text {self._close!r} tokenizes to nothing")
        return SpecialIds(close_ids, tuple(tok.eos_ids), tok.pad_id, natural_close_id=tok.think_close_id)

    # -------------------------------------------------------------- prompts

    def prompt(self, record: Record) -> list[int]:
        """The prompt token ids of a record (its `PromptSpec.key` field is the problem)."""
        key = self.prompt_spec.key
        if key not in record:
            raise E1Error(f"record {record.get('id', '?')} has no '{key}' field (the problem text)")
        return list(self._need_tokenizer().encode_prompt(
            record[key], chat_template=self.prompt_spec.chat_template,
            e1_instruction=self.prompt_spec.adds_instruction(record)))

    def prompt_for_text(self, problem: str) -> list[int]:
        """The prompt of a bare problem text (a math problem unless the spec says otherwise)."""
        return self.prompt({self.prompt_spec.key: problem})

    # ---------------------------------------------------------------- texts

    def text(self, tokens: Sequence[int], length: int | None = None) -> str:
        """A response's text: its first `length` tokens without the trailing EOS / pad, decoded
        with special tokens kept (the graders read `</think>`)."""
        ids = self.special_ids
        stop = set(ids.eos_ids) | {ids.pad_id}
        kept = [int(t) for t in (tokens if length is None else tokens[:length])]
        while kept and kept[-1] in stop:
            kept.pop()
        return self._need_tokenizer().decode(kept, skip_special_tokens=False)

    # -------------------------------------------------------------- grading

    def grade(self, texts: Sequence[str], records: Sequence[Record]) -> list[GradeResult]:
        """One GradeResult per response; record["ground_truth"] is the answer (math) or the tests (code)."""
        texts, records = list(texts), list(records)
        if len(texts) != len(records):
            raise E1Error(f"{len(texts)} responses but {len(records)} records to grade them against")
        if self._custom is not None:
            return self._grade_custom(texts, records)
        kinds = [self.grader_of(r) for r in records]
        results: list[GradeResult | None] = [None] * len(texts)
        for kind in ("math", "code"):
            rows = [i for i, k in enumerate(kinds) if k == kind]
            if rows:
                graded = self._grade_builtin(kind, [texts[i] for i in rows], [records[i] for i in rows])
                for i, g in zip(rows, graded):
                    results[i] = g
        return results  # type: ignore[return-value]

    def grader_of(self, record: Record) -> str:
        """"math", "code", or the custom reward's path."""
        if self.reward.kind != "auto":
            return self.reward.kind
        return "code" if is_code(record) else "math"

    def _grade_builtin(self, kind: str, texts: list[str], records: list[Record]) -> list[GradeResult]:
        for i, r in enumerate(records):
            if "ground_truth" not in r:
                raise E1Error(f"record {r.get('id', i)} has no 'ground_truth' field")
        truths = [r["ground_truth"] for r in records]
        workers = self.reward.workers or None
        timeout = self.reward.timeout_s or None
        if kind == "math":
            return self._grade_math(texts, truths, workers, timeout)
        from e1jax.rewards.code import grade_code_batch

        return grade_code_batch(texts, truths, data_sources=[r.get("data_source") for r in records],
                                code_tests=self.reward.code_tests, workers=workers, time_limit_s=timeout)

    def _grade_math(self, texts: list[str], truths: list, workers: int | None,
                    timeout: float | None) -> list[GradeResult]:
        require = self.reward.require_think_close
        if self.reward.grader == "original":
            from e1jax.rewards.original_math import grade_original_math_batch

            return grade_original_math_batch(texts, truths, workers=workers,
                                             timeout_s=timeout or ORIGINAL_MATH_TIMEOUT_S, require_think_close=require)
        from e1jax.rewards.math import grade_math_batch

        return grade_math_batch(texts, truths, workers=workers, timeout_s=timeout or MATH_TIMEOUT_S,
                                require_think_close=require)

    def _grade_custom(self, texts: list[str], records: list[Record]) -> list[GradeResult]:
        values = list(self._custom(texts, records))
        if len(values) != len(texts):
            raise E1Error(f"reward '{self.reward.kind}' returned {len(values)} values for {len(texts)} responses")
        return [_as_grade(v, self.reward.kind) for v in values]

    # ------------------------------------------------------------- datasets

    def load(self, specs: Sequence[str], *, limit: int | None = None) -> dict[str, list[dict]]:
        """{name: records} of dataset names, files, folders or hf:// ids (the first `limit` of each),
        every record holding the problem field and a ground truth."""
        from e1jax.data.registry import resolve_dataset

        if not specs:
            raise E1Error("no datasets given")
        if limit is not None and limit <= 0:
            raise E1Error(f"the problem limit must be positive, got {limit}")
        datasets: dict[str, list[dict]] = {}
        for spec in specs:
            name, records = resolve_dataset(spec)
            if name in datasets:
                raise E1Error(f"two datasets are named '{name}' (from {spec}); rename one file")
            if not records:
                raise E1Error(f"dataset '{spec}' has no problems")
            records = [dict(r) for r in (records[:limit] if limit is not None else records)]
            for i, record in enumerate(records):
                for field in (self.prompt_spec.key, "ground_truth"):
                    if field not in record:
                        raise E1Error(f"dataset '{name}' problem {i}: missing field '{field}'")
            datasets[name] = records
        return datasets


def _as_grade(value: Any, kind: str) -> GradeResult:
    if isinstance(value, GradeResult):
        return value
    try:
        reward = float(value)
    except (TypeError, ValueError) as err:
        raise E1Error(f"reward '{kind}' returned {value!r}, expected a number or a GradeResult") from err
    return GradeResult(reward, reward >= 1.0, None, "custom")


def _is_callable_path(text: str) -> bool:
    module, sep, name = text.partition(":")
    return bool(sep and module and name and all(part.isidentifier() for part in module.split("."))
                and all(part.isidentifier() for part in name.split(".")))


def _load_callable(path: str) -> Callable:
    """'package.module:function' -> the function."""
    module_name, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise E1Error(f"cannot import reward module '{module_name}': {err}") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise E1Error(f"reward module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise E1Error(f"reward '{path}' is not callable")
    return obj
