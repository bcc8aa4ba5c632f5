"""Qwen2 / Qwen2.5 / Qwen3 decoder in Flax linen, layers under nn.scan.

`Qwen(config).apply({"params": params}, tokens, positions, attention_mask, cache=None)`
serves full-sequence scoring (no cache), prefill and single-token decode (with a cache).
Returns fp32 logits and the updated cache.

Cache layout: {"k", "v": (layers, batch, kv_heads, cache_len, head_dim),
"mask": (batch, cache_len) bool (slot holds a real token), "index": int32 next slot}.
All sequences of a batch advance through the same slots (left padding), so one
scalar index serves the whole batch; positions (for RoPE) are per sequence.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from e1jax.models.config import ModelConfig
from e1jax.sharding import constrain

Cache = dict[str, jax.Array]

CACHE_LOGICAL_AXES = {
    "k": ("layers", "batch", "kv_heads", "cache_length", "head_dim"),
    "v": ("layers", "batch", "kv_heads", "cache_length", "head_dim"),
    "mask": ("batch", "cache_length"),
    "index": (),
}


def _dtype(name: str) -> Any:
    return jnp.dtype(name)


def _param(module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str, ...], init) -> jax.Array:
    cfg: ModelConfig = module.config
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, _dtype(cfg.param_dtype))


class RMSNorm(nn.Module):
    config: ModelConfig
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        scale = _param(self, "scale", (dim,), (self.axis_name,), nn.initializers.ones)
        x32 = x.astype(jnp.float32)
        var = jnp.mean(x32 * x32, axis=-1, keepdims=True)
        normed = (x32 * jax.lax.rsqrt(var + self.config.rms_norm_eps)).astype(x.dtype)
        return scale.astype(x.dtype) * normed


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


def dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x (..., in) @ kernel (in, out) as one 2-D matmul (XLA:CPU runs dots with several
    contracting or free dimensions an order of magnitude slower, forward and backward)."""
    lead = x.shape[:-1]
    return (x.reshape(-1, x.shape[-1]) @ kernel).reshape(*lead, kernel.shape[-1])


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, positions, key_mask, cache_kv, layer, cache_index):
        cfg = self.config
        dt = _dtype(cfg.dtype)
        e, h, kv, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        b, t = x.shape[:2]
        groups = h // kv
        q = self._project(x, "q_proj", h, "heads")
        k = self._project(x, "k_proj", kv, "kv_heads")
        v = self._project(x, "v_proj", kv, "kv_heads")
        if cfg.qk_norm:
            q = RMSNorm(cfg, axis_name="head_dim", name="q_norm")(q)
            k = RMSNorm(cfg, axis_name="head_dim", name="k_norm")(k)
        q = rope(q, positions, cfg.rope_theta)
        k = rope(k, positions, cfg.rope_theta)
        # heads-major: (B, KV, T, D)
        k = k.transpose(0, 2, 1, 3)
        v = v.transpose(0, 2, 1, 3)

        if cache_kv is not None:
            # The whole (layers, B, KV, S, D) cache rides in the scan carry and is updated in place.
            at = (layer, 0, 0, cache_index, 0)
            new_cache = {
                "k": jax.lax.dynamic_update_slice(cache_kv["k"], k.astype(cache_kv["k"].dtype)[None], at),
                "v": jax.lax.dynamic_update_slice(cache_kv["v"], v.astype(cache_kv["v"].dtype)[None], at),
            }
            new_cache = {name: constrain(c, CACHE_LOGICAL_AXES[name]) for name, c in new_cache.items()}
            k_all = jax.lax.dynamic_index_in_dim(new_cache["k"], layer, keepdims=False)
            v_all = jax.lax.dynamic_index_in_dim(new_cache["v"], layer, keepdims=False)
        else:
            k_all, v_all, new_cache = k, v, None
        s = k_all.shape[2]

        # One batch dimension (B*KV) and one contracting dimension per matmul.
        qh = q.reshape(b, t, kv, groups, d).transpose(0, 2, 3, 1, 4).reshape(b * kv, groups * t, d)
        kh = k_all.astype(dt).reshape(b * kv, s, d)
        vh = v_all.astype(dt).reshape(b * kv, s, d)
        scores = jnp.einsum("nqd,nsd->nqs", qh, kh, preferred_element_type=jnp.float32) * (d**-0.5)
        scores = scores.reshape(b, kv, groups, t, s)
        scores = jnp.where(key_mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(dt).reshape(b * kv, groups * t, s)
        out = jnp.einsum("nqs,nsd->nqd", probs, vh)
        out = out.reshape(b, kv, groups, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)
        out = constrain(out, ("batch", "length", "heads", "head_dim"))
        wo = _param(self, "o_proj", (h, d, e), ("heads", "head_dim", "embed"), nn.initializers.normal(0.02))
        y = dense(out.reshape(b, t, h * d), wo.astype(dt).reshape(h * d, e))
        return y, new_cache

    def _project(self, x, name, heads, head_axis):
        cfg = self.config
        dt = _dtype(cfg.dtype)
        e, d = cfg.hidden_size, cfg.head_dim
        kernel = _param(self, f"{name}_kernel", (e, heads, d), ("embed", head_axis, "head_dim"), nn.initializers.normal(0.02))
        y = dense(x, kernel.astype(dt).reshape(e, heads * d)).reshape(*x.shape[:2], heads, d)
        if cfg.qkv_bias:
            bias = _param(self, f"{name}_bias", (heads, d), (head_axis, "head_dim"), nn.initializers.zeros)
            y = y + bias.astype(dt)
        return constrain(y, ("batch", "length", head_axis, "head_dim"))


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dt = _dtype(cfg.dtype)
        e, f = cfg.hidden_size, cfg.intermediate_size
        init = nn.initializers.normal(0.02)
        gate = _param(self, "gate_proj", (e, f), ("embed", "mlp"), init)
        up = _param(self, "up_proj", (e, f), ("embed", "mlp"), init)
        down = _param(self, "down_proj", (f, e), ("mlp", "embed"), init)
        g = dense(x, gate.astype(dt))
        u = dense(x, up.astype(dt))
        hidden = constrain(jax.nn.silu(g) * u, ("batch", "length", "mlp"))
        return dense(hidden, down.astype(dt))


class DecoderLayer(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, carry, positions, key_mask, cache_index):
        cfg = self.config
        x, cache_kv, layer = carry
        h = RMSNorm(cfg, name="input_layernorm")(x)
        attn, cache_kv = Attention(cfg, name="self_attn")(h, positions, key_mask, cache_kv, layer, cache_index)
        x = x + attn
        h = RMSNorm(cfg, name="post_attention_layernorm")(x)
        x = x + MLP(cfg, name="mlp")(h)
        x = constrain(x, ("batch", "length", "embed"))
        return (x, cache_kv, layer + 1), None


def _remat_policy(name: str):
    if name == "dots":
        return jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
    return None


class Qwen(nn.Module):
    """`unrolled`: the layers are separate parameter subtrees `layer_0` ... instead of one
    stacked `layers` tree under nn.scan (see `unstack_layers`)."""

    config: ModelConfig
    unrolled: bool = False

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        attention_mask: jax.Array,
        cache: Cache | None = None,
        return_hidden: bool = False,
    ):
        cfg = self.config
        dt = _dtype(cfg.dtype)
        embedding = _param(self, "embed_tokens", (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), nn.initializers.normal(0.02))
        x = jnp.take(embedding, tokens, axis=0).astype(dt)
        x = constrain(x, ("batch", "length", "embed"))
        attention_mask = attention_mask.astype(bool)
        t = tokens.shape[1]

        if cache is None:
            query_slots = jnp.arange(t)
            key_valid = attention_mask
            cache_index = jnp.int32(0)
            layer_caches = None
        else:
            cache_index = cache["index"]
            query_slots = cache_index + jnp.arange(t)
            key_valid = jax.lax.dynamic_update_slice(cache["mask"], attention_mask, (0, cache_index))
            layer_caches = {"k": cache["k"], "v": cache["v"]}
        key_slots = jnp.arange(key_valid.shape[1])
        causal = key_slots[None, :] <= query_slots[:, None]  # (T, S)
        key_mask = key_valid[:, None, :] & causal[None, :, :]  # (B, T, S)

        layer_cls = DecoderLayer
        if cfg.remat != "none":
            layer_cls = nn.remat(DecoderLayer, policy=_remat_policy(cfg.remat), prevent_cse=False)
        carry = (x, layer_caches, jnp.int32(0))
        if self.unrolled:
            for i in range(cfg.num_layers):
                carry, _ = layer_cls(cfg, name=f"layer_{i}")(carry, positions, key_mask, cache_index)
        else:
            stack = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, name="layers")
            carry, _ = stack(carry, positions, key_mask, cache_index)
        x, new_layer_caches, _ = carry
        x = RMSNorm(cfg, name="norm")(x)
        if return_hidden:
            return x
        logits = self.logits(x, embedding)
        if cache is None:
            return logits, None
        new_cache = {
            "k": new_layer_caches["k"],
            "v": new_layer_caches["v"],
            "mask": key_valid,
            "index": cache_index + t,
        }
        return logits, new_cache

    def logits(self, x: jax.Array, embedding: jax.Array) -> jax.Array:
        cfg = self.config
        if cfg.tie_word_embeddings:
            head = embedding.T
        else:
            head = _param(self, "lm_head", (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), nn.initializers.normal(0.02))
        b, t, e = x.shape
        logits = jnp.dot(x.reshape(b * t, e), head.astype(x.dtype), preferred_element_type=jnp.float32).reshape(b, t, -1)
        return constrain(logits, ("batch", "length", "vocab"))


def is_unrolled(params: Any) -> bool:
    return "layers" not in params


def model_for(config: ModelConfig, params: Any) -> Qwen:
    """The module that reads `params` in their layout (stacked or unrolled layers)."""
    return Qwen(config, unrolled=is_unrolled(params))


def init_cache(config: ModelConfig, batch: int, length: int, dtype: str | None = None) -> Cache:
    shape = (config.num_layers, batch, config.num_kv_heads, length, config.head_dim)
    dt = _dtype(dtype or config.dtype)
    return {
        "k": jnp.zeros(shape, dt),
        "v": jnp.zeros(shape, dt),
        "mask": jnp.zeros((batch, length), bool),
        "index": jnp.int32(0),
    }




def positions_from_mask(attention_mask: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
    """Positions that skip left padding: the first real token is at position `offset`."""
    mask = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0) + offset
