"""Chunked, response-only log-probs and entropies equal the plain full-vocabulary computation,
values and gradients, whatever the chunk size."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e1jax.models.config import ModelConfig
from e1jax.models.params import init_params
from e1jax.models.qwen import Qwen, positions_from_mask
from e1jax.models.scoring import chunked_logprobs, next_token_logprobs

CFG = ModelConfig("qwen2", 97, 32, 64, 2, 4, 2, 8)
TIED = CFG.replace(tie_word_embeddings=True)


def _batch():
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (3, 21)), jnp.int32)
    mask = jnp.ones(tokens.shape, bool).at[0, :5].set(False).at[2, 17:].set(False)
    return tokens, mask


def _plain(config, params, tokens, mask, temperature, width):
    """Full logits over every position, log-softmax of the whole tensor."""
    logits, _ = Qwen(config).apply({"params": params}, tokens, positions_from_mask(mask), mask)
    logp_all = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32) / temperature, axis=-1)
    logp = jnp.take_along_axis(logp_all, tokens[:, 1:, None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return logp[:, -width:], entropy[:, -width:]


@pytest.mark.parametrize("config", [CFG, TIED], ids=["untied", "tied"])
@pytest.mark.parametrize("chunk,width", [(1, 20), (4, 9), (7, 20), (64, 12)])
def test_chunked_response_logprobs_equal_plain(config, chunk, width):
    params = init_params(config, 1)
    tokens, mask = _batch()
    want_logp, want_ent = _plain(config, params, tokens, mask, 0.6, width)
    logp, ent = next_token_logprobs(config, params, tokens, mask, 0.6, with_entropy=True, response_width=width, chunk=chunk)
    assert logp.shape == (3, width) and logp.dtype == jnp.float32 and ent.dtype == jnp.float32
    np.testing.assert_allclose(logp, want_logp, atol=2e-6)
    np.testing.assert_allclose(ent, want_ent, atol=2e-6)

    weights = jnp.asarray(np.random.default_rng(2).normal(size=(3, width)), jnp.float32)

    def loss(fn):
        return lambda p: jnp.sum(weights * (fn(p)[0] - 0.1 * fn(p)[1]))

    want = jax.grad(loss(lambda p: _plain(config, p, tokens, mask, 0.6, width)))(params)
    got = jax.grad(loss(lambda p: next_token_logprobs(config, p, tokens, mask, 0.6, True, width, chunk)))(params)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def test_backward_recomputes_the_chunk_logits():
    """The compiled gradient keeps no (rows, positions, vocab) tensor: its temporaries are a small
    fraction of one full fp32 logits tensor."""
    b, length, e, v, chunk = 2, 1024, 16, 4096, 16
    hidden = jax.ShapeDtypeStruct((b, length, e), jnp.float32)
    head = jax.ShapeDtypeStruct((e, v), jnp.float32)
    targets = jnp.zeros((b, length), jnp.int32)

    def loss(h, w, chunk):
        logp, ent = chunked_logprobs(h, w, targets, 0.7, True, chunk)
        return jnp.sum(logp) + jnp.sum(ent)

    full_logits = b * length * v * 4
    chunked = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2).lower(hidden, head, chunk).compile()
    whole = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2).lower(hidden, head, length).compile()
    assert chunked.memory_analysis().temp_size_in_bytes < full_logits / 8
    assert whole.memory_analysis().temp_size_in_bytes >= full_logits  # one chunk of every position: the whole tensor
