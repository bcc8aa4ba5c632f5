"""The sampler's own copy of the weights: compute dtype, laid out for decoding.

Training keeps fp32 params sharded over fsdp; decoding from them would all-gather every
layer's weights at every token. `InferenceLayout` makes, once per rollout, a copy in the
compute dtype on an inference mesh over the same devices: rows split over all of them,
weights replicated, or split `tensor_parallel` ways over a tensor axis when a replica would
not fit (`choose_tensor_parallel`). One jitted reshard (cast + placement) makes the copy.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from e1jax.dtypes import ITEMSIZE
from e1jax.errors import E1Error
from e1jax.models.config import ModelConfig
from e1jax.models.params import Params, cast_params, decode_layout, param_shardings, split_layer_shardings, split_layers
from e1jax.sharding import MESH_AXES, mesh_description

# A replica of the weights may take at most this share of a chip's memory; the rest is left
# for the KV cache, the training state and the decode temporaries.
REPLICA_SHARE = 0.25


def weight_bytes(config: ModelConfig, dtype: str) -> int:
    return config.num_params() * ITEMSIZE[dtype]


def _splits(config: ModelConfig, ways: int) -> bool:
    """Every tensor-parallel dimension splits `ways` ways (kv heads may stay whole)."""
    return all(dim % ways == 0 for dim in (config.num_heads, config.intermediate_size, config.vocab_size))


def choose_tensor_parallel(config: ModelConfig, devices: int, hbm_bytes: int | None, requested: int = 0) -> int:
    """`requested` if set (checked), else the smallest power of two that divides the devices
    and the heads / mlp / vocab dimensions and keeps a weight shard within REPLICA_SHARE of
    `hbm_bytes` (1 when the chip's memory is unknown, e.g. on CPU)."""
    if requested:
        if devices % requested or not _splits(config, requested):
            raise E1Error(f"rollout.tensor_parallel={requested} must divide the {devices} devices and the model's "
                          f"heads ({config.num_heads}), mlp ({config.intermediate_size}) and vocab ({config.vocab_size})")
        return requested
    if not hbm_bytes:
        return 1
    size = weight_bytes(config, config.dtype)
    ways = 1
    while ways <= devices:
        if devices % ways == 0 and _splits(config, ways) and size / ways <= REPLICA_SHARE * hbm_bytes:
            return ways
        ways *= 2
    raise E1Error(f"the {size / 2**30:.1f} GiB {config.dtype} weights do not fit a decode shard on {devices} devices "
                  f"of {hbm_bytes / 2**30:.1f} GiB; set rollout.tensor_parallel")


def device_memory_bytes(device: Any) -> int | None:
    """A device's memory capacity where the runtime reports it (accelerators), else None."""
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - CPU and topology devices have no stats
        return None
    return stats.get("bytes_limit")


def inference_mesh(mesh: Mesh, tensor_parallel: int) -> Mesh:
    """A (data, fsdp=1, tensor) mesh over `mesh`'s devices in the same order."""
    devices = np.asarray(mesh.devices).reshape(-1)
    if devices.size % tensor_parallel:
        raise E1Error(f"tensor_parallel={tensor_parallel} does not divide the mesh {mesh_description(mesh)}")
    shape = (devices.size // tensor_parallel, 1, tensor_parallel)
    return Mesh(devices.reshape(shape), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


@dataclasses.dataclass(frozen=True)
class InferenceLayout:
    """How the sampler holds the weights: `config` (param dtype = compute dtype) on `mesh`, in
    the decode layout of `platform` (`decode_layout`); `__call__` makes the copy."""

    config: ModelConfig
    mesh: Mesh | None
    platform: str

    @property
    def tensor_parallel(self) -> int:
        return 1 if self.mesh is None else self.mesh.shape["tensor"]

    @property
    def splits_layers(self) -> bool:
        """The reshard itself unrolls the layers (accelerators); on CPU `decode_layout` does, with views."""
        return self.platform != "cpu"

    def shardings(self) -> Any:
        """The copy's shardings (None without a mesh)."""
        if self.mesh is None:
            return None
        stacked = param_shardings(self.config, self.mesh)
        return split_layer_shardings(stacked, self.config.num_layers) if self.splits_layers else stacked

    @property
    def reshard(self):
        """The jitted program: training params -> the copy (cast, and the layers split on accelerators)."""
        key = (self.config, self.mesh, self.platform)
        if key not in _RESHARDS:
            dtype, split = self.config.param_dtype, self.splits_layers

            def copy(params):
                params = cast_params(params, dtype)
                return split_layers(params) if split else params

            _RESHARDS[key] = jax.jit(copy, out_shardings=self.shardings())
        return _RESHARDS[key]

    def __call__(self, params: Params) -> Params:
        """The decode copy of training params, in the decode layout (one reshard program; on CPU
        then `decode_layout`'s views)."""
        return decode_layout(self.reshard(params), self.platform)


_RESHARDS: dict = {}


def inference_layout(config: ModelConfig, mesh: Mesh | None, *, hbm_bytes: int | None = None,
                     tensor_parallel: int = 0, platform: str | None = None) -> InferenceLayout:
    """The decode layout for training `config` on `mesh` (hbm_bytes: one chip's memory; default:
    what the first device reports; platform: the devices' platform)."""
    decode_config = config.replace(param_dtype=config.dtype)
    if platform is None:
        platform = np.asarray(mesh.devices).flat[0].platform if mesh is not None else jax.default_backend()
    if mesh is None:
        return InferenceLayout(decode_config, None, platform)
    if hbm_bytes is None:
        hbm_bytes = device_memory_bytes(np.asarray(mesh.devices).flat[0])
    ways = choose_tensor_parallel(decode_config, math.prod(mesh.shape.values()), hbm_bytes, tensor_parallel)
    return InferenceLayout(decode_config, inference_mesh(mesh, ways), platform)
