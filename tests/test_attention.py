"""Whole-sequence attention kernels equal the plain softmax (values and gradients, real positions),
the Pallas splash kernel in its interpret mode; and the model with each kernel equals the model
with the plain one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e1jax.models.attention import DotProductAttention, SplashAttention, XlaAttention, attention_for
from e1jax.models.config import ModelConfig
from e1jax.models.params import init_params
from e1jax.models.scoring import next_token_logprobs
from e1jax.sharding import activate, make_mesh

KERNELS = [DotProductAttention("xla"), SplashAttention(interpret=True), SplashAttention(block=128, interpret=True)]


def _inputs(b=2, t=40, h=4, kv=2, d=16, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(b, t, h, d)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, t, kv, d)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, t, kv, d)), jnp.float32)
    mask = np.ones((b, t), bool)
    mask[0, :7] = False  # left padding
    mask[0, t - 7:] = False  # and right padding
    mask[-1, t - 10:] = False
    return q, k, v, jnp.asarray(mask)


def _masked_loss(kernel, mask, weights):
    real = mask[..., None, None]
    return lambda q, k, v: jnp.sum(jnp.where(real, kernel(q, k, v, mask), 0.0) * weights)


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: repr(k))
def test_kernel_equals_plain_softmax_values_and_gradients(kernel):
    q, k, v, mask = _inputs()
    real = np.asarray(mask)[..., None, None]
    ref = XlaAttention()(q, k, v, mask)
    out = kernel(q, k, v, mask)
    assert out.shape == q.shape
    np.testing.assert_allclose(np.where(real, out, 0), np.where(real, ref, 0), atol=2e-6)
    weights = jnp.cos(jnp.arange(q.shape[-1], dtype=jnp.float32))
    want = jax.grad(_masked_loss(XlaAttention(), mask, weights), argnums=(0, 1, 2))(q, k, v)
    got = jax.grad(_masked_loss(kernel, mask, weights), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_splash_pads_sequence_and_head_dim():
    """T = 130 (not a multiple of 128) and head_dim 10: both padded inside the kernel."""
    q, k, v, mask = _inputs(b=1, t=130, h=6, kv=3, d=10, seed=1)
    real = np.asarray(mask)[..., None, None]
    out = SplashAttention(interpret=True)(q, k, v, mask)
    np.testing.assert_allclose(np.where(real, out, 0), np.where(real, XlaAttention()(q, k, v, mask), 0), atol=2e-6)


def test_splash_under_a_mesh_runs_per_shard():
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    q, k, v, mask = _inputs(b=4, t=24, h=4, kv=2, d=8, seed=2)
    real = np.asarray(mask)[..., None, None]
    ref = XlaAttention()(q, k, v, mask)
    mesh = make_mesh("data=2,fsdp=2,tensor=2")
    with activate(mesh):
        out = jax.jit(SplashAttention(interpret=True))(q, k, v, mask)
    np.testing.assert_allclose(np.where(real, out, 0), np.where(real, ref, 0), atol=2e-6)


CFG = ModelConfig("qwen3", 64, 32, 64, 2, 4, 2, 16)


@pytest.mark.parametrize("kernel", KERNELS[:2], ids=lambda k: type(k).__name__)
def test_model_logprobs_and_gradients_equal_with_each_kernel(kernel):
    params = init_params(CFG, 0)
    rng = np.random.default_rng(3)
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (2, 24)), jnp.int32)
    mask = jnp.ones(tokens.shape, bool).at[0, :5].set(False)
    fast = CFG.replace(attention=kernel)

    def loss(config):
        return lambda p: jnp.sum(next_token_logprobs(config, p, tokens, mask, 0.7, response_width=12))

    np.testing.assert_allclose(next_token_logprobs(fast, params, tokens, mask, response_width=12),
                               next_token_logprobs(CFG, params, tokens, mask, response_width=12), atol=2e-5)
    want, got = jax.grad(loss(CFG))(params), jax.grad(loss(fast))(params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_attention_for_platform():
    assert attention_for("tpu") == SplashAttention()
    assert attention_for("gpu") == DotProductAttention("cudnn") and attention_for("cuda") == DotProductAttention("cudnn")
    assert attention_for("cpu") == XlaAttention()
