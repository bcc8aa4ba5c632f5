"""The paged KV cache: fixed-size pages in one pool per layer, a page table per slot.

k[i]: layer i's key pool, stored transposed as the dense cache stores keys, (pages, kv_heads,
head_dim, page_size); v[i]: its value pool, (pages, kv_heads, page_size, head_dim). Slot s's position p lives in
page page_table[s, p // page_size] at offset p % page_size. Page 0 is the trash page: writes
that must go nowhere (idle slots, padding) land there, and no slot reads it as a real page.
Attention gathers only the pages named in the page table it is given; the engine passes the
table cut to the pages the longest live slot holds (`paged_attention`).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from e1jax.models.attention import attend_parts
from e1jax.models.config import ModelConfig

TRASH_PAGE = 0


@flax.struct.dataclass
class PagedCache:
    k: list  # per layer (pages, kv_heads, head_dim, page_size)
    v: list  # per layer (pages, kv_heads, page_size, head_dim)
    page_size: int = flax.struct.field(pytree_node=False, default=16)

    @classmethod
    def zeros(cls, config: ModelConfig, pages: int, page_size: int, dtype: Any = None) -> "PagedCache":
        kv, d = config.num_kv_heads, config.head_dim
        dt = jnp.dtype(dtype or config.dtype)
        return cls(k=[jnp.zeros((pages, kv, d, page_size), dt) for _ in range(config.num_layers)],
                   v=[jnp.zeros((pages, kv, page_size, d), dt) for _ in range(config.num_layers)], page_size=page_size)

    @property
    def pages(self) -> int:
        return self.k[0].shape[0]

    def slots_of(self, page_table: jax.Array, positions: jax.Array, write: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(page, offset) (S, T) where the tokens at `positions` are stored; the trash page where not `write`."""
        column = jnp.clip(positions // self.page_size, 0, page_table.shape[1] - 1)
        page = jnp.take_along_axis(page_table, column, axis=1)
        return jnp.where(write, page, TRASH_PAGE), jnp.where(write, positions % self.page_size, 0)

    def copy_pages(self, source: jax.Array, dest: jax.Array) -> "PagedCache":
        """Every layer's pages `source` (P,) copied onto pages `dest` (P,)."""
        return self.replace(k=[x.at[dest].set(x[source]) for x in self.k], v=[x.at[dest].set(x[source]) for x in self.v])


def write_pages(k_pages: jax.Array, v_pages: jax.Array, k: jax.Array, v: jax.Array, page: jax.Array,
                offset: jax.Array) -> tuple[jax.Array, jax.Array]:
    """k, v (S, T, kv_heads, head_dim) into the pools at (page, offset) (S, T)."""
    return (k_pages.at[page, :, :, offset].set(k.astype(k_pages.dtype)),
            v_pages.at[page, :, offset].set(v.astype(v_pages.dtype)))


@flax.struct.dataclass
class TableReader:
    """Attention over every slot's first `page_table.shape[1]` pages, gathered into the dense
    cache's layout for `attend_parts` (prefill: one slot, its prompt's pages)."""

    page_table: jax.Array  # (S, P)

    def attend(self, q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, q_positions: jax.Array,
               kv_len: jax.Array, dtype: Any) -> jax.Array:
        s, kv = q.shape[0], k_pages.shape[1]
        length = self.page_table.shape[1] * k_pages.shape[-1]
        keys = k_pages[self.page_table].transpose(0, 2, 3, 1, 4).reshape(s, kv, -1, length)  # (S, kv, D, L)
        values = v_pages[self.page_table].transpose(0, 2, 1, 3, 4).reshape(s, kv, length, -1)  # (S, kv, L, D)
        key_pos = jnp.arange(length)
        visible = (key_pos[None, None, :] <= q_positions[:, :, None]) & (key_pos[None, None, :] < kv_len[:, None, None])
        return attend_parts(q, [keys], [values], visible, kv, dtype)


@flax.struct.dataclass
class RaggedReader:
    """Decode attention over exactly the pages the slots hold: page j of the flat list belongs to
    slot `slot[j]` and holds its positions `start[j]` onward; the softmax runs over each slot's
    pages (segment max and sums), so the work is the pages held, not slots x the longest slot.
    Padding entries name the trash page and slot S (no slot)."""

    pages: jax.Array  # (N,)
    slot: jax.Array  # (N,)
    start: jax.Array  # (N,)

    def attend(self, q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, q_positions: jax.Array,
               kv_len: jax.Array, dtype: Any) -> jax.Array:
        s, t, h, d = q.shape  # t == 1
        kv, page = k_pages.shape[1], k_pages.shape[-1]
        groups = h // kv
        n = self.pages.shape[0]
        slot = jnp.minimum(self.slot, s - 1)
        real = self.slot < s
        qn = q[:, 0].reshape(s, kv, groups, d)[slot].astype(dtype).reshape(n * kv, groups, d)
        keys = k_pages[self.pages].astype(dtype).reshape(n * kv, d, page)
        scores = jnp.matmul(qn, keys, preferred_element_type=jnp.float32).reshape(n, kv, groups, page) * (d ** -0.5)
        key_pos = self.start[:, None] + jnp.arange(page)[None, :]  # (N, page)
        visible = real[:, None] & (key_pos < kv_len[slot][:, None]) & (key_pos <= q_positions[slot, 0][:, None])
        scores = jnp.where(visible[:, None, None, :], scores, -jnp.inf)
        segment = jnp.where(real, self.slot, s)
        peak = jax.ops.segment_max(jnp.max(scores, axis=-1), segment, num_segments=s + 1)  # (S + 1, kv, groups)
        peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
        weights = jnp.exp(scores - peak[segment][..., None])
        total = jax.ops.segment_sum(jnp.sum(weights, axis=-1), segment, num_segments=s + 1)
        values = v_pages[self.pages].astype(dtype).reshape(n * kv, page, d)
        part = jnp.matmul(weights.astype(dtype).reshape(n * kv, groups, page), values,
                          preferred_element_type=jnp.float32).reshape(n, kv, groups, d)
        out = jax.ops.segment_sum(part, segment, num_segments=s + 1)[:s] / jnp.maximum(total[:s], 1e-30)[..., None]
        return out.astype(dtype).reshape(s, 1, h, d)
