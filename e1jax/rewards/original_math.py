"""Math reward by the original E1 grader's rules (rllm/rewards/math_reward.py and
rllm/rewards/math_utils/utils.py), rewritten: same verdicts, for comparing with the paper.

- the solution is the text between the first and the second `</think>`; none -> "format_error";
- the answer is the last `\\boxed{...}` of the solution (never `\\fbox`, never `\\boxed 5`) -> else "no_answer";
- ground truths: each str(truth), a `\\boxed` one reduced to its content, a list accepted;
- correct when, for some truth, the Hendrycks-normalised strings are equal ("mathd") or the
  "sympy" rules accept: lower-cased normalisation, tuples split, unreduced fractions and
  non-integers against integers rejected, else sympy.simplify(truth - answer) == 0.

Only sympy's parse and simplify (e1jax.rewards.original_sympy) run in e1jax.rewards.math's verifier
processes (the original has no time limit; here a safety limit, "timeout" past it, "grader_error"
when a worker dies).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence

from e1jax.brackets import matching_close
from e1jax.errors import E1Error
from e1jax.rewards.math import pool_verdict, run_batch
from e1jax.rewards.types import GradeResult

THINK_CLOSE = "</think>"
SAFETY_TIMEOUT_S = 30.0
_BOXED = "\\boxed"
_TEXT_RE = re.compile(r"^\\text\{(?P<text>.+?)\}$")
logging.getLogger("pylatexenc").setLevel(logging.ERROR)  # it warns on every malformed \frac


# ---------------------------------------------------------------- extraction


def solution_of(response: str, require_think_close: bool = True) -> str | None:
    """The text after the first `</think>` up to the second one; None: a format error."""
    if THINK_CLOSE in response:
        return response.split(THINK_CLOSE)[1]
    return None if require_think_close else response


def extract_answer(text: str) -> str | None:
    """The content of the last `\\boxed{...}`, or None (no `\\boxed`, or it has no braces right after)."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    close = matching_close(text, start, "{}")
    if close < 0 or text[start + len(_BOXED)] != "{":
        return None
    return text[start + len(_BOXED) + 1 : close]


def ground_truths(truth) -> list[str]:
    """The acceptable answers: str() of each item, `\\boxed` ones extracted (unreadable ones dropped)."""
    if truth is None:
        raise E1Error("ground truth is missing (null)")
    items = list(truth) if isinstance(truth, (list, tuple)) else [truth]
    answers = []
    for item in map(str, items):
        answer = extract_answer(item) if _BOXED in item else item
        if answer is not None:
            answers.append(answer)
    if not answers:
        raise E1Error(f"ground truth {truth!r} holds no answer")
    return answers


# ------------------------------------------------- mathd (Hendrycks) rules


class _Unchanged(Exception):
    """A normalisation step failed: the original then keeps the answer as it was."""


def mathd_normalize(answer: str) -> str:
    answer = answer.strip()
    match = _TEXT_RE.search(answer)
    if match is not None:
        answer = match.group("text").strip()
    try:
        return _hendrycks_strip(answer)
    except _Unchanged:
        return answer


