"""Parameter pytrees: random init, abstract shapes and logical axes, placement on a mesh."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from e1jax.models.config import ModelConfig
from e1jax.models.qwen import Qwen
from e1jax.sharding import tree_shardings

Params = dict[str, Any]


def _boxed_abstract(config: ModelConfig) -> Any:
    model = Qwen(config)
    tokens = jnp.zeros((1, 1), jnp.int32)
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
        return nn.unbox(model.init(key, tokens, tokens, tokens.astype(bool))["params"])

    if mesh is None:
        return jax.jit(init)(rng)
    return jax.jit(init, out_shardings=param_shardings(config, mesh))(rng)


def count_params(params: Params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))


def cast_params(params: Params, dtype: Any) -> Params:
    return jax.tree.map(lambda x: x.astype(dtype), params)
