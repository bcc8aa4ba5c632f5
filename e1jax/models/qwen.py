"""Qwen2 / Qwen2.5 / Qwen3 decoder in Flax linen, layers under nn.scan.

`Qwen(config).apply({"params": params}, tokens, positions, attention_mask, cache=None)`
serves full-sequence scoring and prefill (no cache: attention by `config.attention`, the
platform's kernel) and decoding (with a cache: plain attention over the cache's slots).
Returns fp32 logits (or, with `return_hidden`, the final hidden states) and the cache: the
updated one when decoding, the prompt's own keys and values with `collect_cache`, else None.

Cache layout: {"k": keys stored transposed, (layers, batch, kv_heads, head_dim, cache_len),
"v": (layers, batch, kv_heads, cache_len, head_dim), "mask": (batch, cache_len) bool (slot
holds a real token), "index": int32 next slot}. With unrolled layers "k" and "v" are lists
of per-layer arrays (no layers axis). All sequences of a batch advance through the same slots
(left padding), so one scalar index serves the whole batch; positions (for RoPE) are per sequence.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from e1jax.models.attention import attend_parts, causal_key_mask
from e1jax.errors import E1Error
from e1jax.models.config import ModelConfig
from e1jax.sharding import constrain

Cache = dict[str, jax.Array]

# Keys are stored transposed: scores then come from one plain batched matmul q @ K^T, which
# XLA:CPU runs faster than contracting both operands' last dimension.
CACHE_LOGICAL_AXES = {
    "k": ("layers", "batch", "kv_heads", "head_dim", "cache_length"),
    "v": ("layers", "batch", "kv_heads", "cache_length", "head_dim"),
    "mask": ("batch", "cache_length"),
    "index": (),
}


def _dtype(name: str) -> Any:
    return jnp.dtype(name)


def _param(module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str, ...], init) -> jax.Array:
    cfg: ModelConfig = module.config
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, _dtype(cfg.param_dtype))


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMS normalisation over the last axis in fp32, scaled, in x's dtype."""
    x32 = x.astype(jnp.float32)
    var = jnp.mean(x32 * x32, axis=-1, keepdims=True)
    normed = (x32 * jax.lax.rsqrt(var + eps)).astype(x.dtype)
    return scale.astype(x.dtype) * normed


