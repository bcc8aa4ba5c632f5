"""Command line: python -m e1jax COMMAND ...

Each command lives in e1jax/commands/<name>.py and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from e1jax.errors import E1Error

COMMANDS = ("generate", "score", "eval", "grade", "train", "convert", "demo", "bench", "plan")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="e1jax", description="Elastic Reasoning (E1) in JAX")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"e1jax.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"e1jax.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except E1Error as err:
        print(f"e1jax {args.command}: error: {err}", file=sys.stderr)
        return 1
    except FileNotFoundError as err:
        print(f"e1jax {args.command}: error: file not found: {err.filename or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"e1jax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
