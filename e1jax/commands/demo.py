"""`e1jax demo`: the miniature Elastic Reasoning experiment on a CPU."""

from __future__ import annotations

import argparse

from e1jax.errors import E1Error


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="train and evaluate a miniature E1 model on a synthetic task (CPU, minutes)")
    parser.add_argument("--out", default="demo_out", help="output folder (models, tables, plot)")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=None, help="one seed (default 0); every file in --out")
    seeds.add_argument("--seeds", default=None, metavar="S1,S2,...",
                       help="several seeds, e.g. 0,1,2: each seed's run in OUT/seed_<n>, mean, spread and the "
                            "per-seed tables in OUT/results.md and results.json")
    parser.add_argument("--quick", action="store_true", help="a smaller run (under 3 minutes), for tests and CI")
    parser.set_defaults(func=run)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise E1Error(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not seeds:
        raise E1Error("--seeds is empty")
    return seeds


def run(args: argparse.Namespace) -> int:
    from e1jax.toy.demo import run_demo

    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    run_demo(args.out, seed=args.seed, seeds=seeds, quick=args.quick)
    return 0
