"""`e1jax train`: GRPO with budget-constrained (elastic) rollouts, from a YAML recipe.

    python -m e1jax train --config configs/e1_math_1.5b_1k_1k.yaml [key=value ...]

The whole configuration is checked (unknown keys, ill-typed values, cross-field
rules) before anything is loaded. A run resumes from the latest complete
checkpoint in checkpoint.dir unless checkpoint.resume=false.
"""

from __future__ import annotations

import argparse
import sys

from e1jax.distributed import add_distributed_args, initialize_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="GRPO training with elastic rollouts",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML recipe (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. run.steps=10 rollout.n=4 data.train_files=[a.json,b.json]")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective configuration as YAML and exit")
    add_distributed_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from e1jax.rl.config import load_train_config

    cfg = load_train_config(args.config, args.overrides, require_model=not args.print_config)
    if args.print_config:
        import yaml

        from e1jax.config import to_dict

        print(yaml.safe_dump(to_dict(cfg.effective()), sort_keys=False), end="")
        return 0
    initialize_from_args(args)
    from e1jax.rl.trainer import train

    result = train(cfg)
    import jax

    if jax.process_index() == 0:
        if result.final_step == result.start_step:
            print(f"nothing to do: the checkpoint in {cfg.checkpoint_dir} is at step {result.start_step} "
                  f"(run.steps={cfg.run.steps})", file=sys.stderr)
        else:
            print(f"trained steps {result.start_step + 1}..{result.final_step}; metrics in "
                  f"{result.out_dir}/metrics.jsonl, checkpoints in {cfg.checkpoint_dir}", file=sys.stderr)
    return 0
