"""`e1jax convert`: training checkpoints (orbax) <-> Hugging Face model directories.

    python -m e1jax convert --from-orbax runs/x/checkpoints [--step N] --to-hf out/model
    python -m e1jax convert --from-hf agentica-org/DeepScaleR-1.5B-Preview --to-orbax ckpt/

The Hugging Face export (config.json, safetensors, tokenizer files of the base
model) loads in transformers and vLLM. The import writes an orbax checkpoint at
step 0 holding the parameters and the model description (no optimizer state).
"""

from __future__ import annotations

import argparse
import sys

from e1jax.commands.common import add_mesh_arg
from e1jax.dtypes import DTYPES
from e1jax.errors import E1Error


def register(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="orbax training checkpoint <-> Hugging Face directory",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-orbax", metavar="DIR", help="checkpoint directory (checkpoint.dir of a run)")
    source.add_argument("--from-hf", metavar="DIR", help="Hugging Face model directory or Hub id")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-hf", metavar="DIR", help="write a Hugging Face model directory")
    target.add_argument("--to-orbax", metavar="DIR", help="write an orbax checkpoint directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step to export (default: the latest)")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="dtype written (default: the base model's dtype for --to-hf, float32 for --to-orbax)")
    parser.add_argument("--tokenizer-from", metavar="DIR", default=None,
                        help="where the tokenizer files and base config.json come from (default: the run's base model)")
    add_mesh_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from e1jax.checkpoints import hf_to_orbax, orbax_to_hf

    if args.from_orbax and not args.to_hf:
        raise E1Error("--from-orbax goes with --to-hf")
    if args.from_hf and not args.to_orbax:
        raise E1Error("--from-hf goes with --to-orbax")
    if args.step is not None and not args.from_orbax:
        raise E1Error("--step applies to --from-orbax only")
    if args.from_orbax:
        out, step = orbax_to_hf(args.from_orbax, args.to_hf, step=args.step, dtype=args.dtype,
                                tokenizer_from=args.tokenizer_from, mesh_spec=args.mesh)
        print(f"wrote {out} from checkpoint step {step}", file=sys.stderr)
    else:
        out = hf_to_orbax(args.from_hf, args.to_orbax, dtype=args.dtype or "float32", mesh_spec=args.mesh)
        print(f"wrote {out} (step 0)", file=sys.stderr)
    return 0
