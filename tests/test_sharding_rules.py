"""Logical-axis rules: an indivisible dimension is an error naming the tensor, the dimension and
the mesh, except for the replications listed on purpose (kv heads), which are logged once."""

from __future__ import annotations

import logging

import jax
import pytest
from jax.sharding import PartitionSpec

from e1jax.errors import E1Error
from e1jax.models.config import ModelConfig
from e1jax.models.params import param_shardings
from e1jax.rl.config import load_train_config
from e1jax.rl.programs import check_batch_split
from e1jax.sharding import logical_to_spec, make_mesh

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")


def test_indivisible_dimension_is_an_error_naming_tensor_dimension_and_mesh():
    mesh = make_mesh("fsdp=8")
    assert logical_to_spec(("batch", "length"), (16, 5), mesh) == PartitionSpec("fsdp", None)
    with pytest.raises(E1Error) as err:
        logical_to_spec(("batch", "length"), (4, 5), mesh, "update batch tokens")
    message = str(err.value)
    assert "update batch tokens" in message and "batch = 4" in message and "fsdp=8" in message
    assert "\n" not in message
    with pytest.raises(E1Error, match="vocab = 97"):
        param_shardings(ModelConfig("qwen2", 97, 64, 128, 2, 8, 4, 8), make_mesh("data=2,tensor=4"))


def test_kv_heads_fewer_than_the_tensor_axis_are_replicated_and_said_once(caplog, monkeypatch):
    import e1jax.sharding

    monkeypatch.setattr(e1jax.sharding, "_said", set())  # earlier tests in this process may have said it
    mesh = make_mesh("data=2,tensor=4")
    config = ModelConfig("qwen2", 128, 64, 128, 2, 8, 2, 8)  # 2 kv heads on tensor=4
    with caplog.at_level(logging.WARNING, logger="e1jax.sharding"):
        shardings = param_shardings(config, mesh)
        param_shardings(config, mesh)
    k = shardings["layers"]["self_attn"]["k_proj_kernel"]
    assert tuple(k.spec) in ((None, None, None, None), (None, None, None), ())
    said = [r for r in caplog.records if "kv_heads = 2" in r.getMessage()]
    assert len(said) == 1 and "on purpose" in said[0].getMessage()
    q = shardings["layers"]["self_attn"]["q_proj_kernel"]
    assert "tensor" in tuple(q.spec)


def test_micro_batch_that_does_not_split_over_the_batch_devices_names_the_knob():
    cfg = load_train_config(None, ["batch.prompts_per_step=4", "batch.mini_batch=2", "rollout.n=2",
                                   "batch.micro_batch=2"], require_model=False)
    with pytest.raises(E1Error, match=r"batch.micro_batch=2 rows do not split over the mesh's 8 batch devices"):
        check_batch_split(cfg, make_mesh("fsdp=8"))
    check_batch_split(cfg, make_mesh("fsdp=2,tensor=4"))
