"""Where a run starts: fresh from the model, or from the latest complete checkpoint."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from e1jax.errors import E1Error
from e1jax.rl.config import TrainConfig


def abstract_state(model_config: Any, optimizer: Any, mesh: Any):
    """Abstract (params, opt_state, step sharding) with shapes, dtypes and shardings, to restore into."""
    import jax

    from e1jax.models.params import abstract_params
    from e1jax.rl.update import train_state_shardings

    params = abstract_params(model_config)
    shardings = train_state_shardings(model_config, optimizer, mesh)
    opt_state = jax.eval_shape(optimizer.init, params)

    def with_sharding(x, s):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

    return (jax.tree.map(with_sharding, params, shardings.params),
            jax.tree.map(with_sharding, opt_state, shardings.opt_state),
            shardings.step)


@functools.cache
def _copy_fn():
    import jax
    import jax.numpy as jnp

    return jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


def initial_state(cfg: TrainConfig, *, model_dir: Path, model_config: Any, mesh: Any, optimizer: Any,
                  store: Any, iterator: Any) -> tuple[Any, Any, int]:
    """(train state, reference params or None, step): fresh from the model, or the latest complete
    checkpoint in `store` (which also restores the data `iterator`)."""
    import jax
    import jax.numpy as jnp

    from e1jax.models.hf import load_params
    from e1jax.rl.update import TrainState, init_train_state

    use_kl = cfg.grpo.kl_coef > 0
    resume_step = store.latest_step()
    if resume_step is not None and not cfg.checkpoint.resume:
        raise E1Error(f"{store.directory} already holds checkpoints (latest step {resume_step}) and "
                      "checkpoint.resume is false: use another checkpoint.dir or resume")
    if resume_step is None:
        params = load_params(model_dir, model_config, mesh)
        ref_params = _copy_fn()(params) if use_kl else None  # the update donates `params`
        return init_train_state(params, optimizer), ref_params, 0
    params, opt_state, step_sharding = abstract_state(model_config, optimizer, mesh)
    restored = store.restore(resume_step, params=params, opt_state={
        "opt_state": opt_state, "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=step_sharding)})
    meta = restored["meta"]
    if meta.get("run_seed") != cfg.run.seed:
        raise E1Error(f"checkpoint {store.directory}/{resume_step} was made with run.seed={meta.get('run_seed')}, "
                      f"not {cfg.run.seed}; use the same seed or a new checkpoint.dir")
    iterator.set_state(meta["data"])
    state = TrainState(params=restored["params"], opt_state=restored["opt_state"]["opt_state"],
                       step=restored["opt_state"]["step"])
    ref_params = load_params(model_dir, model_config, mesh) if use_kl else None
    return state, ref_params, resume_step
