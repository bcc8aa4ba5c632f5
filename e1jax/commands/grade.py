"""`e1jax grade`: grade responses from a JSONL file (math: ground_truth, code: tests)."""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

from e1jax.errors import E1Error

_REFERENCE_FIELD = {"math": "ground_truth", "code": "tests"}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "grade",
        help="grade responses in a JSONL file",
        description="Each input line is a JSON object with 'response' and 'ground_truth' "
        "(--kind math) or 'tests' (--kind code). Each output line is the input object plus "
        "'reward', 'correct', 'extracted' and 'reason'; a summary goes to stderr.",
    )
    parser.add_argument("--input", required=True, help="JSONL file to grade")
    parser.add_argument("--kind", choices=tuple(_REFERENCE_FIELD), default="math", help="reward kind (default: math)")
    parser.add_argument("--out", help="output JSONL file (default: stdout)")
    parser.add_argument("--workers", type=int, default=None, help="parallel math graders (default: CPU count, at most 16)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per symbolic math comparison (default: 5)")
    parser.add_argument("--no-require-think", action="store_true",
                        help="math: grade responses without </think> instead of scoring them as format errors")
    parser.set_defaults(func=run)


def read_records(path: Path, reference_field: str) -> list[tuple[int, dict]]:
    """(line number, JSON object) for each non-blank line, checked for 'response' and the reference field."""
    if not path.is_file():
        raise E1Error(f"input file not found: {path}")
    records = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise E1Error(f"{path}:{lineno}: malformed JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise E1Error(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            for field in ("response", reference_field):
                if field not in record:
                    raise E1Error(f"{path}:{lineno}: missing field '{field}'")
            if not isinstance(record["response"], str):
                raise E1Error(f"{path}:{lineno}: 'response' must be a string")
            records.append((lineno, record))
    return records


def grade_records(numbered: list[tuple[int, dict]], args: argparse.Namespace, path: Path) -> list:
    records = [record for _, record in numbered]
    if args.kind == "math":
        from e1jax.rewards.math import grade_math_batch, ground_truth_answers

        for lineno, record in numbered:
            try:
                ground_truth_answers(record["ground_truth"])
            except E1Error as err:
                raise E1Error(f"{path}:{lineno}: {err}") from None
        return grade_math_batch(
            [r["response"] for r in records],
            [r["ground_truth"] for r in records],
            workers=args.workers,
            timeout_s=args.timeout,
            require_think_close=not args.no_require_think,
        )
    from e1jax.rewards.code import grade_code

    return [grade_code(r["response"], r["tests"]) for r in records]


def summary(results: list, kind: str) -> str:
    total = len(results)
    correct = sum(r.correct for r in results)
    reasons = collections.Counter(r.reason for r in results)
    accuracy = correct / total if total else 0.0
    others = ", ".join(f"{name} {count}" for name, count in sorted(reasons.items()))
    return (f"graded {total} ({kind}): accuracy {accuracy:.4f} ({correct}/{total}), "
            f"format errors {reasons.get('format_error', 0)}" + (f"; reasons: {others}" if others else ""))


def run(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise E1Error(f"--workers must be at least 1, got {args.workers}")
    if args.timeout <= 0:
        raise E1Error(f"--timeout must be positive, got {args.timeout}")
    path = Path(args.input)
    numbered = read_records(path, _REFERENCE_FIELD[args.kind])
    results = grade_records(numbered, args, path)
    records = [record for _, record in numbered]
    lines = [json.dumps({**record, **result.to_dict()}, ensure_ascii=False) for record, result in zip(records, results)]
    text = "".join(line + "\n" for line in lines)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    print(summary(results, args.kind), file=sys.stderr)
    return 0
