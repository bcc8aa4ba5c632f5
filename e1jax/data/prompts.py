"""The E1 prompt: the problem followed by the original's step-by-step instruction."""

from __future__ import annotations

# Appended to every problem by the original (leading space included), both in its
# evaluation prompts and in the `prompt` column of its verl training parquet files.
E1_INSTRUCTION = " Let's think step by step and output the final answer within \\boxed{}."


def e1_user_message(problem: str) -> str:
    """The user message the original sends for `problem` (no system prompt)."""
    return f"{problem} Let's think step by step and output the final answer within \\boxed{{}}."


def strip_e1_instruction(content: str) -> str:
    """Recover the problem from a user message that may end with the E1 instruction."""
    if content.endswith(E1_INSTRUCTION):
        return content[: -len(E1_INSTRUCTION)]
    stripped = content.rstrip()
    if stripped.endswith(E1_INSTRUCTION.strip()):
        return stripped[: -len(E1_INSTRUCTION.strip())].rstrip()
    return content