class RMSNorm(nn.Module):
    config: ModelConfig
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        scale = _param(self, "scale", (dim,), (self.axis_name,), nn.initializers.ones)
        return rms_norm(x, scale, self.config.rms_norm_eps)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding (rotate-half layout, as in transformers). x: (B, T, H, D)."""
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, T, D/2)
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    x32 = x.astype(jnp.float32)
    half = head_dim // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


# Projection kernels and how many of their leading dimensions are inputs. The CPU decode layout
# (`Qwen(out_in=True)`) stores them transposed, (out..., in...), as Hugging Face does.
KERNEL_INPUT_DIMS = {"q_proj_kernel": 1, "k_proj_kernel": 1, "v_proj_kernel": 1, "o_proj": 2,
                     "gate_proj": 1, "up_proj": 1, "down_proj": 1, "lm_head": 1}


def _kernel(module: nn.Module, name: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
            in_axes: tuple[str, ...], out_axes: tuple[str, ...], out_in: bool) -> jax.Array:
    """A projection kernel as a 2-D matrix: (in, out), or (out, in) when stored transposed."""
    init = nn.initializers.normal(0.02)
    if out_in:
        kernel = _param(module, name, out_shape + in_shape, out_axes + in_axes, init)
        return kernel.reshape(math.prod(out_shape), math.prod(in_shape))
    kernel = _param(module, name, in_shape + out_shape, in_axes + out_axes, init)
    return kernel.reshape(math.prod(in_shape), math.prod(out_shape))


OUT_IN_ROWS = 128


def dense(x: jax.Array, kernel: jax.Array, out_in: bool = False, preferred_element_type=None) -> jax.Array:
    """x (..., in) times a kernel (in, out), or (out, in) with `out_in`, as one 2-D matmul (XLA:CPU
    runs dots with several contracting or free dimensions much slower).

    `out_in` computes kernel @ x^T for up to OUT_IN_ROWS rows: then XLA:CPU streams (out, in)
    weights faster than it multiplies by (in, out) ones (the barriers keep XLA from folding
    the transposes into the dot, which would swap its fast kernel for a slow generic one); for more
    rows (prefill) x @ kernel^T is as fast as x @ (in, out)."""
    lead = x.shape[:-1]
    rows = x.reshape(-1, x.shape[-1])
    if out_in and rows.shape[0] <= OUT_IN_ROWS:
        barrier = jax.lax.optimization_barrier
        y = barrier(jnp.dot(kernel, barrier(rows.T), preferred_element_type=preferred_element_type)).T
    elif out_in:
        y = jnp.dot(rows, kernel.T, preferred_element_type=preferred_element_type)
    else:
        y = jnp.dot(rows, kernel, preferred_element_type=preferred_element_type)
    return y.reshape(*lead, y.shape[-1])


class Attention(nn.Module):
    config: ModelConfig
    out_in: bool = False  # kernels stored (out, in)

    @nn.compact
    def __call__(self, x, positions, key_mask, cache_kv, layer, cache_index):
        """key_mask: (B, T) real tokens without a cache (whole-sequence attention by the config's
        kernel), (B, T, S + T) visible keys with one. Returns (output, new cache or, without a
        cache, this call's keys and values in the cache layout)."""
        cfg = self.config
        dt = _dtype(cfg.dtype)
        e, h, kv, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        b, t = x.shape[:2]
        q = self._project(x, "q_proj", h, "heads")
        k = self._project(x, "k_proj", kv, "kv_heads")
        v = self._project(x, "v_proj", kv, "kv_heads")
        if cfg.qk_norm:
            q = RMSNorm(cfg, axis_name="head_dim", name="q_norm")(q)
            k = RMSNorm(cfg, axis_name="head_dim", name="k_norm")(k)
        q = rope(q, positions, cfg.rope_theta)
        k = rope(k, positions, cfg.rope_theta)
        wo = _kernel(self, "o_proj", (h, d), (e,), ("heads", "head_dim"), ("embed",), self.out_in)
        if cache_kv is None:
            out = cfg.attention(q, k, v, key_mask)
            y = dense(out.reshape(b, t, h * d), wo.astype(dt), self.out_in)
            return y, (k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3))
        kt = k.transpose(0, 2, 3, 1)  # (B, KV, D, T)
        v = v.transpose(0, 2, 1, 3)  # (B, KV, T, D)

        # Queries attend to the cache as it was before this call plus the new keys.
        if layer is None:  # this layer's own cache (unrolled layers)
            keys, values = [cache_kv["k"], kt], [cache_kv["v"], v]
        else:  # the stacked cache rides in the scan carry
            keys = [jax.lax.dynamic_index_in_dim(cache_kv["k"], layer, keepdims=False), kt]
            values = [jax.lax.dynamic_index_in_dim(cache_kv["v"], layer, keepdims=False), v]
        out = attend_parts(q, keys, values, key_mask, kv, dt)
        # The write must data-depend on the attention output (a zero XLA cannot fold away):
        # then XLA orders it after the reads of the old cache and updates the cache in
        # place; otherwise it copies the whole cache every step.
        # One value per (batch row, kv head) keeps the dependency local to each shard.
        first = out[:, 0, :, 0].reshape(b, kv, -1)[:, :, 0]
        zero = (jnp.where(jnp.isfinite(first), first, 0) * 0)[:, :, None, None]
        kt, v = kt + zero.astype(kt.dtype), v + zero.astype(v.dtype)
        old_k, old_v = cache_kv["k"], cache_kv["v"]
        if layer is None:
            at_k, at_v, axes = (0, 0, 0, cache_index), (0, 0, cache_index, 0), slice(1, None)
        else:
            at_k, at_v, axes = (layer, 0, 0, 0, cache_index), (layer, 0, 0, cache_index, 0), slice(None)
            kt, v = kt[None], v[None]
        new_cache = {
            "k": jax.lax.dynamic_update_slice(old_k, kt.astype(old_k.dtype), at_k),
            "v": jax.lax.dynamic_update_slice(old_v, v.astype(old_v.dtype), at_v),
        }
        new_cache = {name: constrain(c, CACHE_LOGICAL_AXES[name][axes]) for name, c in new_cache.items()}
        y = dense(out.reshape(b, t, h * d), wo.astype(dt), self.out_in)
        return y, new_cache

    def _project(self, x, name, heads, head_axis):
        cfg = self.config
        dt = _dtype(cfg.dtype)
        e, d = cfg.hidden_size, cfg.head_dim
        kernel = _kernel(self, f"{name}_kernel", (e,), (heads, d), ("embed",), (head_axis, "head_dim"), self.out_in)
        y = dense(x, kernel.astype(dt), self.out_in).reshape(*x.shape[:2], heads, d)
        if cfg.qkv_bias:
            bias = _param(self, f"{name}_bias", (heads, d), (head_axis, "head_dim"), nn.initializers.zeros)
            y = y + bias.astype(dt)
        return constrain(y, ("batch", "length", head_axis, "head_dim"))


