"""`e1jax generate`: elastic (thinking / solution budgets) or plain generation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from e1jax.commands.common import add_model_args, load_model_from_args
from e1jax.distributed import add_distributed_args, initialize_from_args, is_main_process
from e1jax.errors import E1Error


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate with thinking and solution budgets")
    add_model_args(parser)
    parser.add_argument("--prompt", action="append", help="a problem (repeatable)")
    parser.add_argument("--prompts-file", help="a file with one problem per line (or a .jsonl with a 'problem' field)")
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
    parser.add_argument("--no-chat-template", action="store_true", help="use the prompt text as is, without E1 instruction or chat template")
    parser.add_argument("--json", action="store_true", help="one JSON object per sample per line")
    add_distributed_args(parser)
    parser.set_defaults(func=run)


def read_prompts(args: argparse.Namespace) -> list[str]:
    if bool(args.prompt) == bool(args.prompts_file):
        raise E1Error("give --prompt (one or more) or --prompts-file")
    if args.prompt:
        return list(args.prompt)
    path = Path(args.prompts_file)
    if not path.is_file():
        raise E1Error(f"prompts file not found: {path}")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                prompts.append(json.loads(line)["problem"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise E1Error(f"{path} line {number}: expected a JSON object with 'problem'") from err
        else:
            prompts.append(line)
    if not prompts:
        raise E1Error(f"prompts file {path} holds no prompts")
    return prompts


def run(args: argparse.Namespace) -> int:
    from e1jax.models.hf import resolve_model_dir
    from e1jax.sampling import SamplingParams, SpecialIds, generate
    from e1jax.sharding import make_mesh
    from e1jax.tokenizer import Tokenizer

    initialize_from_args(args)
    problems = read_prompts(args)
    for name in ("think_budget", "solution_budget", "max_new_tokens", "n"):
        if getattr(args, name) <= 0:
            raise E1Error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    sampling = SamplingParams(args.temperature, args.top_p, args.top_k)
    model_dir = resolve_model_dir(args.model)
    tokenizer = Tokenizer.load(model_dir)
    close_ids = (tokenizer.think_close_id,) if args.close is None else tuple(tokenizer.encode(args.close))
    if not close_ids:
        raise E1Error("--close tokenizes to nothing")
    ids = SpecialIds(close_ids, tokenizer.eos_ids, tokenizer.pad_id, natural_close_id=tokenizer.think_close_id)
    use_template = not args.no_chat_template
    prompt_ids = [tokenizer.encode_prompt(p, chat_template=use_template, e1_instruction=use_template) for p in problems]
    import jax

    # One process per host: default to a data-parallel mesh over every device.
    mesh = make_mesh(args.mesh) if args.mesh else (make_mesh("data=-1") if jax.process_count() > 1 else None)
    config, params = load_model_from_args(argparse.Namespace(model=str(model_dir), dtype=args.dtype), mesh=mesh)
    out = generate(
        config, params, prompt_ids, ids=ids, mode=args.mode, think_budget=args.think_budget,
        solution_budget=args.solution_budget, max_new_tokens=args.max_new_tokens, sampling=sampling,
        n=args.n, seed=args.seed, mesh=mesh, eos_in_thinking=args.eos_in_thinking, max_prompt_len=args.max_prompt_len,
    )
    if not is_main_process():
        return 0
    for row in range(len(out)):
        record = sample_record(out, row, tokenizer, problems[out.prompt_index[row]], len(close_ids))
        if args.json:
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(f"=== prompt {out.prompt_index[row]} sample {row % args.n} "
                  f"(thinking {record['thinking_tokens']}, solution {record['solution_tokens']}, "
                  f"truncated {record['truncated']}, {record['finish_reason']})")
            print(record["text"])
    return 0


def sample_record(out, row: int, tokenizer, prompt: str, close_len: int) -> dict:
    ids = out.response_ids(row)
    thinking = int(out.thinking_tokens[row])
    closed = thinking < len(ids) and (out.forced[row, thinking] or ids[thinking] == tokenizer.think_close_id)
    width = (close_len if out.forced[row, thinking] else 1) if closed else 0
    return {
        "prompt": prompt,
        "text": tokenizer.decode(ids),
        "thinking": tokenizer.decode(ids[:thinking]),
        "solution": tokenizer.decode(ids[thinking + width :]) if closed else "",
        "token_ids": ids,
        "thinking_tokens": thinking,
        "solution_tokens": int(out.solution_tokens[row]),
        "truncated": bool(out.truncated[row]),
        "finish_reason": out.finish_reason[row],
    }
