"""KV-cache decode equals the full forward; left padding equals running alone; mesh equals one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e1jax.models import ModelConfig, Qwen, init_cache, positions_from_mask
from e1jax.models.params import init_params
from e1jax.sharding import activate, make_mesh

CONFIGS = [
    ModelConfig("qwen2", 101, 64, 128, 2, 4, 2, 16, rope_theta=1e6),
    ModelConfig("qwen3", 89, 48, 96, 3, 6, 1, 10, tie_word_embeddings=True),
]


def full_logits(cfg, params, tokens, mask):
    logits, _ = Qwen(cfg).apply({"params": params}, tokens, positions_from_mask(mask), mask)
    return logits


@pytest.mark.parametrize("cfg", CONFIGS, ids=["qwen2", "qwen3"])
def test_incremental_decode_equals_full_forward(cfg):
    params = init_params(cfg, 0)
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size)
    mask = jnp.ones(tokens.shape, bool).at[1, :4].set(False)  # second row left-padded
    ref = full_logits(cfg, params, tokens, mask)
    model = Qwen(cfg)
    cache = init_cache(cfg, 2, 16)
    prefill = 5
    logits, cache = model.apply({"params": params}, tokens[:, :prefill], positions_from_mask(mask[:, :prefill]), mask[:, :prefill], cache)
    steps = [logits]
    positions = positions_from_mask(mask)
    for t in range(prefill, 12):
        logits, cache = model.apply({"params": params}, tokens[:, t : t + 1], positions[:, t : t + 1], mask[:, t : t + 1], cache)
        steps.append(logits)
    got = jnp.concatenate(steps, axis=1)
    valid = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(ref)[valid], atol=1e-5, rtol=0)
    assert int(cache["index"]) == 12


@pytest.mark.parametrize("cfg", CONFIGS, ids=["qwen2", "qwen3"])
def test_left_padded_batch_equals_each_alone(cfg):
    params = init_params(cfg, 3)
    rng = np.random.RandomState(0)
    lengths = [9, 4, 6]
    width = max(lengths)
    tokens = np.zeros((3, width), np.int32)
    mask = np.zeros((3, width), bool)
    seqs = [rng.randint(0, cfg.vocab_size, n) for n in lengths]
    for i, seq in enumerate(seqs):
        tokens[i, width - len(seq) :] = seq
        mask[i, width - len(seq) :] = True
    batch = np.asarray(full_logits(cfg, params, jnp.asarray(tokens), jnp.asarray(mask)))
    for i, seq in enumerate(seqs):
        alone = np.asarray(full_logits(cfg, params, jnp.asarray(seq[None]), jnp.ones((1, len(seq)), bool)))[0]
        np.testing.assert_allclose(batch[i, width - len(seq) :], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mesh_spec", ["data=2,tensor=4", "fsdp=8", "data=2,fsdp=2,tensor=2"])
def test_sharded_forward_equals_single_device(mesh_spec):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    cfg = ModelConfig("qwen2", 128, 64, 128, 2, 8, 4, 8)
    params = init_params(cfg, 0)
    tokens = jax.random.randint(jax.random.key(2), (8, 10), 0, cfg.vocab_size)  # 8 rows: every batch axis divides them
    mask = jnp.ones(tokens.shape, bool).at[0, :3].set(False)
    ref = np.asarray(full_logits(cfg, params, tokens, mask))

    mesh = make_mesh(mesh_spec)
    sharded = init_params(cfg, 0, mesh=mesh)
    q = sharded["layers"]["self_attn"]["q_proj_kernel"]
    assert len(q.sharding.device_set) == 8
    assert q.addressable_shards[0].data.size < q.size  # really split, not replicated
    with activate(mesh):
        got = jax.jit(lambda p, t, m: full_logits(cfg, p, t, m))(sharded, tokens, mask)
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5, rtol=0)
