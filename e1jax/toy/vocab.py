"""The toy task's vocabulary: the pieces its texts are made of, shared by the task and its tokenizer."""

from __future__ import annotations

LABELS = "abcdefghijklmnopqrst"
PROBLEM_PREFIX = "Sum mod 10:"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
CHECK_WORD = " check"
OK_WORD = " ok"
ANSWER_WORDS = ("The", " answer", " is", " \\boxed{")
ANSWER_PREFIX = "".join(ANSWER_WORDS)
ANSWER_SUFFIX = "}."

EOS = "<|endoftext|>"
UNK = "<unk>"
USER = "<|User|>"
ASSISTANT = "<|Assistant|>"
SPECIAL_TOKENS = (EOS, UNK, USER, ASSISTANT)
THINK_TOKENS = (THINK_OPEN, THINK_CLOSE)


def word_vocabulary() -> list[str]:
    """Ordinary (non-added) tokens: every piece the task's texts are made of."""
    words = [PROBLEM_PREFIX, CHECK_WORD, OK_WORD, *ANSWER_WORDS]
    digits = [str(d) for d in range(10)]
    labels = [LABELS[0]] + [f" {c}" for c in LABELS]
    symbols = [c for c in "+-=:;.}{"]
    fallback = [" ", "\n"]
    vocab = [*words, *digits, *labels, *symbols, *fallback]
    return list(dict.fromkeys(vocab))
