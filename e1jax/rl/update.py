"""The jitted, sharded GRPO optimizer step and the micro-batched log-prob pass.

One call of the function from `make_update_fn` is one optimizer step on one
mini-batch. The mini-batch is split into micro-batches (lax.scan); each
micro-batch's loss is normalised by the whole mini-batch's response-token count,
so the summed gradient equals the gradient of one big batch.

Micro-batch i holds rows {i, i + n, i + 2n, ...} (n = number of micro-batches):
with the batch dimension sharded in contiguous blocks over the data axes, every
device then holds its share of every micro-batch and splitting moves no data.
"""

from __future__ import annotations

import dataclasses
import functools
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
from e1jax.rl.grpo import MAX_METRICS, MIN_METRICS, GRPOConfig, grpo_loss
from e1jax.sharding import activate, constrain, named_sharding

SCHEDULES = ("constant", "cosine", "linear")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-6
    schedule: str = "constant"  # constant | cosine | linear (after warmup; cosine/linear decay to 0 at total_steps)
    warmup_steps: int = 0
    total_steps: int = 200
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0  # global-norm clip; <= 0 disables
    opt_state_dtype: str = "float32"  # Adam moments, whatever the params' dtype

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise E1Error(f"schedule '{self.schedule}' is not one of {', '.join(SCHEDULES)}")
        if self.opt_state_dtype not in ("float32", "bfloat16"):
            raise E1Error(f"opt_state_dtype '{self.opt_state_dtype}' is not one of float32, bfloat16")
        if self.warmup_steps < 0 or self.total_steps < 1:
            raise E1Error(f"warmup_steps must be >= 0 and total_steps >= 1, got {self.warmup_steps}/{self.total_steps}")


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


@flax.struct.dataclass
class UpdateBatch:
    """Sequences [left-padded prompt (P) | right-padded response (L)] and, in response
    coordinates (entry j scores token P + j), the loss mask and the behaviour / reference
    log-probs. Only the L response positions go through the head."""

    tokens: jax.Array  # (B, P + L) int32
    attention_mask: jax.Array  # (B, P + L) bool
    loss_mask: jax.Array  # (B, L) bool/float
    advantages: jax.Array  # (B,) f32
    old_logp: jax.Array  # (B, L) f32
    ref_logp: jax.Array | None = None  # (B, L) f32; None without KL

    @property
    def response_width(self) -> int:
        return self.loss_mask.shape[1]


BATCH_LOGICAL_AXES = UpdateBatch(
    tokens=("batch", "length"),
    attention_mask=("batch", "length"),
    loss_mask=("batch", "length"),
    advantages=("batch",),
    old_logp=("batch", "length"),
    ref_logp=("batch", "length"),
)


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


def shard_batch(batch: UpdateBatch, mesh: Mesh | None) -> UpdateBatch:
    """Put a host batch on `mesh`, batch dimension over the data axes (same global
    value on every process)."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, batch)

    def put(name, axes, x):
        if x is None:
            return None
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        return jax.device_put(x, named_sharding(axes, x.shape, mesh, f"update batch {name}"))

    return UpdateBatch(**{f.name: put(f.name, getattr(BATCH_LOGICAL_AXES, f.name), getattr(batch, f.name))
                          for f in dataclasses.fields(UpdateBatch)})


def _map_axes(fn: Callable, batch: UpdateBatch) -> UpdateBatch:
    """fn(logical_axes, field) over the batch's fields (None fields stay None)."""
    return UpdateBatch(**{f.name: fn(getattr(BATCH_LOGICAL_AXES, f.name), getattr(batch, f.name))
                          for f in dataclasses.fields(UpdateBatch)})


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


def _combine(name: str, acc: jax.Array, new: jax.Array) -> jax.Array:
    if name in MAX_METRICS:
        return jnp.maximum(acc, new)
    if name in MIN_METRICS:
        return jnp.minimum(acc, new)
    return acc + new


def _metric_init(name: str) -> jax.Array:
    if name in MAX_METRICS:
        return jnp.float32(-jnp.inf)
    if name in MIN_METRICS:
        return jnp.float32(jnp.inf)
    return jnp.float32(0.0)


def make_update_fn(
    model_config: ModelConfig,
    grpo_cfg: GRPOConfig,
    optimizer: optax.GradientTransformation,
    *,
    micro_batch: int | None,
    mesh: Mesh | None = None,
) -> Callable[[TrainState, UpdateBatch], tuple[TrainState, dict[str, jax.Array]]]:
    """update(state, batch) -> (state, metrics): one optimizer step on one mini-batch.

    `micro_batch` is the number of rows (global, across all devices) per forward/backward
    pass; it must divide the batch. The state is donated. Under `mesh` the new state keeps
    `train_state_shardings(model_config, optimizer, mesh)`; pass a state placed that way
    (init_params(..., mesh=mesh) then init_train_state) and ideally a `shard_batch`ed batch.
    Metrics (scalars): loss, pg_loss, kl (with ref_logp), entropy, clip_frac(_low/_high),
    ratio_mean/min/max, approx_kl, grad_norm (before clipping), learning_rate, num_tokens.
    """

    def loss_fn(params, mb: UpdateBatch, num_tokens):
        mb = _map_axes(lambda axes, x: None if x is None else constrain(x, axes), mb)
        logp, entropy = next_token_logprobs(
            model_config, params, mb.tokens, mb.attention_mask, grpo_cfg.temperature, with_entropy=True,
            response_width=mb.response_width,
        )
        if not grpo_cfg.entropy_coef:
            entropy = jax.lax.stop_gradient(entropy)
        return grpo_loss(
            logp, mb.old_logp, mb.advantages, mb.loss_mask, grpo_cfg,
            ref_logp=mb.ref_logp, entropy=entropy, num_tokens=num_tokens,
        )

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def update(state: TrainState, batch: UpdateBatch):
        if grpo_cfg.kl_coef > 0 and batch.ref_logp is None:
            raise E1Error("kl_coef > 0 needs ref_logp (reference-policy log-probs) in the update batch")
        with activate(mesh):
            num_micro = _num_micro(batch.tokens.shape[0], micro_batch)
            num_tokens = jnp.sum(batch.loss_mask.astype(bool)).astype(jnp.float32)
            micro = jax.tree.map(lambda x: _split(x, num_micro), batch)
            first = jax.tree.map(lambda x: x[0], micro)
            _, metric_shapes = jax.eval_shape(loss_fn, state.params, first, num_tokens)
            metrics0 = {k: _metric_init(k) for k in metric_shapes}
            grads0 = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
            if mesh is not None:
                p_sh = param_shardings(model_config, mesh)
                grads0 = jax.tree.map(jax.lax.with_sharding_constraint, grads0, p_sh)

            def body(carry, mb):
                acc, msum = carry
                (_, metrics), grads = grad_fn(state.params, mb, num_tokens)
                acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc, grads)
                msum = {k: _combine(k, msum[k], metrics[k]) for k in msum}
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
