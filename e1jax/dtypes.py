"""The one vocabulary of dtype names, and what "auto" means."""

from __future__ import annotations

from e1jax.errors import E1Error

DTYPES = ("float32", "bfloat16", "float16")
AUTO = "auto"  # float32 on CPU, bfloat16 on accelerators
ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}


def check_dtype(name: str, what: str = "dtype", *, allow_auto: bool = False) -> str:
    allowed = DTYPES + ((AUTO,) if allow_auto else ())
    if name not in allowed:
        raise E1Error(f"{what} '{name}' is not one of {', '.join(allowed)}")
    return name


def resolve_dtype(name: str | None, platform: str | None = None) -> str:
    """A dtype name, with None / "auto" resolved for `platform` (default: JAX's backend)."""
    if name not in (None, AUTO):
        return check_dtype(name)
    if platform is None:
        import jax

        platform = jax.default_backend()
    return "float32" if platform == "cpu" else "bfloat16"
