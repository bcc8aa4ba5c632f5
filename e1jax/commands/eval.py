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

from e1jax.commands.common import default_dtype
from e1jax.distributed import add_distributed_args, initialize_from_args, is_main_process
from e1jax.errors import E1Error


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model at several thinking budgets (avg@n, pass@n, tokens)",
        description="Sample every problem n times at every thinking budget (one budget sweep), grade, "
        "and write results.json, samples.jsonl, results.md and accuracy_vs_tokens.png to --out. "
        "Rerunning with the same --out and settings resumes an interrupted run. "
        "With --report, combine finished runs into one table instead.",
    )
    parser.add_argument("--model", help="Hugging Face model directory or Hub id (required unless --report)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="parameter and compute dtype (default: float32 on CPU, bfloat16 on accelerators)")
    parser.add_argument("--mesh", default=None, help="device mesh, e.g. data=2,tensor=4 (default: one device; "
                        "on several hosts, all devices along data)")
    parser.add_argument("--data", nargs="+", help="dataset names (aime, amc, math, minerva, olympiad_bench, gsm8k, "
                        "codeforces) or files/folders; comma-separated or space-separated")
    parser.add_argument("--mode", choices=("elastic", "plain", "both"), default="elastic",
                        help="elastic: the thinking budgets; plain: unconstrained up to --max-new-tokens; both")
    parser.add_argument("--think-budgets", default="512,1024,2048,3072", help="comma-separated thinking budgets")
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
    parser.add_argument("--no-chat-template", action="store_true",
                        help="do not apply the chat template (the E1 instruction is still added to math problems)")
    parser.add_argument("--eos-in-thinking", choices=("stop", "append_close"), default="stop",
                        help="EOS while thinking ends the sample (stop) or, as the original did, gets </think> appended")
    parser.add_argument("--grade-workers", type=int, default=None, help="parallel graders (default: CPU count)")
    parser.add_argument("--name", default=None, help="the model's name in tables (default: the model folder's name)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", help="output folder (required unless --report)")
    parser.add_argument("--report", nargs="+", metavar="OUT",
                        help="combine finished runs (output folders or results.json files) into one table; "
                        "runs with the same name (e.g. a plain and an elastic run of one model) share a row")
    parser.add_argument("--names", default=None, help="with --report: comma-separated row names, one per OUT")
    add_distributed_args(parser)
    parser.set_defaults(func=run)


def parse_budgets(text: str) -> list[int]:
    try:
        budgets = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise E1Error(f"--think-budgets must be comma-separated integers, got '{text}'") from None
    if not budgets:
        raise E1Error("--think-budgets is empty")
    bad = [b for b in budgets if b <= 0]
    if bad:
        raise E1Error(f"--think-budgets must be positive, got {bad[0]}")
    return budgets


def parse_data(values: list[str]) -> list[str]:
    specs = [part.strip() for value in values for part in value.split(",") if part.strip()]
    if not specs:
        raise E1Error("--data is empty")
    return specs


def load_datasets(specs: list[str], limit: int | None) -> dict[str, list[dict]]:
    from e1jax.data.registry import resolve_dataset

    datasets: dict[str, list[dict]] = {}
    for spec in specs:
        name, records = resolve_dataset(spec)
        if name in datasets:
            raise E1Error(f"two datasets are named '{name}' (from --data {spec}); rename one file")
        if not records:
            raise E1Error(f"dataset '{spec}' has no problems")
        datasets[name] = records[:limit] if limit is not None else records
    return datasets


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


def _check_args(args: argparse.Namespace) -> None:
    if args.model is None:
        raise E1Error("--model is required (or use --report)")
    if not args.data:
        raise E1Error("--data is required")
    if not args.out:
        raise E1Error("--out is required")
    for flag in ("n", "batch_size", "solution_budget"):
        if getattr(args, flag) <= 0:
            raise E1Error(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.limit is not None and args.limit <= 0:
        raise E1Error(f"--limit must be positive, got {args.limit}")
    if args.max_new_tokens is not None and args.max_new_tokens <= 0:
        raise E1Error(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    if args.mode in ("plain", "both") and args.max_new_tokens is None:
        raise E1Error(f"--mode {args.mode} needs --max-new-tokens (the unconstrained limit, e.g. 32768)")
    if args.grade_workers is not None and args.grade_workers < 1:
        raise E1Error(f"--grade-workers must be at least 1, got {args.grade_workers}")


def run(args: argparse.Namespace) -> int:
    if args.report:
        if args.model or args.data:
            raise E1Error("--report combines finished runs; do not give --model or --data with it")
        return run_report(args)
    _check_args(args)
    initialize_from_args(args)  # before any JAX computation; --report above needs no cluster
    from e1jax.eval.report import TABLE_FILE, comparison_markdown
    from e1jax.eval.runner import EvalSettings, preflight, run_evaluation

    settings = EvalSettings(
        mode=args.mode, think_budgets=tuple(parse_budgets(args.think_budgets)), solution_budget=args.solution_budget,
        max_new_tokens=args.max_new_tokens, n=args.n, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, seed=args.seed, chat_template=not args.no_chat_template,
        eos_in_thinking=args.eos_in_thinking, max_prompt_len=args.max_prompt_len,
    )
    datasets = load_datasets(parse_data(args.data), args.limit)

    from e1jax.commands.common import load_model_from_args
    from e1jax.models.hf import load_config, resolve_model_dir
    from e1jax.sharding import make_mesh
    from e1jax.tokenizer import Tokenizer

    model_dir = resolve_model_dir(args.model)
    tokenizer = Tokenizer.load(model_dir)
    dtype = args.dtype or default_dtype()
    name = args.name or Path(model_dir).resolve().name
    identity = {"model_path": str(Path(model_dir).resolve()), "dtype": dtype}
    main = is_main_process()
    # Everything that can be refused is refused before the parameters load. Only process 0 looks
    # at --out (run_evaluation hands its view to the others).
    preflight(load_config(model_dir), tokenizer, datasets, settings, out_dir=args.out if main else None,
              model_name=name, identity=identity)
    import jax

    mesh = make_mesh(args.mesh) if args.mesh or jax.process_count() > 1 else None
    config, params = load_model_from_args(argparse.Namespace(model=str(model_dir), dtype=dtype), mesh=mesh)
    results = run_evaluation(
        config, params, tokenizer, datasets, settings, batch_size=args.batch_size, mesh=mesh, out_dir=args.out,
        progress=not args.no_progress, model_name=name, identity=identity, grade_workers=args.grade_workers,
    )
    if not main:
        return 0
    print(comparison_markdown([results], [name]))
    print(f"wrote {Path(args.out) / 'results.json'}, samples.jsonl, {TABLE_FILE} and accuracy_vs_tokens.png", file=sys.stderr)
    return 0
