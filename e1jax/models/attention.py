"""Causal self-attention over whole sequences (training, scoring, prefill), one kernel per platform.

A kernel is a frozen dataclass chosen once (`attention_for(platform)`, held by
`ModelConfig.attention`) and called as `kernel(q, k, v, mask)`:
q (B, T, H, D), k and v (B, T, KV, D) with H a multiple of KV (grouped queries), mask (B, T)
True at real tokens, whose real tokens are one contiguous run per row (left-padded prompts,
right-padded responses). Returns (B, T, H, D); outputs at padding positions are unspecified.

- `XlaAttention`: the plain softmax, (B, H, T, T) scores; CPU, and the reference in tests.
- `SplashAttention`: the Pallas TPU splash kernel (blockwise, O(T) memory, fused backward);
  `interpret=True` runs it on CPU for tests.
- `DotProductAttention`: `jax.nn.dot_product_attention` (cuDNN flash attention on GPU).

Decoding with a KV cache always goes through `attend_parts`, the plain softmax over cache parts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from e1jax.sharding import active_mesh, constrain, logical_to_spec


def _tensor_splits(kv_heads: int) -> bool:
    mesh = active_mesh()
    return mesh is not None and mesh.shape["tensor"] > 1 and kv_heads % mesh.shape["tensor"] == 0


def attend_parts(q: jax.Array, keys: Sequence[jax.Array], values: Sequence[jax.Array], key_mask: jax.Array,
                 num_kv_heads: int, dtype: Any) -> jax.Array:
    """Softmax attention of q (B, T, H, D) over the concatenated key parts (B, KV, D, S_i)
    (stored transposed) and value parts (B, KV, S_i, D); key_mask (B, T, sum S_i).

    The matmuls have one batch dimension (B*KV: XLA:CPU runs dots with several an order of
    magnitude slower), unless a tensor axis splits the kv heads: merging the two sharded
    dimensions would make the partitioner gather the whole KV cache."""
    b, t, h, d = q.shape
    kv = num_kv_heads
    groups = h // kv
    split = _tensor_splits(kv)
    lead = (b, kv) if split else (b * kv,)

    def rows(x, *rest):
        x = x.reshape(*lead, *rest)
        return constrain(x, ("batch", "kv_heads") + (None,) * len(rest)) if split else x

    qh = rows(q.reshape(b, t, kv, groups, d).transpose(0, 2, 3, 1, 4), groups * t, d)
    scores = jnp.concatenate(
        [jnp.einsum("...qd,...ds->...qs", qh, rows(part.astype(dtype), d, part.shape[-1]), preferred_element_type=jnp.float32)
         for part in keys], axis=-1
    ) * (d**-0.5)
    s = scores.shape[-1]
    scores = scores.reshape(b, kv, groups, t, s)
    scores = jnp.where(key_mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = rows(jax.nn.softmax(scores, axis=-1).astype(dtype), groups * t, s)
    out, offset = 0, 0
    for part in values:
        width = part.shape[2]
        out = out + jnp.einsum("...qs,...sd->...qd", probs[..., offset : offset + width], rows(part.astype(dtype), width, d))
        offset += width
    out = out.reshape(b, kv, groups, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)
    return constrain(out, ("batch", "length", "heads", "head_dim"))


def causal_key_mask(mask: jax.Array) -> jax.Array:
    """(B, T) real-token mask -> (B, T, T): query t sees the real keys at or before t."""
    t = mask.shape[1]
    causal = jnp.tril(jnp.ones((t, t), bool))
    return mask[:, None, :] & causal[None]


@dataclasses.dataclass(frozen=True)
class XlaAttention:
    """The plain softmax: every (query, key) score is materialised."""

    def __call__(self, q, k, v, mask):
        return attend_parts(q, [k.transpose(0, 2, 3, 1)], [v.transpose(0, 2, 1, 3)], causal_key_mask(mask), k.shape[2], q.dtype)


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def _splash_kernel(length: int, groups: int, block: int, interpret: bool):
    """Built per trace: the kernel holds its mask tables as arrays of the trace it is made in."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    mask = masks.MultiHeadMask([masks.CausalMask((length, length))] * groups)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return splash.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)


