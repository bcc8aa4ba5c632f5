"""Training checkpoints (orbax) <-> Hugging Face model directories.

The Hugging Face export (config.json, safetensors, tokenizer files of the base
model) loads in transformers and vLLM. The import writes an orbax checkpoint at
step 0 holding the parameters and the model description (no optimizer state).
"""

from __future__ import annotations

import json
from pathlib import Path

from e1jax.checkpoints.store import CheckpointStore, model_config_from_meta, model_meta
from e1jax.dtypes import DTYPES
from e1jax.errors import E1Error


def _mesh(spec: str | None):
    from e1jax.sharding import make_mesh

    return make_mesh(spec)  # None: the default mesh


def _base_dir(meta: dict, tokenizer_from: str | None) -> Path:
    """The base model directory: `tokenizer_from`, else the run's (possibly downloaded) base model."""
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
        if name in DTYPES:
            return name
    return fallback


def orbax_to_hf(src: str | Path, dst: str | Path, *, step: int | None = None, dtype: str | None = None,
                tokenizer_from: str | None = None, mesh_spec: str | None = None) -> tuple[Path, int]:
    """Export checkpoint `step` (default: the latest) of `src` as a Hugging Face directory `dst`;
    returns (dst, step). `dtype` defaults to the base model's."""
    import jax

    from e1jax.models.hf import save_hf
    from e1jax.models.params import abstract_params, param_shardings

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
    """Import a Hugging Face directory or Hub id `src` as step 0 of a new checkpoint directory `dst`."""
    from e1jax.models.hf import load_model, resolve_model_dir

    model_dir = resolve_model_dir(src)
    dst = Path(dst)
    if dst.is_dir() and any(dst.iterdir()):
        raise E1Error(f"{dst} is not empty")
    config, params = load_model(model_dir, mesh=_mesh(mesh_spec), param_dtype=dtype, dtype=dtype)
    meta = {**model_meta(config, model_dir.absolute()), "config": {"model": {"path": str(src)}}}
    with CheckpointStore(dst, keep=None, async_save=False) as store:
        store.save(0, params=params, meta=meta)
    return dst
