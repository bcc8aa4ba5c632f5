"""The original E1 grader's symbolic step (its are_equal_under_sympy past the guard): does
`(truth)-(answer)` parse, with implicit multiplication, and simplify to 0?

It can run for ever, so only e1jax.rewards.math's verifier workers call it, for requests
{"rules": "original", "candidates": [[difference, ...], ...]} built by e1jax.rewards.original_math.
"""

from __future__ import annotations

from collections.abc import Sequence


def simplifies_to_zero(difference: str) -> bool:
    """sympy.simplify of the parsed difference is 0; any failure is False, as in the original."""
    import sympy
    from sympy.parsing import sympy_parser

    transformations = sympy_parser.standard_transformations + (sympy_parser.implicit_multiplication_application,)
    try:
        expr = sympy_parser.parse_expr(difference.replace("^", "**"), transformations=transformations)
        return sympy.simplify(expr) == 0
    except Exception:  # noqa: BLE001 - an answer sympy cannot handle is wrong
        return False


def symbolic_match(candidates: Sequence[Sequence[str]]) -> bool:
    """Some candidate (one truth's differences) has every difference simplifying to 0."""
    return any(all(simplifies_to_zero(d) for d in differences) for differences in candidates)
