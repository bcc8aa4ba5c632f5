"""Matching brackets in text (boxed answers, HLO operand lists)."""

from __future__ import annotations


def matching_close(text: str, open_index: int, pair: str = "{}") -> int:
    """Index of the bracket that closes the one at `open_index` (pair: its open and close
    characters), or -1 when it never closes."""
    opening, closing = pair
    depth = 0
    for i in range(open_index, len(text)):
        if text[i] == opening:
            depth += 1
        elif text[i] == closing:
            depth -= 1
            if depth == 0:
                return i
    return -1
