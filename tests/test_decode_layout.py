"""The CPU decode layout (layers unrolled, kernels transposed): same model, one copy, kept shardings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e1jax.models import ModelConfig, Qwen, init_cache, positions_from_mask
from e1jax.models.params import decode_layout, init_params, unstack_layers
from e1jax.models.qwen import is_unrolled, model_for
from e1jax.sharding import activate, make_mesh

CFG = ModelConfig("qwen3", 97, 48, 96, 3, 6, 2, 8, tie_word_embeddings=False)


def _decode(cfg, params, tokens):
    """Prefill 4 tokens, then decode the rest one at a time; all logits."""
    mask = jnp.ones(tokens.shape, bool)
    positions = positions_from_mask(mask)
    apply = jax.jit(model_for(cfg, params).apply)
    cache = init_cache(cfg, tokens.shape[0], 16, unrolled=is_unrolled(params))
    logits, cache = apply({"params": params}, tokens[:, :4], positions[:, :4], mask[:, :4], cache)
    steps = [logits]
    for t in range(4, tokens.shape[1]):
        logits, cache = apply({"params": params}, tokens[:, t : t + 1], positions[:, t : t + 1], mask[:, t : t + 1], cache)
        steps.append(logits)
    return np.asarray(jnp.concatenate(steps, axis=1)), cache


def test_unrolled_layers_compute_the_same_model():
    params = init_params(CFG, 0)
    unrolled = unstack_layers(params)
    assert is_unrolled(unrolled) and not is_unrolled(params)
    assert sorted(k for k in unrolled if k.startswith("layer_")) == ["layer_0", "layer_1", "layer_2"]
    tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, CFG.vocab_size)
    ref, ref_cache = _decode(CFG, params, tokens)
    got, got_cache = _decode(CFG, unrolled, tokens)
    np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)
    assert isinstance(got_cache["k"], list) and len(got_cache["k"]) == CFG.num_layers
    for name in ("k", "v"):
        np.testing.assert_allclose(np.stack(got_cache[name]), np.asarray(ref_cache[name]), atol=1e-6, rtol=0)
    full, _ = Qwen(CFG, unrolled=True, out_in=True).apply({"params": unrolled}, tokens, positions_from_mask(jnp.ones(tokens.shape, bool)), jnp.ones(tokens.shape, bool))
    np.testing.assert_allclose(np.asarray(full), ref, atol=1e-5, rtol=0)


def test_decode_layout_transposes_the_kernels_once_and_views_the_rest():
    params = init_params(CFG, 0)
    unrolled = unstack_layers(params)
    layers = params["layers"]
    np.testing.assert_array_equal(np.asarray(unrolled["layer_2"]["mlp"]["up_proj"]), np.asarray(layers["mlp"]["up_proj"][2]).T)
    np.testing.assert_array_equal(np.asarray(unrolled["layer_1"]["self_attn"]["q_proj_kernel"]),
                                  np.asarray(layers["self_attn"]["q_proj_kernel"][1]).transpose(1, 2, 0))
    np.testing.assert_array_equal(np.asarray(unrolled["layer_0"]["self_attn"]["o_proj"]),
                                  np.asarray(layers["self_attn"]["o_proj"][0]).transpose(2, 0, 1))
    np.testing.assert_array_equal(np.asarray(unrolled["lm_head"]), np.asarray(params["lm_head"]).T)
    # Norm scales are views of the stacked params; each kernel's layers are views of one transposed copy.
    scale = layers["input_layernorm"]["scale"]
    assert unrolled["layer_2"]["input_layernorm"]["scale"].unsafe_buffer_pointer() == scale.unsafe_buffer_pointer() + 2 * scale[0].size * 4
    up = [unrolled[f"layer_{i}"]["mlp"]["up_proj"] for i in range(CFG.num_layers)]
    assert up[2].unsafe_buffer_pointer() == up[0].unsafe_buffer_pointer() + 2 * up[0].size * 4
    assert up[0].unsafe_buffer_pointer() != layers["mlp"]["up_proj"].unsafe_buffer_pointer()
    assert unrolled["embed_tokens"] is params["embed_tokens"]
    assert decode_layout(unrolled) is unrolled  # already in the decode layout: unchanged


def test_donating_the_stacked_params_after_decoding_keeps_them_correct():
    params = init_params(CFG, 0)
    expected = np.asarray(params["layers"]["mlp"]["down_proj"]) * 2
    tokens = jax.random.randint(jax.random.key(1), (1, 6), 0, CFG.vocab_size)
    _decode(CFG, unstack_layers(params), tokens)
    doubled = jax.jit(lambda p: jax.tree.map(lambda x: x * 2, p), donate_argnums=0)(params)
    np.testing.assert_array_equal(np.asarray(doubled["layers"]["mlp"]["down_proj"]), expected)


@pytest.mark.parametrize("mesh_spec", ["data=2,tensor=4", "fsdp=8"])
def test_unstacking_sharded_params_keeps_their_sharding(mesh_spec):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    cfg = ModelConfig("qwen2", 128, 64, 128, 2, 8, 4, 8)
    mesh = make_mesh(mesh_spec)
    params = init_params(cfg, 0, mesh=mesh)
    unrolled = unstack_layers(params)
    stacked_q = params["layers"]["self_attn"]["q_proj_kernel"]
    q = unrolled["layer_1"]["self_attn"]["q_proj_kernel"]
    embed, heads, head_dim = (tuple(stacked_q.sharding.spec) + (None,) * 4)[1:4]
    assert (tuple(q.sharding.spec) + (None,) * 3)[:3] == (heads, head_dim, embed)
    assert q.addressable_shards[0].data.size < q.size  # still split
    np.testing.assert_array_equal(np.asarray(q), np.asarray(stacked_q)[1].transpose(1, 2, 0))
    tokens = jax.random.randint(jax.random.key(2), (8, 8), 0, cfg.vocab_size)  # 8 rows: every batch axis divides them
    ref, _ = _decode(cfg, init_params(cfg, 0), tokens)
    with activate(mesh):
        got, _ = _decode(cfg, unrolled, tokens)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("unrolled", [False, True])
def test_extend_cache_adds_empty_slots_at_the_end(unrolled):
    from e1jax.models.qwen import extend_cache

    params = init_params(CFG, 0)
    params = unstack_layers(params) if unrolled else params
    tokens = jax.random.randint(jax.random.key(3), (2, 5), 0, CFG.vocab_size)
    _, cache = _decode(CFG, params, tokens)
    longer = extend_cache(cache, 7)
    assert int(longer["index"]) == int(cache["index"])
    np.testing.assert_array_equal(np.asarray(longer["mask"][:, :16]), np.asarray(cache["mask"]))
    assert longer["mask"].shape == (2, 23) and not np.asarray(longer["mask"][:, 16:]).any()
    stack = (lambda x: np.stack([np.asarray(a) for a in x])) if unrolled else np.asarray
    k, v, old_k, old_v = stack(longer["k"]), stack(longer["v"]), stack(cache["k"]), stack(cache["v"])
    assert k.shape == old_k.shape[:-1] + (23,) and v.shape == old_v.shape[:-2] + (23, old_v.shape[-1])
    np.testing.assert_array_equal(k[..., :16], old_k)
    np.testing.assert_array_equal(v[..., :16, :], old_v)
    assert not k[..., 16:].any() and not v[..., 16:, :].any()
