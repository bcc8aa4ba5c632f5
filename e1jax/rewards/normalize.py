"""Hendrycks-style answer normalisation (the MATH dataset's `strip_string`).

`strip_string` follows the original `is_equiv` rules -- drop `\\left`/`\\right`,
`\\!`, spaces, right-hand units and `\\text{ ...}`, degrees, `\\%`, `\\$`; fix
`\\frac12`, `\\sqrt3`, `\\dfrac`/`\\tfrac`; `.5` -> `0.5`; `x = 3` -> `3` --
extended with what model answers commonly add: `$`/`\\(` delimiters,
`\\text{...}` wrappers around words, unit words after numbers, thousands
separators, a trailing period, and one canonical spelling for every exact
number (`142.0`, `0142`, `142` are the same string; so are `0.5`, `1/2`,
`\\frac{1}{2}`; `3.3e12` and `3.3 \\times 10^{12}`).

Everything here is plain string work, linear in the input and safe to run on
any model output; symbolic equivalence lives in `e1jax.rewards.math`.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from e1jax.brackets import matching_close

# Longest numeral we turn into an exact number, and the largest decimal
# exponent we expand: beyond these the text is compared as text.
_MAX_NUMBER_CHARS = 200
_MAX_EXPONENT = 400

_UNIT_WORDS = (
    "mm", "cm", "km", "meter", "metre", "centimeter", "kilometer", "millimeter",
    "inch", "inches", "foot", "feet", "ft", "yard", "mile", "mph", "kph",
    "second", "sec", "minute", "min", "hour", "hr", "day", "week", "month", "year",
    "degree", "radian", "unit", "dollar", "cent", "euro", "point", "percent",
    "gram", "kilogram", "kg", "pound", "lb", "ounce", "liter", "litre", "ml",
    "gallon", "square", "sq", "cubic", "people", "student", "person", "page",
)
_UNIT_WORD_RE = re.compile(
    r"^(?P<head>.*?[\d}])\s*(?:(?:square|sq|cubic)\s+)?(?:" + "|".join(_UNIT_WORDS) + r")(?:e?s)?"
    r"(?:\^\{?\d\}?)?\.?$"
)
_TEXT_UNIT_RE = re.compile(
    r"^(?P<head>.*?[\d})])\s*\\(?:text|textrm|mathrm|mbox|rm)\s*\{[\s~]*[A-Za-z][A-Za-z\s~/.\-]*\}"
    r"(?:\^\{?\d\}?)?$"
)
_WRAPPERS_RE = re.compile(
    r"\\(?:text|textbf|textit|textrm|textsf|texttt|mathrm|mathbf|mathit|mathsf|mathtt|mbox|boldsymbol|bm)\s*\{"
)
_DEGREES_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?(?:\s*(?:\\mathrm\{[CFK]\}|\\text\{\s*[CFK]\}|[CFK]\b))?|°[CFK]?")
_SPACING_RE = re.compile(r"\\(?:,|;|:|>|quad|qquad|enspace|thinspace| )|~")
_LHS_SEPARATORS = (re.compile(r"="), re.compile(r"\\in(?![A-Za-z])"))
_SHORT_LHS_RE = re.compile(r"^(?:[A-Za-z]\w?|\\[A-Za-z]+|[A-Za-z]_\{?\w+\}?)$")

_DECIMAL_RE = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_THOUSANDS_RE = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_SCIENTIFIC_RE = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:\\times|\\cdot|\*|×)10\^(?:\{([+-]?\d+)\}|([+-]?\d))$")
_FRAC_RE = re.compile(r"^([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}$")
_SLASH_RE = re.compile(r"^([+-]?\d+)/([+-]?\d+)$")


def matching_brace(text: str, open_index: int) -> int:
    """Index of the `}` that closes the `{` at `open_index`, or -1."""
    return matching_close(text, open_index, "{}")


def _unwrap_commands(text: str) -> str:
    """`\\text{abc}` -> `abc` (also `\\textbf`, `\\mathrm`, `\\mbox`, ...), nesting allowed."""
    while True:
        match = _WRAPPERS_RE.search(text)
        if match is None:
            return text
        close = matching_brace(text, match.end() - 1)
        if close < 0:
            return text
        text = text[: match.start()] + text[match.end() : close] + text[close + 1 :]


def _remove_right_units(text: str) -> str:
    # The original rule: "\text{ " (with its space) only ever introduces units.
    for marker in ("\\text{ ", "\\mbox{ "):
        parts = text.split(marker)
        if len(parts) == 2 and parts[0].strip():
            return parts[0]
    match = _TEXT_UNIT_RE.match(text) or _UNIT_WORD_RE.match(text)
    if match is not None:
        return match.group("head")
    return text


def _fix_sqrt(text: str) -> str:
    """`\\sqrt3` -> `\\sqrt{3}`."""
    if "\\sqrt" not in text:
        return text
    pieces = text.split("\\sqrt")
    out = pieces[0]
    for piece in pieces[1:]:
        if piece and piece[0] not in "{[":
            out += "\\sqrt{" + piece[0] + "}" + piece[1:]
        else:
            out += "\\sqrt" + piece
    return out


def _fix_fracs(text: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{72}` and `\\frac{72}1` -> braced (spaces already removed)."""
    out = []
    i = 0
    while True:
        j = text.find("\\frac", i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        j += len("\\frac")
        out.append(text[i:j])
        for _ in range(2):
            if j >= len(text):
                break
            if text[j] == "{":
                close = matching_brace(text, j)
                if close < 0:
                    break
                out.append("{" + _fix_fracs(text[j + 1 : close]) + "}")
                j = close + 1
            elif text[j] == "\\":
                break  # a command argument such as \\frac\\pi2: leave as written
            else:
                out.append("{" + text[j] + "}")
                j += 1
        i = j


def _strip_outer_braces(text: str) -> str:
    while len(text) >= 2 and text[0] == "{" and matching_brace(text, 0) == len(text) - 1:
        text = text[1:-1]
    return text


def _drop_short_lhs(text: str) -> str:
    """`x=3` -> `3`, `k = 1` -> `1`, `x \\in [2,5)` -> `[2,5)` (short left sides only)."""
    for sep in _LHS_SEPARATORS:
        parts = sep.split(text)
        if len(parts) == 2 and _SHORT_LHS_RE.match(parts[0].strip()) and parts[1].strip():
            return parts[1]
    return text


def exact_number(text: str) -> Fraction | None:
    """The exact rational a plain numeral spells (after `strip_string`), or None.

    Accepts integers, decimals, `1,234,567`, `3.3e12`, `3.3\\times10^{12}`,
    `a/b` and `\\frac{a}{b}` with integer a, b.
    """
    if not text or len(text) > _MAX_NUMBER_CHARS:
        return None
    if _THOUSANDS_RE.match(text):
        text = text.replace(",", "")
    try:
        if _DECIMAL_RE.match(text):
            return _decimal_fraction(text)
        match = _SCIENTIFIC_RE.match(text)
        if match:
            exponent = match.group(2) or match.group(3)
            return _decimal_fraction(f"{match.group(1)}e{exponent}")
        match = _FRAC_RE.match(text) or None
        if match:
            sign, num, den = match.groups()
            value = Fraction(int(num), int(den))
            return -value if sign == "-" else value
        match = _SLASH_RE.match(text)
        if match:
            return Fraction(int(match.group(1)), int(match.group(2)))
    except (ZeroDivisionError, ValueError, InvalidOperation):
        return None
    return None


def _decimal_fraction(text: str) -> Fraction | None:
    value = Decimal(text)
    if not value.is_finite() or abs(value.adjusted()) > _MAX_EXPONENT:
        return None
    return Fraction(value)


def format_number(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def strip_string(text: str) -> str:
    """Normalise one answer string so that equal answers become equal strings."""
    text = text.replace("\n", " ").strip()
    text = text.replace("\\!", "")
    text = text.replace("\\\\", "\\")
    text = text.replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")
    text = text.replace("\\displaystyle", "").replace("\\textstyle", "")
    text = text.replace("tfrac", "frac").replace("dfrac", "frac")
    text = text.replace("\\left", "").replace("\\right", "")
    text = _DEGREES_RE.sub("", text)
    text = text.replace("\\$", "").replace("$", "")
    text = text.replace("\\%", "").replace("%", "")
    text = text.replace("{,}", ",")
    text = _SPACING_RE.sub(" ", text).strip()
    text = text.rstrip(".").strip()
    text = _remove_right_units(text).strip()
    text = _unwrap_commands(text).strip()
    text = text.replace(" .", " 0.").replace("{.", "{0.").replace("-.", "-0.")
    if text.startswith("."):
        text = "0" + text
    text = _drop_short_lhs(text)
    text = _fix_sqrt(text)
    text = text.replace(" ", "")
    try:
        text = _fix_fracs(text)
    except RecursionError:  # absurdly nested fractions: compare as written
        pass
    text = _strip_outer_braces(text)
    if len(text) == 3 and text[0] == "(" and text[2] == ")" and text[1].isalpha():
        text = text[1]  # multiple choice: "(C)" -> "C"
    number = exact_number(text)
    if number is not None:
        return format_number(number)
    return text


def is_equiv(a: str, b: str) -> bool:
    """True when the two answers normalise to the same string."""
    return strip_string(a) == strip_string(b)
