"""What the machine is and how fast it reads memory (for the decode roofline)."""

from __future__ import annotations

import os
import platform
import time

import jax
import jax.numpy as jnp


def machine_info() -> dict:
    devices = jax.devices()
    info = {
        "platform": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "jax": jax.__version__,
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


def read_bandwidth(num_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Measured bytes/s of a jitted full read (a sum) of a large array on the default device."""
    x = jnp.ones((num_bytes // 4,), jnp.float32)
    reduce = jax.jit(lambda a: jnp.sum(a))
    reduce(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        reduce(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    del x
    return num_bytes / best
