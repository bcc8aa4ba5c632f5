"""`e1jax demo`: the miniature Elastic Reasoning experiment on a CPU."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="train and evaluate a miniature E1 model on a synthetic task (CPU, minutes)")
    parser.add_argument("--out", default="demo_out", help="output folder (models, tables, plot)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smaller run (under 3 minutes), for tests and CI")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from e1jax.toy.demo import run_demo

    run_demo(args.out, seed=args.seed, quick=args.quick)
    return 0
