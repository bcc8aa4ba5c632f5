"""The update side of a GRPO step: the micro-batched log-prob pass, the jitted, sharded
optimizer step, and the one owner of how a step's batch is cut and its metrics reduced.

    batch = step_batch(programs, host_batch, state.params, ref_params)  # placed once, log-probs in
    state, metrics = step_update(programs, state, batch)  # every optimizer update of the step

`step_update` cuts the step's placed `TrainBatch` into consecutive mini-batches of
`programs.update_rows` rows (whole prompt groups, in order, no shuffling, as the original)
and runs one optimizer step (`make_update_fn`) on each. That step splits its mini-batch
into micro-batches (lax.scan); each micro-batch's loss is normalised by the whole
mini-batch's response-token count, so the summed gradient equals the gradient of one big
batch. Micro-batch i holds rows {i, i + n, i + 2n, ...} (n = number of micro-batches):
with the batch dimension sharded in contiguous blocks over the data axes, every device
then holds its share of every micro-batch and splitting moves no data.

How every metric combines, over the micro-batches inside the jitted step and over the
step's mini-batches on the host, is `METRIC_REDUCTION`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from e1jax.errors import E1Error
from e1jax.models.config import ModelConfig
from e1jax.models.params import param_shardings
from e1jax.models.scoring import next_token_logprobs
from e1jax.rl.batch import TrainBatch, map_axes, shard_batch
from e1jax.rl.config import GRPOConfig, OptimConfig
from e1jax.rl.grpo import grpo_loss
from e1jax.rl.metrics import to_float
from e1jax.sharding import activate, constrain


def make_schedule(cfg: OptimConfig) -> optax.Schedule:
    lr, warm = cfg.learning_rate, cfg.warmup_steps
    if cfg.schedule == "constant":
        if warm == 0:
            return optax.constant_schedule(lr)
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), optax.constant_schedule(lr)], [warm])
    decay_steps = max(cfg.total_steps - warm, 1)
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps)
    else:
        decay = optax.linear_schedule(lr, 0.0, decay_steps)
    if warm == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), decay], [warm])


def _cast_floats(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _in_dtype(inner: optax.GradientTransformation, dtype: Any) -> optax.GradientTransformation:
    """Run `inner` on `dtype` copies of grads and params, so its state (Adam moments)
    lives in `dtype` even when the params are bf16; updates come out in `dtype`."""

    def init(params):
        return inner.init(_cast_floats(params, dtype))

    def update(updates, state, params=None):
        params = None if params is None else _cast_floats(params, dtype)
        return inner.update(_cast_floats(updates, dtype), state, params)

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """clip_by_global_norm -> AdamW (decay on every parameter, as torch AdamW in the original).

    The learning rate sits in the state (optax.inject_hyperparams), readable with
    `current_learning_rate(opt_state)`."""
    inner = optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0 else optax.identity(),
        optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
        optax.add_decayed_weights(cfg.weight_decay) if cfg.weight_decay else optax.identity(),
        optax.inject_hyperparams(optax.scale_by_learning_rate)(learning_rate=make_schedule(cfg)),
    )
    return _in_dtype(inner, jnp.dtype(cfg.opt_state_dtype))


def current_learning_rate(opt_state: Any) -> jax.Array | None:
    """The learning rate of the last step taken (the first step's before any), or None."""
    # hyperparams_states also has a 'learning_rate' entry (the schedule's own state, a NamedTuple).
    return optax.tree_utils.tree_get(opt_state, "learning_rate", filtering=lambda _, v: not isinstance(v, tuple))


@flax.struct.dataclass
class TrainState:
    params: Any
    opt_state: Any
    step: jax.Array


def _key_id(key: Any) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return str(key)


def _match_param_shardings(abstract_state: Any, params: Any, param_sh: Any, default: Any) -> Any:
    """Shardings for an optimizer-state tree: a leaf whose path ends with a parameter's
    path (and has its shape) takes that parameter's sharding; anything else `default`."""
    by_path = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        by_path[tuple(_key_id(k) for k in path)] = leaf.shape
    sh_by_path = {
        tuple(_key_id(k) for k in path): sh for path, sh in jax.tree_util.tree_flatten_with_path(param_sh)[0]
    }

    def pick(path, leaf):
        ids = tuple(_key_id(k) for k in path)
        for start in range(len(ids)):
            suffix = ids[start:]
            if suffix in by_path and by_path[suffix] == leaf.shape:
                return sh_by_path[suffix]
        return default

    return jax.tree_util.tree_map_with_path(pick, abstract_state)


def train_state_shardings(config: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """TrainState of NamedShardings: params by `param_shardings`, Adam moments like their
    params, scalars (step, counts, learning rate) replicated."""
    from e1jax.models.params import abstract_params

    abstract = abstract_params(config)
    p_sh = param_shardings(config, mesh)
    rep = NamedSharding(mesh, PartitionSpec())
    opt_sh = _match_param_shardings(jax.eval_shape(optimizer.init, abstract), abstract, p_sh, rep)
    return TrainState(params=p_sh, opt_state=opt_sh, step=rep)


def init_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """TrainState at step 0. The optimizer state is placed like the params: moments
    take their parameter's sharding, scalars are replicated on the params' mesh."""
    leaves = jax.tree.leaves(params)
    sharding = getattr(leaves[0], "sharding", None) if leaves else None
    if not isinstance(sharding, NamedSharding):
        return TrainState(params=params, opt_state=jax.jit(optimizer.init)(params), step=jnp.zeros((), jnp.int32))
    rep = NamedSharding(sharding.mesh, PartitionSpec())
    p_sh = jax.tree.map(lambda x: x.sharding, params)
    opt_sh = _match_param_shardings(jax.eval_shape(optimizer.init, params), params, p_sh, rep)
    opt_state = jax.jit(optimizer.init, out_shardings=opt_sh)(params)
    return TrainState(params=params, opt_state=opt_state, step=jax.device_put(jnp.zeros((), jnp.int32), rep))


def _split(x: jax.Array, num_micro: int) -> jax.Array:
    """(B, ...) -> (num_micro, B // num_micro, ...) with micro-batch i = rows i::num_micro."""
    b = x.shape[0]
    y = x.reshape((b // num_micro, num_micro) + x.shape[1:]).swapaxes(0, 1)
    return constrain(y, (None, "batch") + (None,) * (x.ndim - 1))


def _merge(y: jax.Array) -> jax.Array:
    n, m = y.shape[:2]
    x = y.swapaxes(0, 1).reshape((n * m,) + y.shape[2:])
    return constrain(x, ("batch",) + (None,) * (x.ndim - 1))


def _num_micro(batch_size: int, micro_batch: int | None) -> int:
    if micro_batch is None or micro_batch >= batch_size:
        return 1
    if micro_batch < 1 or batch_size % micro_batch:
        raise E1Error(f"batch of {batch_size} rows does not split into micro-batches of {micro_batch}")
    return batch_size // micro_batch


@functools.lru_cache(maxsize=32)
def logprobs_fn(config: ModelConfig, num_micro: int, mesh: Mesh | None, with_entropy: bool,
                response_width: int | None) -> Callable:
    """The jitted log-prob pass fn(params, tokens, attention_mask, temperature) -> (B, width):
    `num_micro` strided micro-batches in a scan, each scored over its last `response_width`
    positions (all when None)."""
    def fn(params, tokens, attention_mask, temperature):
        with activate(mesh):
            def body(_, xs):
                t, m = xs
                t = constrain(t, ("batch", "length"))
                m = constrain(m, ("batch", "length"))
                out = next_token_logprobs(config, params, t, m, temperature, with_entropy=with_entropy,
                                          response_width=response_width)
                return None, out

            _, out = jax.lax.scan(body, None, (_split(tokens, num_micro), _split(attention_mask, num_micro)))
            return jax.tree.map(_merge, out)

    return jax.jit(fn)


def compute_logprobs(
    model_config: ModelConfig,
    params: Any,
    tokens: Any,
    attention_mask: Any,
    temperature: float = 1.0,
    micro_batch: int | None = None,
    *,
    mesh: Mesh | None = None,
    with_entropy: bool = False,
    response_width: int | None = None,
):
    """(B, W) fp32 log-probs of the last W = `response_width` tokens (default: tokens[:, 1:])
    under logits / temperature (and the entropies when `with_entropy`), computed
    `micro_batch` rows at a time in one jit. Used for old_logp (current params) and
    ref_logp (frozen initial params). Rows are padded up to a multiple of `micro_batch`
    and the padding dropped from the result."""
    tokens = jnp.asarray(tokens, jnp.int32)
    attention_mask = jnp.asarray(attention_mask, bool)
    b = tokens.shape[0]
    fn, rows = logprobs_program(model_config, b, micro_batch, mesh, with_entropy, response_width)
    pad = rows - b
    if pad:
        tokens = jnp.pad(tokens, ((0, pad), (0, 0)))
        attention_mask = jnp.pad(attention_mask, ((0, pad), (0, 0)))
    out = fn(params, tokens, attention_mask, jnp.float32(temperature))
    return jax.tree.map(lambda x: x[:b], out) if pad else out


def logprobs_program(model_config: ModelConfig, rows: int, micro_batch: int | None, mesh: Mesh | None,
                     with_entropy: bool = False, response_width: int | None = None) -> tuple[Callable, int]:
    """(the jitted log-prob pass for `rows` sequences, the rows it runs: `rows` padded to a
    multiple of the micro-batch)."""
    mb = rows if micro_batch is None else max(1, min(micro_batch, rows))
    padded = rows + (-rows) % mb
    return logprobs_fn(model_config, padded // mb, mesh, with_entropy, response_width), padded


# ----------------------------------------------------------------- metrics


@dataclasses.dataclass(frozen=True)
class Reduction:
    """How a metric combines: from `identity` by `combine` over the micro-batches of one
    mini-batch (inside the jitted step), then by `across` over the step's mini-batches
    (host floats)."""

    name: str
    identity: float
    combine: Callable[[jax.Array, jax.Array], jax.Array]
    across: Callable[[Sequence[float]], float]


# A token mean of the mini-batch: grpo_loss divides every micro-batch's masked sum by the
# whole mini-batch's token count, so the micro-batch values add up to it; a step reports
# the mean over its mini-batches (each mini-batch weighs the same).
MEAN = Reduction("mean", 0.0, jnp.add, lambda values: float(np.mean(values)))
MAX = Reduction("max", -math.inf, jnp.maximum, max)  # -inf: no token
MIN = Reduction("min", math.inf, jnp.minimum, min)  # +inf: no token

METRIC_REDUCTION: dict[str, Reduction] = {
    # grpo_loss's, accumulated over the micro-batches
    "loss": MEAN, "pg_loss": MEAN, "kl": MEAN, "entropy": MEAN, "approx_kl": MEAN,
    "clip_frac": MEAN, "clip_frac_high": MEAN, "clip_frac_low": MEAN, "ratio_mean": MEAN,
    "ratio_max": MAX, "ratio_min": MIN,
    # once per mini-batch, after its micro-batches
    "grad_norm": MEAN, "num_tokens": MEAN, "learning_rate": MEAN,
}


def metric_reduction(name: str) -> Reduction:
    if name not in METRIC_REDUCTION:
        raise KeyError(f"update metric '{name}' has no entry in e1jax.rl.update.METRIC_REDUCTION")
    return METRIC_REDUCTION[name]


def reduce_mini_batches(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The metrics of a step from those of its mini-batch updates (host values), by METRIC_REDUCTION."""
    out = {}
    for key in dict.fromkeys(k for row in rows for k in row):
        values = [to_float(row[key]) for row in rows if key in row]
        out[key] = metric_reduction(key).across(values)
    return out


# ------------------------------------------------------------ optimizer step


def make_update_fn(
    model_config: ModelConfig,
    grpo_cfg: GRPOConfig,
    optimizer: optax.GradientTransformation,
    *,
    micro_batch: int | None,
    mesh: Mesh | None = None,
) -> Callable[[TrainState, TrainBatch], tuple[TrainState, dict[str, jax.Array]]]:
    """update(state, batch) -> (state, metrics): one optimizer step on one mini-batch
    (a TrainBatch with old_logp, and ref_logp under KL; sampler_logp is not read).

    `micro_batch` is the number of rows (global, across all devices) per forward/backward
    pass; it must divide the batch. The state is donated. Under `mesh` the new state keeps
    `train_state_shardings(model_config, optimizer, mesh)`; pass a state placed that way
    (init_params(..., mesh=mesh) then init_train_state) and ideally a `shard_batch`ed batch.
    Metrics (scalars): loss, pg_loss, kl (with ref_logp), entropy, clip_frac(_low/_high),
    ratio_mean/min/max, approx_kl, grad_norm (before clipping), learning_rate, num_tokens.
    """

    def loss_fn(params, mb: TrainBatch, num_tokens):
        mb = map_axes(lambda _, axes, x: constrain(x, axes), mb)
        logp, entropy = next_token_logprobs(
            model_config, params, mb.tokens, mb.attention_mask, grpo_cfg.temperature, with_entropy=True,
            response_width=mb.response_width,
        )
        if not grpo_cfg.entropy_coef:
            entropy = jax.lax.stop_gradient(entropy)
        return grpo_loss(
            logp, mb.old_logp, mb.advantages, mb.loss_mask, grpo_cfg,
            ref_logp=mb.ref_logp, entropy=entropy, num_tokens=num_tokens, token_weight=mb.token_weight,
        )

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def update(state: TrainState, batch: TrainBatch):
        if grpo_cfg.kl_coef > 0 and batch.ref_logp is None:
            raise E1Error("kl_coef > 0 needs ref_logp (reference-policy log-probs) in the update batch")
        with activate(mesh):
            num_micro = _num_micro(batch.tokens.shape[0], micro_batch)
            num_tokens = jnp.sum(batch.loss_mask.astype(bool)).astype(jnp.float32)
            micro = jax.tree.map(lambda x: _split(x, num_micro), batch)
            first = jax.tree.map(lambda x: x[0], micro)
            _, metric_shapes = jax.eval_shape(loss_fn, state.params, first, num_tokens)
            metrics0 = {k: jnp.float32(metric_reduction(k).identity) for k in metric_shapes}
            grads0 = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
            if mesh is not None:
                p_sh = param_shardings(model_config, mesh)
                grads0 = jax.tree.map(jax.lax.with_sharding_constraint, grads0, p_sh)

            def body(carry, mb):
                acc, msum = carry
                (_, metrics), grads = grad_fn(state.params, mb, num_tokens)
                acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc, grads)
                msum = {k: metric_reduction(k).combine(msum[k], metrics[k]) for k in msum}
                return (acc, msum), None

            (grads, metrics), _ = jax.lax.scan(body, (grads0, metrics0), micro)
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            metrics = dict(metrics)
            metrics["grad_norm"] = optax.tree.norm(grads)
            metrics["num_tokens"] = num_tokens
            lr = current_learning_rate(opt_state)
            if lr is not None:
                metrics["learning_rate"] = jnp.asarray(lr, jnp.float32)
            return TrainState(params=params, opt_state=opt_state, step=state.step + 1), metrics

    if mesh is None:
        return jax.jit(update, donate_argnums=0)
    state_sh = train_state_shardings(model_config, optimizer, mesh)
    rep = NamedSharding(mesh, PartitionSpec())
    return jax.jit(update, donate_argnums=0, out_shardings=(state_sh, rep))


# ----------------------------------------------------------------- the step


def step_batch(programs: Any, host: TrainBatch, params: Any, ref_params: Any = None) -> TrainBatch:
    """The step's one TrainBatch: `host` (rollout.build_sequences') placed on programs.mesh once
    (`programs`: the run's e1jax.rl.programs.StepPrograms),
    with the behaviour log-probs under `params` and, when `ref_params` is given (KL), the
    reference log-probs, both from the micro-batched log-prob pass at the GRPO temperature."""
    batch = shard_batch(host, programs.mesh)

    def logprobs(p):
        return compute_logprobs(programs.model_config, p, batch.tokens, batch.attention_mask, programs.grpo.temperature,
                                programs.micro_batch, mesh=programs.mesh, response_width=batch.response_width)

    return batch.replace(old_logp=logprobs(params), ref_logp=None if ref_params is None else logprobs(ref_params))


@functools.lru_cache(maxsize=32)
def _mini_batch_fn(parts: int, mesh: Mesh | None) -> Callable:
    def split(batch: TrainBatch) -> list[TrainBatch]:
        rows = len(batch) // parts
        with activate(mesh):
            return [map_axes(lambda _, axes, x: constrain(x[i * rows:(i + 1) * rows], axes), batch)
                    for i in range(parts)]

    return jax.jit(split)


def mini_batches(batch: TrainBatch, rows: int, mesh: Mesh | None = None) -> list[TrainBatch]:
    """Consecutive `rows`-row mini-batches of a placed batch (whole prompt groups when `rows` is
    a multiple of the group size; no shuffling, as the original), each placed like the batch,
    without sampler_logp (the update does not read it)."""
    if rows < 1 or len(batch) % rows:
        raise E1Error(f"{len(batch)} samples do not split into mini-batches of {rows}")
    return _mini_batch_fn(len(batch) // rows, mesh)(batch.replace(sampler_logp=None))


def step_update(programs: Any, state: TrainState, batch: TrainBatch) -> tuple[TrainState, dict[str, float]]:
    """Every optimizer update of one step: `batch` (step_batch's) cut into mini-batches of
    programs.update_rows rows, one programs.update each, in order -> (state, the step's
    metrics reduced over its mini-batches by METRIC_REDUCTION)."""
    rows = []
    for part in mini_batches(batch, programs.update_rows, programs.mesh):
        state, metrics = programs.update(state, part)
        rows.append(metrics)
    return state, reduce_mini_batches(jax.device_get(rows))


@jax.jit
def _masked_abs_diff(a: jax.Array, b: jax.Array, mask: jax.Array) -> jax.Array:
    mask = mask.astype(bool) & jnp.isfinite(b)
    return jnp.sum(jnp.where(mask, jnp.abs(a - b), 0.0)) / jnp.maximum(jnp.sum(mask), 1.0)


def sampler_logp_diff(batch: TrainBatch) -> jax.Array:
    """Mean |trainer - sampler| log-prob over the trained tokens the sampler drew: ~0 when both sides agree."""
    return _masked_abs_diff(batch.old_logp, batch.sampler_logp, batch.loss_mask)
