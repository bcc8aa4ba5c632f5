"""Device mesh (data, fsdp, tensor) and the one table mapping logical axes onto it.

Logical names used across e1jax:
  batch, length, embed, vocab, heads, kv_heads, head_dim, mlp, layers, cache_length.
A mesh axis that does not divide the dimension it is mapped to is an error naming the
tensor, the dimension and the mesh, except for the replications listed in
`REPLICATED_WHEN_INDIVISIBLE` (said once in the log).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from e1jax.errors import E1Error
from e1jax.mesh_spec import DEFAULT_MESH, MESH_AXES, parse_mesh_spec  # noqa: F401  (re-exported)


LOGICAL_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "length": (),
    "cache_length": (),
    "embed": ("fsdp",),
    "vocab": ("tensor",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "layers": (),
}


# Logical axes that are replicated on purpose when their mesh axes do not divide them:
# grouped-query models have fewer kv heads than a tensor axis may have devices (Qwen2-1.5B:
# 2 kv heads on tensor=4), and then every tensor shard keeps all kv heads.
REPLICATED_WHEN_INDIVISIBLE = ("kv_heads",)

_log = logging.getLogger("e1jax.sharding")
_said: set[tuple] = set()


def mesh_description(mesh: Mesh) -> str:
    return ",".join(f"{name}={size}" for name, size in mesh.shape.items())


def make_mesh(spec: str | dict[str, int] | None = DEFAULT_MESH, devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh over all (or the given) devices with Auto axis types (GSPMD propagation); None means
    DEFAULT_MESH, an empty spec puts every device along data."""
    devices = list(devices) if devices is not None else jax.devices()
    spec = DEFAULT_MESH if spec is None else spec
    sizes = parse_mesh_spec(spec)
    free = [n for n, s in sizes.items() if s == -1]
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if len(free) > 1:
        raise E1Error("at most one mesh axis may be -1")
    if free:
        if len(devices) % fixed:
            raise E1Error(f"mesh {sizes} does not divide {len(devices)} devices")
        sizes[free[0]] = len(devices) // fixed
    if not spec:
        sizes["data"] = len(devices)
    total = math.prod(sizes.values())
    if total != len(devices):
        raise E1Error(f"mesh {sizes} needs {total} devices but {len(devices)} are available")
    shape = tuple(sizes[n] for n in MESH_AXES)
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    name: str = "array") -> PartitionSpec:
    """PartitionSpec for the array `name` of `shape` whose dimensions carry `logical_axes`.

    A mesh axis already used by an earlier dimension is skipped (activations shard their
    batch over fsdp, their embed dimension then stays whole)."""
    used: set[str] = set()
    entries = []
    for index, (logical, dim) in enumerate(zip(logical_axes, shape)):
        axes = []
        size = 1
        for mesh_axis in LOGICAL_RULES.get(logical, ()) if logical else ():
            n = mesh.shape[mesh_axis]
            if n == 1 or mesh_axis in used:
                continue
            if dim % (size * n):
                _indivisible(name, index, logical, dim, mesh, mesh_axis, size * n)
                continue
            axes.append(mesh_axis)
            size *= n
        used.update(axes)
        entries.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
    return PartitionSpec(*entries)


def _indivisible(name: str, index: int, logical: str, dim: int, mesh: Mesh, mesh_axis: str, ways: int) -> None:
    where = (f"{name} dimension {index} ({logical} = {dim}) does not split {ways} ways over mesh axis "
             f"'{mesh_axis}' (mesh {mesh_description(mesh)})")
    if logical not in REPLICATED_WHEN_INDIVISIBLE:
        raise E1Error(f"{where}: choose a mesh (or batch size) whose axes divide it")
    key = (logical, dim, mesh_axis, ways)
    if key not in _said:
        _said.add(key)
        _log.warning("%s: replicated along '%s' on purpose", where, mesh_axis)


def named_sharding(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                   name: str = "array") -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh, name))


def _is_axes(x: Any) -> bool:
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def tree_shardings(logical_tree: Any, abstract_tree: Any, mesh: Mesh) -> Any:
    """Shardings for a pytree given a matching tree of logical-axis tuples and shapes."""
    return jax.tree_util.tree_map_with_path(
        lambda path, axes, x: named_sharding(axes, x.shape, mesh, jax.tree_util.keystr(path, simple=True, separator="/")),
        logical_tree,
        abstract_tree,
        is_leaf=_is_axes,
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


_ACTIVE_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("e1jax_mesh", default=None)


@contextlib.contextmanager
def activate(mesh: Mesh | None) -> Iterator[None]:
    """Make `constrain` place activations on `mesh` while tracing inside this block."""
    token = _ACTIVE_MESH.set(mesh)
    try:
        yield
    finally:
        _ACTIVE_MESH.reset(token)


def active_mesh() -> Mesh | None:
    return _ACTIVE_MESH.get()


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical axes; a no-op outside `activate(mesh)`."""
    mesh = _ACTIVE_MESH.get()
    if mesh is None or mesh.size == 1:
        return x
    name = f"activation ({', '.join(a or '-' for a in logical_axes)})"
    return jax.lax.with_sharding_constraint(x, named_sharding(logical_axes, x.shape, mesh, name))


def to_host(x: Any) -> np.ndarray:
    """A (possibly multi-host, sharded) array as one numpy array on this host."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def from_host(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from the same host value on every process (only local shards are copied)."""
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
