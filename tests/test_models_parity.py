"""Logits parity with transformers' PyTorch Qwen2/Qwen3 on tiny random models (fp32)."""

import numpy as np
import pytest

pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402

from e1jax.models import Qwen  # noqa: E402
from e1jax.models.hf import load_model  # noqa: E402
from hf_fixtures import make_hf_model, torch_logits  # noqa: E402

CASES = [
    # (arch, overrides): GQA ratio 1, 2, 6, 7; tied/untied; rope 1e4/1e6; odd vocab; odd head_dim
    ("qwen2", dict(num_attention_heads=6, num_key_value_heads=6)),
    ("qwen2", dict(num_attention_heads=6, num_key_value_heads=3, rope_theta=1e6)),
    ("qwen2", dict(num_attention_heads=6, num_key_value_heads=1, tie_word_embeddings=True)),
    ("qwen2", dict(num_attention_heads=7, num_key_value_heads=1, hidden_size=56, vocab_size=97)),
    ("qwen3", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=20)),
    ("qwen3", dict(num_attention_heads=6, num_key_value_heads=1, head_dim=10, tie_word_embeddings=True, rope_theta=1e6)),
    ("qwen3", dict(num_attention_heads=7, num_key_value_heads=7, head_dim=18, vocab_size=103)),
]


@pytest.mark.parametrize("arch,overrides", CASES)
def test_logits_match_transformers(tmp_path, arch, overrides):
    torch_model = make_hf_model(tmp_path, arch, **overrides)
    config, params = load_model(tmp_path)
    rng = np.random.RandomState(1)
    tokens = rng.randint(0, config.vocab_size, (3, 11))
    positions = np.broadcast_to(np.arange(11), tokens.shape)
    logits, _ = Qwen(config).apply({"params": params}, jnp.asarray(tokens), jnp.asarray(positions), jnp.ones(tokens.shape, bool))
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits), torch_logits(torch_model, tokens), atol=1e-4, rtol=0)


def test_left_padded_logits_match_transformers(tmp_path):
    torch_model = make_hf_model(tmp_path, "qwen2")
    config, params = load_model(tmp_path)
    tokens = np.random.RandomState(2).randint(0, config.vocab_size, (2, 8))
    mask = np.ones_like(tokens)
    mask[1, :3] = 0
    from e1jax.models import positions_from_mask

    logits, _ = Qwen(config).apply({"params": params}, jnp.asarray(tokens), positions_from_mask(jnp.asarray(mask)), jnp.asarray(mask, bool))
    ref = torch_logits(torch_model, tokens, mask)
    np.testing.assert_allclose(np.asarray(logits)[mask == 1], ref[mask == 1], atol=1e-4, rtol=0)
