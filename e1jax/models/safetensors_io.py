"""Minimal safetensors reader/writer on numpy memmaps (bf16 via ml_dtypes).

Reading maps the file and slices tensors lazily, so loading converts one tensor
at a time and never materialises the whole model on the host.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterable

import ml_dtypes
import numpy as np

from e1jax.dtypes import check_dtype
from e1jax.errors import E1Error

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class SafetensorsFile:
    """Lazy view of one .safetensors file: `names`, `shape(name)`, `get(name)`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise E1Error(f"safetensors file not found: {self.path}")
        with open(self.path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise E1Error(f"{self.path} is not a safetensors file (too short)")
            (header_len,) = struct.unpack("<Q", raw)
            try:
                header = json.loads(f.read(header_len))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise E1Error(f"{self.path} is not a safetensors file (bad header)") from err
        self.metadata = header.pop("__metadata__", {}) or {}
        self.header = header
        self._offset = 8 + header_len
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r") if self.path.stat().st_size > self._offset else None

    @property
    def names(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        info = self.header[name]
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise E1Error(f"tensor {name} in {self.path} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        if start == end:
            return np.zeros(info["shape"], dtype)
        if self._map is None or self._offset + end > self._map.size:
            raise E1Error(f"tensor {name} in {self.path} lies past the end of the file (truncated download?)")
        buf = self._map[self._offset + start : self._offset + end]
        return buf.view(dtype).reshape(info["shape"])


def save_file(tensors: dict[str, np.ndarray], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    header: dict = {}
    offset = 0
    arrays = []
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        code = _NAMES.get(array.dtype)
        if code is None:
            raise E1Error(f"cannot save tensor {name}: dtype {array.dtype} has no safetensors code")
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        arrays.append(array)
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * ((8 - len(blob) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for array in arrays:
            f.write(array.tobytes())


def dtype_from_name(name: str) -> np.dtype:
    check_dtype(name)
    return {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16)}[name]


def shard_plan(sizes: Iterable[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
    """Group tensor names into shards of at most `max_shard_bytes` (a tensor never splits)."""
    shards: list[list[str]] = [[]]
    current = 0
    for name, nbytes in sizes:
        if shards[-1] and current + nbytes > max_shard_bytes:
            shards.append([])
            current = 0
        shards[-1].append(name)
        current += nbytes
    return shards