def _hendrycks_strip(text: str) -> str:
    text = text.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    text = text.replace("tfrac", "frac").replace("dfrac", "frac")
    text = text.replace("\\left", "").replace("\\right", "")
    text = text.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    text = _cut_text_units(text).replace("\\%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text[0] == ".":
        text = "0" + text
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        text = sides[1]
    text = _brace_sqrt_args(text).replace(" ", "")
    text = _brace_frac_args(text)
    if text == "0.5":
        text = "\\frac{1}{2}"
    return _slash_to_frac(text)


def _cut_text_units(text: str) -> str:
    if "\\text{ " not in text:
        return text
    parts = text.split("\\text{ ")
    if len(parts) != 2:
        raise _Unchanged
    return parts[0]


def _brace_sqrt_args(text: str) -> str:
    head, *pieces = text.split("\\sqrt")
    out = [head]
    for piece in pieces:
        if not piece:
            raise _Unchanged
        out.append("\\sqrt" + (piece if piece[0] == "{" else "{" + piece[0] + "}" + piece[1:]))
    return "".join(out)


def _brace_frac_args(text: str) -> str:
    head, *pieces = text.split("\\frac")
    out = [head]
    for piece in pieces:
        if not piece:
            raise _Unchanged
        if piece[0] != "{":
            if len(piece) < 2:
                return text
            a, b, rest = piece[0], piece[1], piece[2:]
            piece = "{" + a + "}" + (b if b == "{" else "{" + b + "}") + rest
        out.append("\\frac" + piece)
    return "".join(out)


def _slash_to_frac(text: str) -> str:
    parts = text.split("/")
    if len(parts) != 2:
        return text
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return text
    return f"\\frac{{{a}}}{{{b}}}" if text == f"{a}/{b}" else text


def mathd_equal(answer: str, truth: str) -> bool:
    return _cached_mathd(truth) == _cached_mathd(answer)


_cached_mathd = functools.lru_cache(maxsize=4096)(mathd_normalize)


# ------------------------------------------------------------- sympy rules

_UNITS = ("degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day", "week",
          "month", "year", "foot", "feet", "inch", "yard")
_UNIT_RES = [re.compile(unit + r"(es)?(s)? *(\^[0-9]+)?") for unit in _UNITS]
_DEGREE_RE = re.compile(r"\^ *\\circ")
_SPACED_COMMA_RE = re.compile(r",\\! *")
_MINUS_RE = re.compile(r"- *")
_MIXED_NUMBER_RE = re.compile(r"([0-9]) +([0-9])")
_THOUSANDS_COMMA_RE = re.compile(r"(\d)(,)(\d\d\d)($|\D)")
_FRACTION_RE = re.compile(r"^-?[0-9]+.?/0*[1-9][0-9]*.?$")
_BAD_SUBSTRINGS = ("^{", "^(")
_BAD_EXPONENT_RES = (re.compile(r"\^[0-9]+\^"), re.compile(r"\^[0-9][0-9]+"))
_TUPLE_CHARS = "()[]"
_UNICODE_TO_TEXT = (("√", "sqrt"), ("π", "pi"), ("∞", "inf"), ("∪", "U"), ("·", "*"), ("×", "*"))


def sympy_normalize(expr: str) -> str:
    match = _TEXT_RE.search(expr)
    if match is not None:
        expr = match.group("text")
    expr = expr.replace("\\%", "%").replace("\\$", "$").replace("$", "").replace("%", "")
    expr = expr.replace(" or ", " , ").replace(" and ", " , ")
    expr = expr.replace("million", "*10^6").replace("billion", "*10^9").replace("trillion", "*10^12")
    for unit in _UNIT_RES:
        expr = unit.sub("", expr)
    expr = _DEGREE_RE.sub("", expr)
    if expr and expr[0] == "{" and expr[-1] == "}":
        expr = expr[1:-1]
    expr = _SPACED_COMMA_RE.sub("", expr)
    if _float_is_int(expr):
        expr = str(int(round(float(expr))))
    if "\\" in expr:
        expr = _latex_to_text(expr)
    expr = _MINUS_RE.sub("-", expr)
    expr = _MIXED_NUMBER_RE.sub("\\1+\\2", expr)
    expr = expr.replace(" ", "").replace("{", "").replace("}", "").lower()
    if _is_integer(expr):
        expr = str(int(float(expr.replace(",", ""))))
    return expr


def _float_is_int(text: str) -> bool:
    try:
        value = float(text)
        return abs(value - int(round(value))) <= 1e-7
    except (ValueError, OverflowError):
        return False


def _latex_to_text(expr: str) -> str:
    from pylatexenc import latex2text

    spaced = expr.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac").replace("\\frac", " \\frac")
    try:
        text = latex2text.LatexNodes2Text().latex_to_text(spaced)
    except Exception:  # noqa: BLE001 - the original keeps the text when pylatexenc fails
        return expr
    for symbol, word in _UNICODE_TO_TEXT:
        text = text.replace(symbol, word)
    return text.strip()


def strip_thousands_commas(expr: str) -> str:
    while True:
        stripped = _THOUSANDS_COMMA_RE.sub("\\1\\3\\4", expr)
        if stripped == expr:
            return expr
        expr = stripped


def _is_integer(text: str) -> bool:
    return _float_is_int(strip_thousands_commas(text))


def split_tuple(expr: str) -> list[str]:
    expr = strip_thousands_commas(expr)
    if not expr:
        return []
    inner = expr[1:-1]
    if (len(expr) > 2 and expr[0] in _TUPLE_CHARS and expr[-1] in _TUPLE_CHARS
            and not any(ch in inner for ch in _TUPLE_CHARS)):
        return [elem.strip() for elem in inner.split(",")]
    return [expr]


def may_evaluate(expr: str) -> bool:
    """The original's guard before sympy: at most two unknown letters, no `^{`, `^(`, long or stacked powers."""
    letters = {ch for ch in expr.replace("sqrt", "").replace("frac", "") if ch.isalpha()}
    if len(letters) > 2 or any(bad in expr for bad in _BAD_SUBSTRINGS):
        return False
    return not any(bad.search(expr) for bad in _BAD_EXPONENT_RES)


def sympy_plan(answer: str, truth: str) -> bool | list[str]:
    """The sympy rules short of sympy: a verdict, or the differences `(truth)-(answer)` that must all simplify to 0."""
    truth_n, answer_n = _cached_sympy_normalize(truth), _cached_sympy_normalize(answer)
    if truth_n == answer_n:
        return True
    if not answer_n:
        return False
    truth_elems, answer_elems = split_tuple(truth_n), split_tuple(answer_n)
    if len(truth_elems) > 1 and (truth_n[0] != answer_n[0] or truth_n[-1] != answer_n[-1]):
        return False
    if len(truth_elems) != len(answer_elems):
        return False
    differences = []
    for t, a in zip(truth_elems, answer_elems):
        if _FRACTION_RE.search(t) and _FRACTION_RE.search(a):
            if t != a:  # unreduced fractions are not simplified
                return False
        elif _is_integer(t) != _is_integer(a):
            return False
        else:
            difference = f"({t})-({a})"
            if not may_evaluate(difference):
                return False
            differences.append(difference)
    return differences


_cached_sympy_normalize = functools.lru_cache(maxsize=4096)(sympy_normalize)


# ------------------------------------------------------------------- grading


def compare(answer: str, truths: Sequence[str], *, timeout_s: float = SAFETY_TIMEOUT_S) -> str:
    """"correct", "mismatch", "timeout" or "grader_error" for one extracted answer."""
    if any(mathd_equal(answer, truth) for truth in truths):
        return "correct"
    plans = [sympy_plan(answer, truth) for truth in truths]
    if any(plan is True or plan == [] for plan in plans):
        return "correct"
    candidates = [plan for plan in plans if plan]
    if not candidates:
        return "mismatch"
    return pool_verdict({"rules": "original", "candidates": candidates}, timeout_s)


def grade_original_math(response: str, ground_truth, *, timeout_s: float = SAFETY_TIMEOUT_S,
                        require_think_close: bool = True) -> GradeResult:
    """Grade one response by the original's rules."""
    if not isinstance(response, str):
        raise E1Error(f"response must be a string, not {type(response).__name__}")
    truths = ground_truths(ground_truth)
    solution = solution_of(response, require_think_close)
    if solution is None:
        return GradeResult(0.0, False, None, "format_error")
    answer = extract_answer(solution)
    if answer is None:
        return GradeResult(0.0, False, None, "no_answer")
    verdict = compare(answer, truths, timeout_s=timeout_s)
    return GradeResult(1.0 if verdict == "correct" else 0.0, verdict == "correct", answer, verdict)


def grade_original_math_batch(responses: Sequence[str], truths: Sequence, *, workers: int | None = None,
                              timeout_s: float = SAFETY_TIMEOUT_S,
                              require_think_close: bool = True) -> list[GradeResult]:
    """grade_math_batch with the original's rules: threads, sympy in the shared verifier pool."""

    def one(response, truth):
        return grade_original_math(response, truth, timeout_s=timeout_s, require_think_close=require_think_close)

    return run_batch(one, responses, truths, workers)
