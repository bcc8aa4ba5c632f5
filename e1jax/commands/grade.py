"""`e1jax grade`: grade responses from a JSONL file against each record's ground_truth (answer or tests)."""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

from e1jax.commands.common import add_reward_args, reward_spec
from e1jax.errors import E1Error


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "grade",
        help="grade responses in a JSONL file",
        description="Each input line is a JSON object with 'response' and 'ground_truth' (the answer of a "
        "math problem, the tests of a code problem), and optionally 'ability' (math or code). Each output line "
        "is the input object plus 'reward', 'correct', 'extracted' and 'reason'; a summary goes to stderr.",
    )
    parser.add_argument("--input", required=True, help="JSONL file to grade")
    parser.add_argument("--out", help="output JSONL file (default: stdout)")
    add_reward_args(parser, "kind", "workers", "timeout")
    parser.add_argument("--no-require-think", action="store_true",
                        help="math: grade responses without </think> instead of scoring them as format errors")
    parser.set_defaults(func=run)


def read_records(path: Path) -> list[tuple[str, dict]]:
    """(where, JSON object) for each non-blank line, checked for 'response' and 'ground_truth'."""
    from e1jax.data.readers import read_jsonl

    if not path.is_file():
        raise E1Error(f"input file not found: {path}")
    records = []
    for record, where in read_jsonl(path):
        if not isinstance(record, dict):
            raise E1Error(f"{where}: expected a JSON object, got {type(record).__name__}")
        for field in ("response", "ground_truth"):
            if field not in record:
                raise E1Error(f"{where}: missing field '{field}'")
        if not isinstance(record["response"], str):
            raise E1Error(f"{where}: 'response' must be a string")
        records.append((where, record))
    return records


def check_math_truths(numbered: list[tuple[str, dict]], task) -> None:
    """A malformed math ground truth names its line, before anything is graded."""
    from e1jax.rewards.math import ground_truth_answers
    from e1jax.rewards.original_math import ground_truths

    parse = ground_truths if task.reward.grader == "original" else ground_truth_answers
    for where, record in numbered:
        if task.grader_of(record) == "math":
            try:
                parse(record["ground_truth"])
            except E1Error as err:
                raise E1Error(f"{where}: {err}") from None


def summary(results: list, kind: str) -> str:
    total = len(results)
    correct = sum(r.correct for r in results)
    reasons = collections.Counter(r.reason for r in results)
    accuracy = correct / total if total else 0.0
    others = ", ".join(f"{name} {count}" for name, count in sorted(reasons.items()))
    return (f"graded {total} ({kind}): accuracy {accuracy:.4f} ({correct}/{total}), "
            f"format errors {reasons.get('format_error', 0)}" + (f"; reasons: {others}" if others else ""))


def run(args: argparse.Namespace) -> int:
    from e1jax.task import Task

    task = Task(reward=reward_spec(args, require_think_close=not args.no_require_think))
    path = Path(args.input)
    numbered = read_records(path)
    check_math_truths(numbered, task)
    records = [record for _, record in numbered]
    results = task.grade([r["response"] for r in records], records)
    lines = [json.dumps({**record, **result.to_dict()}, ensure_ascii=False) for record, result in zip(records, results)]
    text = "".join(line + "\n" for line in lines)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    graders = "+".join(sorted({task.grader_of(r) for r in records})) or task.reward.kind
    print(summary(results, graders), file=sys.stderr)
    return 0
