"""`e1jax score`: log-probability of each response token given everything before it."""

from __future__ import annotations

import argparse
import json

import numpy as np

from e1jax.commands.common import add_model_args, add_prompt_args, load_model_from_args, parse_ids, prompt_spec
from e1jax.errors import E1Error


def register(subparsers) -> None:
    parser = subparsers.add_parser("score", help="log-probabilities of a response under a model")
    add_model_args(parser, mesh=False)
    parser.add_argument("--prompt", help="problem text (made into the E1 prompt as --instruction and --no-chat-template say)")
    parser.add_argument("--response", help="response text")
    parser.add_argument("--prompt-ids", help="prompt token ids, comma separated (no tokenizer needed)")
    parser.add_argument("--response-ids", help="response token ids, comma separated")
    add_prompt_args(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def score_ids(config, params, prompt_ids: list[int], response_ids: list[int]) -> np.ndarray:
    import jax
    import jax.numpy as jnp

    from e1jax.models.scoring import next_token_logprobs

    tokens = jnp.asarray([prompt_ids + response_ids], jnp.int32)
    mask = jnp.ones_like(tokens, bool)
    # One compiled program instead of op-by-op dispatch, even for one call.
    logp = jax.jit(next_token_logprobs, static_argnums=0)(config, params, tokens, mask)
    return np.asarray(logp[0, len(prompt_ids) - 1 :])


def run(args: argparse.Namespace) -> int:
    from e1jax.models.hf import resolve_model_dir

    use_ids = args.prompt_ids is not None or args.response_ids is not None
    use_text = args.prompt is not None or args.response is not None
    if use_ids == use_text:
        raise E1Error("give either --prompt and --response, or --prompt-ids and --response-ids")
    model_dir = resolve_model_dir(args.model)
    if use_ids:
        if args.prompt_ids is None or args.response_ids is None:
            raise E1Error("--prompt-ids and --response-ids go together")
        prompt_ids = parse_ids(args.prompt_ids, "--prompt-ids")
        response_ids = parse_ids(args.response_ids, "--response-ids")
    else:
        if args.prompt is None or args.response is None:
            raise E1Error("--prompt and --response go together")
        from e1jax.task import Task
        from e1jax.tokenizer import Tokenizer

        task = Task(Tokenizer.load(model_dir), prompt=prompt_spec(args))
        prompt_ids = task.prompt_for_text(args.prompt)
        response_ids = task.tokenizer.encode(args.response)
        if not response_ids:
            raise E1Error("--response tokenizes to nothing")
    config, params = load_model_from_args(argparse.Namespace(model=str(model_dir), dtype=args.dtype))
    limit = config.max_position_embeddings
    if len(prompt_ids) + len(response_ids) > limit:
        raise E1Error(f"prompt + response is {len(prompt_ids) + len(response_ids)} tokens, longer than the model's limit {limit}")
    bad = [t for t in prompt_ids + response_ids if not 0 <= t < config.vocab_size]
    if bad:
        raise E1Error(f"token id {bad[0]} is outside the vocabulary (size {config.vocab_size})")
    logprobs = score_ids(config, params, prompt_ids, response_ids)
    total = float(np.sum(logprobs))
    if args.json:
        print(json.dumps({"response_ids": response_ids, "logprobs": [float(x) for x in logprobs], "total_logprob": total}))
    else:
        for token_id, lp in zip(response_ids, logprobs):
            print(f"{token_id}\t{lp:.6f}")
        print(f"total\t{total:.6f}")
    return 0