class MLP(nn.Module):
    config: ModelConfig
    out_in: bool = False  # kernels stored (out, in)

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dt = _dtype(cfg.dtype)
        e, f = cfg.hidden_size, cfg.intermediate_size
        gate = _kernel(self, "gate_proj", (e,), (f,), ("embed",), ("mlp",), self.out_in)
        up = _kernel(self, "up_proj", (e,), (f,), ("embed",), ("mlp",), self.out_in)
        down = _kernel(self, "down_proj", (f,), (e,), ("mlp",), ("embed",), self.out_in)
        g = dense(x, gate.astype(dt), self.out_in)
        u = dense(x, up.astype(dt), self.out_in)
        hidden = constrain(jax.nn.silu(g) * u, ("batch", "length", "mlp"))
        return dense(hidden, down.astype(dt), self.out_in)


class DecoderLayer(nn.Module):
    config: ModelConfig
    out_in: bool = False  # kernels stored (out, in)
    collect_kv: bool = False  # without a cache: output this layer's keys and values

    @nn.compact
    def __call__(self, carry, positions, key_mask, cache_index):
        cfg = self.config
        # layer: index into a stacked cache, or None when cache_kv is this layer's own
        x, cache_kv, layer = carry
        h = RMSNorm(cfg, name="input_layernorm")(x)
        attn, kv_out = Attention(cfg, self.out_in, name="self_attn")(h, positions, key_mask, cache_kv, layer, cache_index)
        x = x + attn
        h = RMSNorm(cfg, name="post_attention_layernorm")(x)
        x = x + MLP(cfg, self.out_in, name="mlp")(h)
        x = constrain(x, ("batch", "length", "embed"))
        if cache_kv is None:
            return (x, None, None if layer is None else layer + 1), (kv_out if self.collect_kv else None)
        return (x, kv_out, None if layer is None else layer + 1), None


def _remat_policy(name: str):
    if name == "dots":
        return jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
    return None


class Qwen(nn.Module):
    """The decode layouts (see `params.decode_layout`): `unrolled`: the layers are separate
    parameter subtrees `layer_0` ... (and caches) instead of one stacked `layers` tree under
    nn.scan; `out_in` (with `unrolled`): the projection kernels are stored (out, in)."""

    config: ModelConfig
    unrolled: bool = False
    out_in: bool = False

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        attention_mask: jax.Array,
        cache: Cache | None = None,
        return_hidden: bool = False,
        collect_cache: bool = False,
    ):
        cfg = self.config
        dt = _dtype(cfg.dtype)
        embedding = _param(self, "embed_tokens", (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), nn.initializers.normal(0.02))
        x = jnp.take(embedding, tokens, axis=0).astype(dt)
        x = constrain(x, ("batch", "length", "embed"))
        attention_mask = attention_mask.astype(bool)
        t = tokens.shape[1]

        if cache is None:
            cache_index = jnp.int32(0)
            key_mask = attention_mask
            layer_caches = None
        else:
            # Every filled slot precedes the new tokens; keys = cache slots ++ new tokens.
            cache_index = cache["index"]
            key_mask = jnp.concatenate([jnp.broadcast_to(cache["mask"][:, None, :], (tokens.shape[0], t, cache["mask"].shape[1])), causal_key_mask(attention_mask)], axis=-1)
            key_valid = jax.lax.dynamic_update_slice(cache["mask"], attention_mask, (0, cache_index))
            layer_caches = {"k": cache["k"], "v": cache["v"]}
        collect = collect_cache and cache is None

        layer_cls = DecoderLayer
        if cfg.remat != "none":
            layer_cls = nn.remat(DecoderLayer, policy=_remat_policy(cfg.remat), prevent_cse=False)
        if self.unrolled:
            new_per_layer, collected = [], []
            for i in range(cfg.num_layers):
                own = None if layer_caches is None else {"k": layer_caches["k"][i], "v": layer_caches["v"][i]}
                (x, own, _), kv_out = layer_cls(cfg, self.out_in, collect, name=f"layer_{i}")((x, own, None), positions, key_mask, cache_index)
                new_per_layer.append(own)
                collected.append(kv_out)
            new_layer_caches = None if layer_caches is None else {name: [c[name] for c in new_per_layer] for name in ("k", "v")}
            if collect:
                new_layer_caches = {"k": [kv[0] for kv in collected], "v": [kv[1] for kv in collected]}
        else:
            carry = (x, layer_caches, jnp.int32(0))
            stack = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, collect_kv=collect, name="layers")
            (x, new_layer_caches, _), collected = stack(carry, positions, key_mask, cache_index)
            if collect:
                new_layer_caches = {"k": collected[0], "v": collected[1]}
        x = RMSNorm(cfg, name="norm")(x)
        out = x if return_hidden else self.logits(x, embedding)
        if collect:
            new_cache = {"k": new_layer_caches["k"], "v": new_layer_caches["v"], "mask": attention_mask, "index": jnp.int32(t)}
            return out, constrain_cache(new_cache)
        if cache is None:
            return out, None
        new_cache = {
            "k": new_layer_caches["k"],
            "v": new_layer_caches["v"],
            "mask": key_valid,
            "index": cache_index + t,
        }
        return out, new_cache

    def logits(self, x: jax.Array, embedding: jax.Array) -> jax.Array:
        cfg = self.config
        out_in = self.out_in
        if cfg.tie_word_embeddings:
            head = embedding if out_in else embedding.T
        else:
            head = _kernel(self, "lm_head", (cfg.hidden_size,), (cfg.vocab_size,), ("embed",), ("vocab",), out_in)
        logits = dense(x, head.astype(x.dtype), out_in, preferred_element_type=jnp.float32)
        return constrain(logits, ("batch", "length", "vocab"))


