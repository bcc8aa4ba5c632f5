"""`e1jax generate`: elastic (thinking / solution budgets) or plain generation, through the
continuous-batching engine (budgets may differ per prompt: .jsonl fields think_budget,
solution_budget, max_new_tokens)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from e1jax.commands.common import add_model_args, add_prompt_args, load_for_inference, prompt_spec
from e1jax.distributed import add_distributed_args, initialize_from_args, is_main_process
from e1jax.errors import E1Error


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate with thinking and solution budgets")
    add_model_args(parser)
    parser.add_argument("--prompt", action="append", help="a problem (repeatable)")
    parser.add_argument("--prompts-file", help="a file with one problem per line, or a .jsonl with a 'problem' field "
                        "and optionally its own 'think_budget', 'solution_budget', 'max_new_tokens'")
    parser.add_argument("--mode", choices=("elastic", "plain"), default="elastic")
    parser.add_argument("--think-budget", type=int, default=1024)
    parser.add_argument("--solution-budget", type=int, default=1024)
    parser.add_argument("--max-new-tokens", type=int, default=4096, help="plain mode: the generation limit")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--n", type=int, default=1, help="samples per prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-prompt-len", type=int, default=None)
    parser.add_argument("--close", default=None, help="text forced at the thinking budget (default: the single </think> token)")
    parser.add_argument("--eos-in-thinking", choices=("stop", "append_close"), default="stop",
                        help="EOS while thinking ends the sample (stop) or, as the original did, gets </think> appended")
    add_prompt_args(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per sample per line")
    parser.add_argument("--slots", type=int, default=32, help="engine: samples decoded at once")
    parser.add_argument("--kv-tokens", type=int, default=0,
                        help="engine: the KV cache in tokens (default: room for every slot's longest request)")
    parser.add_argument("--page-size", type=int, default=16, help="engine: tokens per KV page")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_distributed_args(parser)
    parser.set_defaults(func=run)


BUDGET_FIELDS = ("think_budget", "solution_budget", "max_new_tokens")


def read_prompts(args: argparse.Namespace) -> list[dict]:
    """[{"problem": text, and any of BUDGET_FIELDS the .jsonl line sets}]."""
    if bool(args.prompt) == bool(args.prompts_file):
        raise E1Error("give --prompt (one or more) or --prompts-file")
    if args.prompt:
        return [{"problem": p} for p in args.prompt]
    path = Path(args.prompts_file)
    if not path.is_file():
        raise E1Error(f"prompts file not found: {path}")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            prompts.append({"problem": line})
            continue
        try:
            row = json.loads(line)
            record = {"problem": row["problem"]}
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise E1Error(f"{path} line {number}: expected a JSON object with 'problem'") from err
        for field in BUDGET_FIELDS:
            if field in row:
                if not isinstance(row[field], int) or isinstance(row[field], bool) or row[field] < 1:
                    raise E1Error(f"{path} line {number}: '{field}' must be a positive integer, got {row[field]!r}")
                record[field] = row[field]
        prompts.append(record)
    if not prompts:
        raise E1Error(f"prompts file {path} holds no prompts")
    return prompts


def run(args: argparse.Namespace) -> int:
    from e1jax.engine import EngineConfig, engine_generate
    from e1jax.models.hf import resolve_model_dir
    from e1jax.sampling import SamplingParams
    from e1jax.task import Task
    from e1jax.tokenizer import Tokenizer

    initialize_from_args(args)
    problems = read_prompts(args)
    if args.n <= 0:
        raise E1Error(f"--n must be positive, got {args.n}")
    sampling = SamplingParams(args.temperature, args.top_p, args.top_k)
    engine = EngineConfig(slots=args.slots, page_size=args.page_size, kv_tokens=args.kv_tokens)
    model_dir = resolve_model_dir(args.model)
    task = Task(Tokenizer.load(model_dir), prompt=prompt_spec(args), close=args.close)
    prompt_ids = [task.prompt_for_text(p["problem"]) for p in problems]
    defaults = {"think_budget": args.think_budget, "solution_budget": args.solution_budget,
                "max_new_tokens": args.max_new_tokens}
    budgets = {field: [p.get(field, default) for p in problems] for field, default in defaults.items()}
    config, params, _ = load_for_inference(argparse.Namespace(model=str(model_dir), dtype=args.dtype, mesh=args.mesh))
    out = engine_generate(
        config, params, prompt_ids, ids=task.special_ids, mode=args.mode, think_budget=budgets["think_budget"],
        solution_budget=budgets["solution_budget"], max_new_tokens=budgets["max_new_tokens"], sampling=sampling,
        n=args.n, seed=args.seed, eos_in_thinking=args.eos_in_thinking, max_prompt_len=args.max_prompt_len,
        engine=engine, progress=not args.no_progress and is_main_process(),
    )
    if not is_main_process():
        return 0
    for row in range(len(out)):
        record = sample_record(out, row, task, problems[out.prompt_index[row]]["problem"])
        if args.json:
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(f"=== prompt {out.prompt_index[row]} sample {row % args.n} "
                  f"(thinking {record['thinking_tokens']}, solution {record['solution_tokens']}, "
                  f"truncated {record['truncated']}, {record['finish_reason']})")
            print(record["text"])
    return 0


def sample_record(out, row: int, task, prompt: str) -> dict:
    ids = out.response_ids(row)
    special = task.special_ids
    decode = task.tokenizer.decode
    thinking = int(out.thinking_tokens[row])
    closed = thinking < len(ids) and (out.forced[row, thinking] or ids[thinking] == special.natural_close)
    width = (len(special.think_close_ids) if out.forced[row, thinking] else 1) if closed else 0
    return {
        "prompt": prompt,
        "text": decode(ids),
        "thinking": decode(ids[:thinking]),
        "solution": decode(ids[thinking + width :]) if closed else "",
        "token_ids": ids,
        "thinking_tokens": thinking,
        "solution_tokens": int(out.solution_tokens[row]),
        "truncated": bool(out.truncated[row]),
        "finish_reason": out.finish_reason[row],
    }
