"""Argument helpers shared by commands."""

from __future__ import annotations

import argparse

from e1jax.errors import E1Error


def add_model_args(parser: argparse.ArgumentParser, mesh: bool = True) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face model directory or Hub id")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="parameter and compute dtype (default: float32 on CPU, bfloat16 on accelerators)")
    if mesh:
        parser.add_argument("--mesh", default=None, help="device mesh over all devices, e.g. data=2,tensor=4 or fsdp=-1 (default: a single device)")


def default_dtype() -> str:
    import jax

    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def parse_ids(text: str, flag: str) -> list[int]:
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise E1Error(f"{flag} must be comma-separated integers, got '{text}'") from err
    if not ids:
        raise E1Error(f"{flag} is empty")
    return ids


def load_model_from_args(args: argparse.Namespace, mesh=None):
    """(config, params) for --model/--dtype."""
    from e1jax.models.hf import load_model

    dtype = args.dtype or default_dtype()
    return load_model(args.model, mesh=mesh, param_dtype=dtype, dtype=dtype)
