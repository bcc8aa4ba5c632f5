"""`e1jax convert`: training checkpoints (orbax) <-> Hugging Face model directories.

    python -m e1jax convert --from-orbax runs/x/checkpoints [--step N] --to-hf out/model
    python -m e1jax convert --from-hf agentica-org/DeepScaleR-1.5B-Preview --to-orbax ckpt/

The Hugging Face export (config.json, safetensors, tokenizer files of the base
model) loads in transformers and vLLM. The import writes an orbax checkpoint at
step 0 holding the parameters and the model description (no optimizer state).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from e1jax.errors import E1Error

DTYPE_CHOICES = ("float32", "bfloat16", "float16")


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
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                        help="dtype written (default: the base model's dtype for --to-hf, float32 for --to-orbax)")
    parser.add_argument("--tokenizer-from", metavar="DIR", default=None,
                        help="where the tokenizer files and base config.json come from (default: the run's base model)")
    parser.add_argument("--mesh", default=None, help="device mesh to hold the parameters (default: fsdp over all devices)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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


def _mesh(spec: str | None):
    from e1jax.sharding import make_mesh

    return make_mesh(spec or "fsdp=-1")


def _base_dir(meta: dict, tokenizer_from: str | None) -> Path:
    """The base model directory: --tokenizer-from, else the run's (possibly downloaded) base model."""
    from e1jax.models.hf import resolve_model_dir

    if tokenizer_from:
        return resolve_model_dir(tokenizer_from)
    local = Path(meta.get("base_model", ""))
    if meta.get("base_model") and local.is_dir():
        return local
    hub_id = (meta.get("config") or {}).get("model", {}).get("path")
    if hub_id:
        return resolve_model_dir(hub_id)
    raise E1Error(f"the base model {local} is gone; pass --tokenizer-from DIR")


def _hf_dtype(base_dir: Path, fallback: str) -> str:
    path = base_dir / "config.json"
    if path.is_file():
        hf = json.loads(path.read_text())
        name = hf.get("dtype") or hf.get("torch_dtype")
        if name in DTYPE_CHOICES:
            return name
    return fallback


def orbax_to_hf(src: str | Path, dst: str | Path, *, step: int | None = None, dtype: str | None = None,
                tokenizer_from: str | None = None, mesh_spec: str | None = None) -> tuple[Path, int]:
    import jax

    from e1jax.models.hf import save_hf
    from e1jax.models.params import abstract_params, param_shardings
    from e1jax.rl.checkpoint import CheckpointStore, model_config_from_meta

    with CheckpointStore(src, read_only=True) as store:
        step = store.resolve_step(step)
        meta = store.restore_meta(step)
        config = model_config_from_meta(meta)
        mesh = _mesh(mesh_spec)
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                abstract_params(config), param_shardings(config, mesh))
        params = store.restore(step, params=abstract)["params"]
    base = _base_dir(meta, tokenizer_from)
    out = save_hf(params, config, dst, tokenizer_dir=base, dtype=dtype or _hf_dtype(base, config.param_dtype))
    return out, step


def hf_to_orbax(src: str | Path, dst: str | Path, *, dtype: str = "float32", mesh_spec: str | None = None) -> Path:
    from e1jax.models.hf import load_model, resolve_model_dir
    from e1jax.rl.checkpoint import CheckpointStore, model_meta

    model_dir = resolve_model_dir(src)
    dst = Path(dst)
    if dst.is_dir() and any(dst.iterdir()):
        raise E1Error(f"{dst} is not empty")
    config, params = load_model(model_dir, mesh=_mesh(mesh_spec), param_dtype=dtype, dtype=dtype)
    meta = {**model_meta(config, model_dir.absolute()), "config": {"model": {"path": str(src)}}}
    with CheckpointStore(dst, keep=None, async_save=False) as store:
        store.save(0, params=params, meta=meta)
    return dst
