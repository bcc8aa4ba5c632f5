"""Cloud TPU slices by accelerator type (as gcloud and tpu_scripts/ spell them), their chips,
and their devices for ahead-of-time compilation on a host without TPUs (libtpu's compiler,
`jax.experimental.topologies`)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from typing import Any

from e1jax.errors import E1Error


@dataclasses.dataclass(frozen=True)
class Chip:
    """Public per-chip figures (Google's Cloud TPU documentation)."""

    name: str
    hbm_bytes: int
    peak_flops: float  # bf16
    hbm_bytes_per_s: float
    cores_per_chip: int  # TensorCores counted by the accelerator type's number


CHIPS = {
    "v4": Chip("TPU v4", 32 * 2**30, 275e12, 1.2e12, 2),
    "v5litepod": Chip("TPU v5e", 16 * 10**9, 197e12, 819e9, 1),
    "v5p": Chip("TPU v5p", 95 * 10**9, 459e12, 2.765e12, 2),
    "v6e": Chip("TPU v6e", 32 * 10**9, 918e12, 1.64e12, 1),
}
ALIASES = {"v5e": "v5litepod"}
# chips -> topology: 3-D tori (v4, v5p) and 2-D tori (v5e, v6e)
TORUS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
            512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16", 6144: "16x16x24"}
TORUS_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
TOPOLOGY_PREFIX = {"v4": "v4", "v5litepod": "v5e", "v5p": "v5p", "v6e": "v6e"}


@dataclasses.dataclass(frozen=True)
class Slice:
    accelerator_type: str  # e.g. v4-32
    family: str  # v4 | v5litepod | v5p | v6e
    chips: int

    @property
    def chip(self) -> Chip:
        return CHIPS[self.family]

    @property
    def topology_name(self) -> str:
        shape = (TORUS_3D if self.family in ("v4", "v5p") else TORUS_2D)[self.chips]
        return f"{TOPOLOGY_PREFIX[self.family]}:{shape}"

    def topology_kwargs(self) -> dict[str, Any]:
        if self.family == "v4":
            return {"chip_config_name": "megacore"}  # one device per chip, as on a v4 VM
        if self.chips == 1:
            return {"chips_per_host_bounds": (1, 1, 1)}
        return {}


def parse_accelerator_type(name: str) -> Slice:
    """'v4-32' -> 16 v4 chips; 'v5litepod-32' (or v5e-32) -> 32 chips; 'v5p-128' -> 64 chips; 'v6e-8' -> 8."""
    match = re.fullmatch(r"(v4|v5p|v5litepod|v5e|v6e)-(\d+)", name.strip().lower())
    if not match:
        raise E1Error(f"unknown TPU accelerator type '{name}'; use e.g. v4-32, v5litepod-32, v5p-128, v6e-8")
    family = ALIASES.get(match.group(1), match.group(1))
    count = int(match.group(2))
    chip = CHIPS[family]
    chips, rest = divmod(count, chip.cores_per_chip)
    sizes = TORUS_3D if family in ("v4", "v5p") else TORUS_2D
    if rest or chips not in sizes:
        known = ", ".join(f"{family}-{c * chip.cores_per_chip}" for c in sorted(sizes))
        raise E1Error(f"'{name}' is not a {family} slice shape e1jax knows; known: {known}")
    return Slice(name.strip().lower(), family, chips)


def topology_devices(tpu: Slice) -> list[Any]:
    """The slice's TPU devices for ahead-of-time compilation (needs libtpu, no TPU)."""
    if importlib.util.find_spec("libtpu") is None:
        raise E1Error('compiling for a TPU needs libtpu: pip install -e ".[tpu]"')
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # beside tests or a bench that load it too
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=tpu.topology_name, **tpu.topology_kwargs())
    except Exception as err:  # noqa: BLE001 - libtpu reports as RuntimeError/XlaRuntimeError
        raise E1Error(f"libtpu could not describe {tpu.accelerator_type} ({tpu.topology_name}): {str(err).splitlines()[0]}") from err
    return list(desc.devices)
