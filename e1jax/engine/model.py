"""The model as the engine runs it: `DecodeWeights` (the decode copy of the parameters, laid
out once for the backend) and the forward pass over a paged KV cache.

`DecodeWeights.of(config, params)` takes training-layout (stacked) params and makes the
backend's decode layout once (`e1jax.models.params.decode_layout`: per-layer arrays; on CPU
the kernels stored (out, in)). Every projection then goes through `DecodeWeights.matmul`, the
one place the layout is read. `forward` is the Qwen2/Qwen3 decoder of `e1jax.models.qwen`
(the same norms, RoPE and grouped-query attention), with attention reading a slot's pages.
"""

from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from e1jax.engine.paged import PagedCache, write_pages
from e1jax.models.config import ModelConfig
from e1jax.models.params import decode_layout
from e1jax.models.qwen import KERNEL_INPUT_DIMS, dense, kernels_out_in, rms_norm, rope


@flax.struct.dataclass
class DecodeWeights:
    """Per-layer decode parameters (`layer_i` subtrees) and their kernel orientation."""

    params: Any
    out_in: bool = flax.struct.field(pytree_node=False, default=False)

    @classmethod
    def of(cls, config: ModelConfig, params: Any) -> "DecodeWeights":
        layout = decode_layout(params)
        return cls(params=layout, out_in=kernels_out_in(config, layout))

    def kernel(self, tree: Any, name: str) -> jax.Array:
        """A projection kernel as the 2-D matrix `matmul` takes."""
        w = tree[name]
        inputs = KERNEL_INPUT_DIMS[name]
        if self.out_in:
            return w.reshape(-1, math.prod(w.shape[w.ndim - inputs:]))
        return w.reshape(math.prod(w.shape[:inputs]), -1)

    def matmul(self, x: jax.Array, kernel: jax.Array, dtype: Any, preferred_element_type: Any = None) -> jax.Array:
        return dense(x, kernel.astype(dtype), self.out_in, preferred_element_type=preferred_element_type)

    def head(self, config: ModelConfig) -> jax.Array:
        p = self.params
        if config.tie_word_embeddings:
            return p["embed_tokens"] if self.out_in else p["embed_tokens"].T
        return self.kernel(p, "lm_head")


def _project(w: DecodeWeights, attn: Any, name: str, h: jax.Array, heads: int, config: ModelConfig) -> jax.Array:
    dt = jnp.dtype(config.dtype)
    y = w.matmul(h, w.kernel(attn, f"{name}_kernel"), dt)
    if config.qkv_bias:
        y = y + attn[f"{name}_bias"].reshape(-1).astype(dt)
    return y.reshape(*h.shape[:2], heads, config.head_dim)


def _layer(config: ModelConfig, w: DecodeWeights, layer: Any, x: jax.Array, positions: jax.Array,
           k_pages: jax.Array, v_pages: jax.Array, write_at: tuple[jax.Array, jax.Array], reader: Any,
           kv_len: jax.Array):
    dt = jnp.dtype(config.dtype)
    eps = config.rms_norm_eps
    attn = layer["self_attn"]
    h = rms_norm(x, layer["input_layernorm"]["scale"], eps)
    q = _project(w, attn, "q_proj", h, config.num_heads, config)
    k = _project(w, attn, "k_proj", h, config.num_kv_heads, config)
    v = _project(w, attn, "v_proj", h, config.num_kv_heads, config)
    if config.qk_norm:
        q = rms_norm(q, attn["q_norm"]["scale"], eps)
        k = rms_norm(k, attn["k_norm"]["scale"], eps)
    q = rope(q, positions, config.rope_theta)
    k = rope(k, positions, config.rope_theta)
    k_pages, v_pages = write_pages(k_pages, v_pages, k, v, *write_at)
    out = reader.attend(q, k_pages, v_pages, positions, kv_len, dt)
    b, t = x.shape[:2]
    x = x + w.matmul(out.reshape(b, t, -1), w.kernel(attn, "o_proj"), dt)
    mlp = layer["mlp"]
    h = rms_norm(x, layer["post_attention_layernorm"]["scale"], eps)
    gate = w.matmul(h, w.kernel(mlp, "gate_proj"), dt)
    up = w.matmul(h, w.kernel(mlp, "up_proj"), dt)
    x = x + w.matmul(jax.nn.silu(gate) * up, w.kernel(mlp, "down_proj"), dt)
    return x, k_pages, v_pages


def forward(config: ModelConfig, w: DecodeWeights, cache: PagedCache, tokens: jax.Array, positions: jax.Array,
            write: jax.Array, page_table: jax.Array, reader: Any, kv_len: jax.Array, *, logits: bool = True):
    """Run `tokens` (S, T) at `positions` (S, T) through the model: each token's keys and values
    go to its slot's page for its position (`page_table` (S, P)) where `write` (S, T) (elsewhere
    to the trash page), and it attends, read by `reader` (e1jax.engine.paged's TableReader or
    RaggedReader), to its slot's first `kv_len` (S,) positions up to its own.
    Returns (fp32 logits of the last column (S, V), or None without `logits`; the cache)."""
    dt = jnp.dtype(config.dtype)
    x = jnp.take(w.params["embed_tokens"], tokens, axis=0).astype(dt)
    write_at = cache.slots_of(page_table, positions, write)
    keys, values = [], []
    for i in range(config.num_layers):
        x, k_pages, v_pages = _layer(config, w, w.params[f"layer_{i}"], x, positions, cache.k[i], cache.v[i],
                                     write_at, reader, kv_len)
        keys.append(k_pages)
        values.append(v_pages)
    cache = cache.replace(k=keys, v=values)
    if not logits:
        return None, cache
    last = rms_norm(x[:, -1], w.params["norm"]["scale"], config.rms_norm_eps)
    return w.matmul(last, w.head(config), dt, preferred_element_type=jnp.float32), cache
