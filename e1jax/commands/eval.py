"""`e1jax eval`: accuracy and response length at several thinking budgets (and unconstrained).

    python -m e1jax eval --model DIR --data aime,amc --think-budgets 512,1024,2048,3072 \
        --solution-budget 1024 --n 16 --out runs/eval
    python -m e1jax eval --model DIR --data aime --mode plain --max-new-tokens 32768 --out runs/eval-plain
    python -m e1jax eval --report runs/base runs/e1 [--names base,E1] [--out runs/compare]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from e1jax.commands.common import (
    add_model_args,
    add_prompt_args,
    add_reward_args,
    load_for_inference,
    prompt_spec,
    reward_spec,
)
from e1jax.distributed import add_distributed_args, initialize_from_args, is_main_process
from e1jax.errors import E1Error
from e1jax.eval.settings import DEFAULT_BUDGETS, EOS_IN_THINKING, MODES, EvalSettings

DESCRIPTION = ("Sample every problem n times at every thinking budget (one budget sweep), grade, and write "
               "results.json, samples.jsonl, results.md and accuracy_vs_tokens.png to --out. Rerunning with the "
               "same --out and settings resumes an interrupted run. With --report, combine finished runs into "
               "one table instead.")


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a model at several thinking budgets (avg@n, pass@n, tokens)",
                                   description=DESCRIPTION)
    add_model_args(parser, required=False)
    parser.add_argument("--data", nargs="+", help="dataset names (aime, amc, math, minerva, olympiad_bench, gsm8k, "
                        "codeforces; livecodebench from the Hub), files/folders or hf://owner/name[:[config/]split]; "
                        "comma-separated or space-separated")
    parser.add_argument("--mode", choices=MODES, default="elastic",
                        help="elastic: the thinking budgets; plain: unconstrained up to --max-new-tokens; both")
    parser.add_argument("--think-budgets", default=",".join(map(str, DEFAULT_BUDGETS)),
                        help="comma-separated thinking budgets")
    parser.add_argument("--solution-budget", type=int, default=1024)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="plain mode: the generation limit")
    parser.add_argument("--n", type=int, default=16, help="samples per problem")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8, help="problems per sampler call (x n samples x budgets)")
    parser.add_argument("--limit", type=int, default=None, help="only the first K problems of each dataset")
    parser.add_argument("--max-prompt-len", type=int, default=None, help="refuse prompts longer than this")
    add_prompt_args(parser)
    parser.add_argument("--eos-in-thinking", choices=EOS_IN_THINKING, default="stop",
                        help="EOS while thinking ends the sample (stop) or, as the original did, gets </think> appended")
    add_reward_args(parser)
    parser.add_argument("--original-compat", action="store_true",
                        help="evaluate as the original's main_generation.py: --eos-in-thinking append_close "
                        "--grader original")
    parser.add_argument("--name", default=None, help="the model's name in tables (default: the model folder's name)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", help="output folder (required unless --report)")
    parser.add_argument("--report", nargs="+", metavar="OUT",
                        help="combine finished runs (output folders or results.json files) into one table; "
                        "runs with the same name (e.g. a plain and an elastic run of one model) share a row")
    parser.add_argument("--names", default=None, help="with --report: comma-separated row names, one per OUT")
    add_distributed_args(parser)
    parser.set_defaults(func=run)


def parse_budgets(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise E1Error(f"--think-budgets must be comma-separated integers, got '{text}'") from None


def parse_data(values: list[str]) -> list[str]:
    specs = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if not specs:
        raise E1Error("--data is empty")
    return specs


def run_report(args: argparse.Namespace) -> int:
    from e1jax.eval.report import PLOT_FILE, TABLE_FILE, combine_runs, comparison_markdown, plot_accuracy_vs_tokens, write_comparison_table

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    merged, labels = combine_runs(args.report, names)
    if args.out:
        out = Path(args.out)
        table = write_comparison_table(merged, labels, out / TABLE_FILE)
        plot = plot_accuracy_vs_tokens(merged, labels, out / PLOT_FILE)
        print(f"wrote {table} and {plot}", file=sys.stderr)
    print(comparison_markdown(merged, labels))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.report:
        if args.model or args.data:
            raise E1Error("--report combines finished runs; do not give --model or --data with it")
        return run_report(args)
    for flag in ("model", "data", "out"):
        if not getattr(args, flag):
            raise E1Error(f"--{flag} is required" + (" (or use --report)" if flag == "model" else ""))
    if args.original_compat:
        args.eos_in_thinking, args.grader = "append_close", "original"
    settings = EvalSettings(
        mode=args.mode, think_budgets=parse_budgets(args.think_budgets), solution_budget=args.solution_budget,
        max_new_tokens=args.max_new_tokens, n=args.n, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, seed=args.seed, eos_in_thinking=args.eos_in_thinking, max_prompt_len=args.max_prompt_len,
    )
    initialize_from_args(args)  # before any JAX computation; --report above needs no cluster
    from e1jax.dtypes import resolve_dtype
    from e1jax.eval.report import TABLE_FILE, comparison_markdown
    from e1jax.eval.runner import Evaluation
    from e1jax.models.hf import load_config, resolve_model_dir
    from e1jax.task import Task
    from e1jax.tokenizer import Tokenizer

    model_dir = resolve_model_dir(args.model)
    task = Task(Tokenizer.load(model_dir), prompt=prompt_spec(args), reward=reward_spec(args))
    datasets = task.load(parse_data(args.data), limit=args.limit)
    dtype = resolve_dtype(args.dtype)
    name = args.name or Path(model_dir).resolve().name
    identity = {"model_path": str(Path(model_dir).resolve()), "dtype": dtype}
    # Everything that can be refused is refused before the parameters load.
    evaluation = Evaluation(task, datasets, settings, model_config=load_config(model_dir),
                            batch_size=args.batch_size, out_dir=args.out, model_name=name, identity=identity)
    config, params, mesh = load_for_inference(args)
    results = evaluation.run(config, params, mesh=mesh, progress=not args.no_progress)
    if not is_main_process():
        return 0
    print(comparison_markdown([results], [name]))
    print(f"wrote {Path(args.out) / 'results.json'}, samples.jsonl, {TABLE_FILE} and accuracy_vs_tokens.png", file=sys.stderr)
    return 0
