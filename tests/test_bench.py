"""`python -m e1jax bench`: the JSON report of decode, the matmul floor and the sweep."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e1jax.__main__ import main
from e1jax.bench.decode import time_matmuls_only
from e1jax.commands.bench import TINY


def test_quick_bench_reports_every_decode_and_sweep_field(capsys):
    pytest.importorskip("torch")
    code = main(["bench", "--quick", "--json", "--skip", "update"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["machine"]["read_bandwidth_gb_s"] > 0
    (row,) = result["decode"]
    assert row["model"] == "tiny" and row["batch"] == 8 and row["params"] == TINY.num_params()
    for field in ("e1jax_tokens_per_s", "transformers_tokens_per_s", "matmuls_only_tokens_per_s", "roofline_tokens_per_s",
                  "e1jax_compile_s", "e1jax_layout_s"):
        assert row[field] > 0, field
    assert row["ratio"] == pytest.approx(row["e1jax_tokens_per_s"] / row["transformers_tokens_per_s"])
    assert row["roofline_fraction"] == pytest.approx(row["e1jax_tokens_per_s"] / row["roofline_tokens_per_s"])
    sweep = result["sweep"]
    assert sweep["budgets"] == [8, 16, 24, 32]
    assert sweep["ratio"] == pytest.approx(sweep["sweep_s"] / sweep["separate_s"])
    assert "update" not in result
    tail = result["long_tail"]
    assert tail["requests"] == 16 and tail["emitted_tokens"] > 16 * 8
    assert tail["ratio"] == pytest.approx(tail["engine_tokens_per_s"] / tail["lockstep_tokens_per_s"], rel=1e-6)
    assert 0 < tail["engine_slot_utilisation"] <= 1


def test_matmul_floor_runs_the_products_of_the_decode_layout(monkeypatch):
    """The floor's step multiplies every projection and the head once, through the sampler's `dense`."""
    import e1jax.bench.decode as decode

    if jax.default_backend() != "cpu":
        pytest.skip("the floor is measured on the CPU decode layout")
    shapes = []
    real_dense = decode.dense

    def recording_dense(x, kernel, out_in=False, preferred_element_type=None):
        shapes.append((x.shape, kernel.shape, out_in))
        return real_dense(x, kernel, out_in, preferred_element_type)

    monkeypatch.setattr(decode, "dense", recording_dense)
    from e1jax.models.params import init_params

    cfg = TINY.replace(num_layers=2)
    assert time_matmuls_only(cfg, init_params(cfg, 0), batch=3, repeats=1) > 0
    e, f, q, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    per_layer = [((3, e), (q, e)), ((3, e), (kv, e)), ((3, e), (kv, e)), ((3, q), (e, q)), ((3, e), (f, e)), ((3, e), (f, e)), ((3, f), (e, f))]
    assert [(x, k) for x, k, _ in shapes] == per_layer * 2 + [((3, e), (cfg.vocab_size, e))]
    assert all(out_in for _, _, out_in in shapes)


def test_dense_out_in_equals_dense_in_out():
    x = jax.random.normal(jax.random.key(0), (2, 3, 16))
    kernel = jax.random.normal(jax.random.key(1), (16, 24))
    from e1jax.models.qwen import dense

    ref = np.asarray(x.reshape(6, 16) @ kernel).reshape(2, 3, 24)
    np.testing.assert_allclose(np.asarray(dense(x, kernel)), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.jit(dense, static_argnums=2)(x, kernel.T + 0, True)), ref, rtol=1e-5, atol=1e-5)
    got = dense(x.astype(jnp.bfloat16), kernel.T.astype(jnp.bfloat16), True, preferred_element_type=jnp.float32)
    assert got.dtype == jnp.float32 and got.shape == (2, 3, 24)
