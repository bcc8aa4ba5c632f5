"""Training checkpoints with orbax: params, optimizer state and a JSON record per step.

Layout of a checkpoint directory (one orbax CheckpointManager root):

    <dir>/<step>/params      the model parameters (pytree of arrays)
    <dir>/<step>/opt_state   the optimizer state (absent in an imported HF checkpoint)
    <dir>/<step>/meta        JSON: step, run seed, data-iterator state, model config, base model

A save is written to `<step>.orbax-checkpoint-tmp` and renamed when complete, so
a run killed at any moment (also during an asynchronous save) leaves only
complete checkpoints under their step names; `latest_step` never sees a
partial one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from e1jax.errors import E1Error

META_VERSION = 1
ITEMS = ("params", "opt_state", "meta")


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of arrays, to restore into the same layout."""
    import jax

    def one(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(one, tree)


class CheckpointStore:
    """Save/restore training checkpoints under one directory; keeps the last `keep`."""

    def __init__(self, directory: str | Path, *, keep: int | None = 3, async_save: bool = True,
                 read_only: bool = False):
        ocp = _ocp()
        self.directory = Path(directory).absolute()
        if read_only and not self.directory.is_dir():
            raise E1Error(f"checkpoint directory not found: {self.directory}")
        policy = ocp.checkpoint_managers.LatestN(keep) if keep else None
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save,
            preservation_policy=policy,
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            read_only=read_only,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    # ------------------------------------------------------------------ queries

    def all_steps(self) -> list[int]:
        return sorted(int(s) for s in self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def resolve_step(self, step: int | None) -> int:
        steps = self.all_steps()
        if not steps:
            raise E1Error(f"no complete checkpoint in {self.directory}")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise E1Error(f"no checkpoint for step {step} in {self.directory} (steps: {', '.join(map(str, steps))})")
        return step

    # ------------------------------------------------------------- save/restore

    def save(self, step: int, *, params: Any, meta: dict[str, Any], opt_state: Any = None) -> None:
        """Start saving (asynchronously when configured); returns once arrays are copied off."""
        ocp = _ocp()
        items = {"params": ocp.args.StandardSave(params),
                 "meta": ocp.args.JsonSave({"version": META_VERSION, "step": int(step), **meta})}
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)

    def restore_meta(self, step: int | None = None) -> dict[str, Any]:
        ocp = _ocp()
        step = self.resolve_step(step)
        meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if meta.get("version") != META_VERSION:
            raise E1Error(f"checkpoint {self.directory}/{step} has meta version {meta.get('version')}, "
                          f"expected {META_VERSION}")
        return meta

    def restore(self, step: int | None = None, *, params: Any, opt_state: Any = None) -> dict[str, Any]:
        """Restore into the shapes/shardings of the given abstract trees (see `abstract_like`).

        Returns {"params", "meta"} and "opt_state" when an abstract `opt_state` is given.
        """
        ocp = _ocp()
        step = self.resolve_step(step)
        items = {"params": ocp.args.StandardRestore(params), "meta": ocp.args.JsonRestore()}
        if opt_state is not None:
            if not (self.directory / str(step) / "opt_state").is_dir():
                raise E1Error(f"checkpoint {self.directory}/{step} holds no optimizer state "
                              "(imported from Hugging Face?)")
            items["opt_state"] = ocp.args.StandardRestore(opt_state)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError) as err:
            raise E1Error(f"checkpoint {self.directory}/{step} does not fit the model/optimizer: "
                          f"{str(err).splitlines()[0]}") from err
        return {name: restored[name] for name in items}

    def wait(self) -> None:
        """Block until pending asynchronous saves are complete."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def model_meta(model_config: Any, base_model: str | Path) -> dict[str, Any]:
    """The part of `meta` that lets `orbax_to_hf` rebuild the model without the training config."""
    fields = {f.name: getattr(model_config, f.name) for f in dataclasses.fields(model_config) if f.name != "attention"}
    return {"model_config": fields, "base_model": str(base_model)}


def model_config_from_meta(meta: dict[str, Any]):
    from e1jax.models.config import ModelConfig

    if "model_config" not in meta:
        raise E1Error("checkpoint meta holds no model_config")
    return ModelConfig(**meta["model_config"])
