"""Mesh specs ('data=2,tensor=4') and the default mesh, without importing jax."""

from __future__ import annotations

from e1jax.errors import E1Error

MESH_AXES = ("data", "fsdp", "tensor")
# Every command and recipe holds its parameters on this mesh unless told otherwise; the sampler
# makes its own data-parallel copy of them (e1jax.sampling.inference).
DEFAULT_MESH = "fsdp=-1"


def parse_mesh_spec(spec: str | dict[str, int] | None) -> dict[str, int]:
    """'data=2,tensor=4' -> {'data': 2, 'fsdp': 1, 'tensor': 4}; -1 takes the remaining devices."""
    if spec is None or spec == "":
        sizes: dict[str, int] = {}
    elif isinstance(spec, dict):
        sizes = dict(spec)
    else:
        sizes = {}
        for part in spec.split(","):
            if "=" not in part:
                raise E1Error(f"mesh '{spec}' must look like data=2,tensor=4")
            name, value = part.split("=", 1)
            try:
                sizes[name.strip()] = int(value)
            except ValueError as err:
                raise E1Error(f"mesh axis '{name.strip()}' size '{value}' is not an integer") from err
    for name in sizes:
        if name not in MESH_AXES:
            raise E1Error(f"unknown mesh axis '{name}'; axes are {', '.join(MESH_AXES)}")
    return {name: int(sizes.get(name, 1)) for name in MESH_AXES}


