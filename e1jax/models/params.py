"""Parameter pytrees: random init, abstract shapes and logical axes, placement on a mesh."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from e1jax.errors import E1Error
from e1jax.models.config import ModelConfig
from e1jax.models.qwen import KERNEL_INPUT_DIMS, Qwen, is_unrolled
from e1jax.sharding import activate, tree_shardings

Params = dict[str, Any]


def _boxed_abstract(config: ModelConfig) -> Any:
    model = Qwen(config)
    tokens = jnp.zeros((1, 1), jnp.int32)
    with activate(None):  # a one-token trace: its activations are placed nowhere
        return jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens, tokens.astype(bool)))["params"]


def logical_axes(config: ModelConfig) -> Any:
    """Tree of logical-axis tuples matching the params tree."""
    specs = nn.get_partition_spec(_boxed_abstract(config))
    return jax.tree.map(lambda s: tuple(s), specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def abstract_params(config: ModelConfig) -> Any:
    """ShapeDtypeStructs of the params (no memory)."""
    return nn.unbox(_boxed_abstract(config))


def param_shardings(config: ModelConfig, mesh: Mesh) -> Any:
    return tree_shardings(logical_axes(config), abstract_params(config), mesh)


def init_params(config: ModelConfig, rng: jax.Array | int = 0, mesh: Mesh | None = None) -> Params:
    """Random params (normal 0.02, norms 1, biases 0), created directly in their sharded placement."""
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    model = Qwen(config)

    def init(key):
        tokens = jnp.zeros((1, 1), jnp.int32)
        with activate(None):
            return nn.unbox(model.init(key, tokens, tokens, tokens.astype(bool))["params"])

    if mesh is None:
        return jax.jit(init)(rng)
    return jax.jit(init, out_shardings=param_shardings(config, mesh))(rng)


def count_params(params: Params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))


def cast_params(params: Params, dtype: Any) -> Params:
    return jax.tree.map(lambda x: x.astype(dtype), params)


def _layer_views(stacked: jax.Array) -> list[jax.Array]:
    """Each layer of a stacked array on CPU devices as its own array sharing the memory (no copy)."""
    sharding = stacked.sharding
    if isinstance(sharding, NamedSharding):
        spec = tuple(sharding.spec)
        if spec and spec[0] is not None:
            raise E1Error(f"the layers dimension is sharded ({spec[0]}); it cannot be unstacked in place")
        sharding = NamedSharding(sharding.mesh, PartitionSpec(*spec[1:]))
    shards = [(shard.device, np.asarray(shard.data)) for shard in stacked.addressable_shards]
    return [
        jax.make_array_from_single_device_arrays(stacked.shape[1:], sharding, [jax.device_put(host[i], device) for device, host in shards])
        for i in range(stacked.shape[0])
    ]


def _transpose_kernel(x: jax.Array, input_dims: int, lead: int) -> jax.Array:
    """A copy of kernel `x` (lead..., in..., out...) as (lead..., out..., in...), sharded alike."""
    dims = list(range(x.ndim))
    perm = dims[:lead] + dims[lead + input_dims :] + dims[lead : lead + input_dims]
    sharding = x.sharding
    if isinstance(sharding, NamedSharding):
        spec = tuple(sharding.spec) + (None,) * (x.ndim - len(sharding.spec))
        sharding = NamedSharding(sharding.mesh, PartitionSpec(*(spec[i] for i in perm)))
    return _transposer(tuple(perm), sharding)(x)


@functools.lru_cache(maxsize=None)
def _transposer(perm: tuple[int, ...], sharding: Any):
    return jax.jit(functools.partial(jnp.transpose, axes=perm), out_shardings=sharding)


def _transpose_layer_kernels(layers: Any) -> Any:
    def leaf(path, x):
        input_dims = KERNEL_INPUT_DIMS.get(path[-1].key)
        return x if input_dims is None else _transpose_kernel(x, input_dims, 1)

    return jax.tree_util.tree_map_with_path(leaf, layers)


def unstack_layers(params: Params) -> Params:
    """Stacked CPU params in the CPU decode layout of Qwen(unrolled=True, out_in=True): every layer
    its own subtree `layer_i` and the projection kernels transposed to (out, in). The kernels are
    copied once (transposed); per-layer arrays are views of the copies, norms and embeddings shared
    with `params`."""
    if is_unrolled(params):
        return params
    out = {name: value for name, value in params.items() if name != "layers"}
    if "lm_head" in out:
        out["lm_head"] = _transpose_kernel(out["lm_head"], KERNEL_INPUT_DIMS["lm_head"], 0)
    leaves, treedef = jax.tree.flatten(_transpose_layer_kernels(params["layers"]))
    per_leaf = [_layer_views(leaf) for leaf in leaves]
    for i in range(len(per_leaf[0])):
        out[f"layer_{i}"] = jax.tree.unflatten(treedef, [views[i] for views in per_leaf])
    return out


def split_layers(params: Params) -> Params:
    """Stacked params as one subtree per layer (`layer_i`), kernels as they are: the layout of
    Qwen(unrolled=True). Traceable (a copy of the layer weights when run)."""
    if is_unrolled(params):
        return params
    out = {name: value for name, value in params.items() if name != "layers"}
    layers = params["layers"]
    for i in range(jax.tree.leaves(layers)[0].shape[0]):
        out[f"layer_{i}"] = jax.tree.map(lambda x, i=i: x[i], layers)
    return out


def split_layer_shardings(stacked: Any, num_layers: int) -> Any:
    """The shardings of `split_layers`' output, from the stacked params' shardings."""
    def drop_layers(sharding):
        spec = tuple(sharding.spec)
        if spec and spec[0] is not None:
            raise E1Error(f"the layers dimension is sharded ({spec[0]}); it cannot be split")
        return NamedSharding(sharding.mesh, PartitionSpec(*spec[1:]))

    out = {name: value for name, value in stacked.items() if name != "layers"}
    layer = jax.tree.map(drop_layers, stacked["layers"])
    out.update({f"layer_{i}": layer for i in range(num_layers)})
    return out


def decode_layout(params: Params, platform: str | None = None) -> Params:
    """Params in the layout the decode loop reads fastest on `platform` (default: this backend),
    with the layers unrolled: the decode step then reads each layer's weights and KV cache as
    arrays of their own (indexing stacked arrays with the layer of a scan makes XLA copy the
    layer's weights on CPU, its KV cache on TPU, at every step). On CPU the kernels are also
    transposed to (out, in) (for up to 64 rows kernel (out, in) @ x^T runs faster than
    x @ kernel (in, out)), and the per-layer arrays are views of one copy. Elsewhere one jitted
    copy into per-layer arrays. Callers that decode repeatedly with the same params convert once."""
    if is_unrolled(params):
        return params
    if (platform or jax.default_backend()) == "cpu":
        return unstack_layers(params)
    return jax.jit(split_layers)(params)