@dataclasses.dataclass(frozen=True)
class SplashAttention:
    """Pallas splash attention (TPU): causal, with the real-token mask as segment ids, one MQA
    kernel per kv head (its query group shares the keys). Sequences are padded to a multiple of
    128 and head_dim to a multiple of 128 (zeros change no score). Under an active mesh the
    kernel runs per shard (`shard_map`): rows over the batch axes, kv heads over the tensor
    axis when it divides them."""

    block: int = 512
    interpret: bool = False

    def __call__(self, q, k, v, mask):
        from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import SegmentIds

        b, t, h, d = q.shape
        kv = k.shape[2]
        groups = h // kv
        length = _round_up(t, 128)
        block = next(size for size in (self.block, 256, 128) if length % size == 0)
        dim = _round_up(d, 128)
        q = (q * jnp.asarray(d**-0.5, q.dtype)).reshape(b, t, kv, groups, d).transpose(0, 2, 3, 1, 4)
        k = k.transpose(0, 2, 1, 3)
        v = v.transpose(0, 2, 1, 3)
        q = jnp.pad(q, ((0, 0),) * 3 + ((0, length - t), (0, dim - d)))
        k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, length - t), (0, dim - d))) for x in (k, v))
        segments = jnp.pad(mask.astype(jnp.int32), ((0, 0), (0, length - t)))
        kernel = _splash_kernel(length, groups, block, self.interpret)

        def local(q, k, v, segments):
            per_head = jax.vmap(kernel, in_axes=(0, 0, 0, None))
            per_row = jax.vmap(per_head, in_axes=(0, 0, 0, SegmentIds(0, 0)))
            return per_row(q, k, v, SegmentIds(segments, segments))

        mesh = active_mesh()
        if mesh is None or mesh.size == 1:
            out = local(q, k, v, segments)
        else:
            rows = logical_to_spec(("batch", "kv_heads"), (b, kv), mesh, "attention queries")
            spec = PartitionSpec(rows[0], rows[1])
            out = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, PartitionSpec(rows[0])),
                                out_specs=spec, check_vma=False)(q, k, v, segments)
        out = out[..., :t, :d].transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)
        return constrain(out, ("batch", "length", "heads", "head_dim"))


@dataclasses.dataclass(frozen=True)
class DotProductAttention:
    """`jax.nn.dot_product_attention` with `implementation` ("cudnn": cuDNN flash attention on
    GPU; "xla": its XLA reference). cuDNN masks padding by sequence lengths, so each row is
    rotated to start with its real tokens (positions are carried by RoPE, not by the slot) and
    rotated back afterwards."""

    implementation: str | None = "cudnn"

    def __call__(self, q, k, v, mask):
        t = q.shape[1]
        lead = jnp.argmax(mask, axis=1).astype(jnp.int32)  # left padding of each row
        lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
        index = (jnp.arange(t)[None, :] + lead[:, None]) % t

        def rotate(x, idx):
            return jnp.take_along_axis(x, idx[:, :, None, None], axis=1)

        # cuDNN's flash attention takes half precision only; fp32 runs take XLA's implementation
        implementation = self.implementation if q.dtype in (jnp.bfloat16, jnp.float16) else "xla"
        out = jax.nn.dot_product_attention(rotate(q, index), rotate(k, index), rotate(v, index), is_causal=True,
                                           query_seq_lengths=lengths, key_value_seq_lengths=lengths,
                                           implementation=implementation)
        back = (jnp.arange(t)[None, :] - lead[:, None]) % t
        return constrain(rotate(out, back), ("batch", "length", "heads", "head_dim"))


AttentionKernel = XlaAttention | SplashAttention | DotProductAttention


def attention_for(platform: str) -> AttentionKernel:
    """The whole-sequence attention kernel for a JAX platform name ("tpu", "gpu"/"cuda"/"rocm", "cpu")."""
    if platform == "tpu":
        return SplashAttention()
    if platform in ("gpu", "cuda", "rocm"):
        return DotProductAttention("cudnn")
    return XlaAttention()