def head_kernel(config: ModelConfig, params: Any) -> jax.Array:
    """The output head of stacked params as an (embed, vocab) matrix."""
    if config.tie_word_embeddings:
        return params["embed_tokens"].T
    return params["lm_head"]


def is_unrolled(params: Any) -> bool:
    return "layers" not in params


def kernels_out_in(config: ModelConfig, params: Any) -> bool:
    """Whether unrolled `params` store their kernels (out, in): q_proj is (heads, head_dim, embed)
    rather than (embed, heads, head_dim)."""
    if not is_unrolled(params):
        return False
    shape = tuple(params["layer_0"]["self_attn"]["q_proj_kernel"].shape)
    out_in = (config.num_heads, config.head_dim, config.hidden_size)
    if out_in == (config.hidden_size, config.num_heads, config.head_dim):
        raise E1Error("hidden size, heads and head_dim are all equal: the kernel orientation of unrolled params is ambiguous")
    return shape == out_in


def model_for(config: ModelConfig, params: Any) -> Qwen:
    """The module that reads `params` in their layout (stacked or unrolled layers, kernel orientation)."""
    return Qwen(config, unrolled=is_unrolled(params), out_in=kernels_out_in(config, params))


def init_cache(config: ModelConfig, batch: int, length: int, dtype: str | None = None, unrolled: bool = False) -> Cache:
    """An empty cache; `unrolled`: per-layer lists for Qwen(unrolled=True)."""
    dt = _dtype(dtype or config.dtype)
    k_shape = (batch, config.num_kv_heads, config.head_dim, length)
    v_shape = (batch, config.num_kv_heads, length, config.head_dim)
    if unrolled:
        k = [jnp.zeros(k_shape, dt) for _ in range(config.num_layers)]
        v = [jnp.zeros(v_shape, dt) for _ in range(config.num_layers)]
    else:
        k = jnp.zeros((config.num_layers,) + k_shape, dt)
        v = jnp.zeros((config.num_layers,) + v_shape, dt)
    return {"k": k, "v": v, "mask": jnp.zeros((batch, length), bool), "index": jnp.int32(0)}


def map_cache_rows(fn: Callable[[jax.Array], jax.Array], cache: Cache) -> Cache:
    """Apply `fn`, which acts on axis 0 (batch rows), to every per-row array of a cache."""

    def keys_or_values(x):
        return [fn(a) for a in x] if isinstance(x, list) else jax.vmap(fn)(x)

    return {"k": keys_or_values(cache["k"]), "v": keys_or_values(cache["v"]), "mask": fn(cache["mask"]), "index": cache["index"]}


def extend_cache(cache: Cache, slots: int) -> Cache:
    """The cache with `slots` more empty slots at the end (stacked or per-layer)."""

    def pad(x, axis):
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, slots)
        return jnp.pad(x, widths)

    def keys_or_values(x, axis):
        return [pad(a, axis) for a in x] if isinstance(x, list) else pad(x, axis)

    return {"k": keys_or_values(cache["k"], -1), "v": keys_or_values(cache["v"], -2), "mask": pad(cache["mask"], -1), "index": cache["index"]}


def constrain_cache(cache: Cache) -> Cache:
    def axes(name, x):
        return CACHE_LOGICAL_AXES[name][1:] if isinstance(cache[name], list) else CACHE_LOGICAL_AXES[name]

    return {name: jax.tree.map(lambda x, name=name: constrain(x, axes(name, x)), value) for name, value in cache.items()}


def positions_from_mask(attention_mask: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
    """Positions that skip left padding: the first real token is at position `offset`."""
    mask = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0) + offset
