"""The rollout's decode copy of the weights: one reshard from the sharded training params, on an
inference mesh over the same devices; the same tokens as decoding from the training params."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from e1jax.errors import E1Error
from e1jax.models.config import PRESETS, ModelConfig
from e1jax.models.params import init_params
from e1jax.models.qwen import is_unrolled, kernels_out_in
from e1jax.sampling import SamplingParams, SpecialIds, generate
from e1jax.sampling.inference import choose_tensor_parallel, inference_layout
from e1jax.sharding import make_mesh

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
CFG = ModelConfig("qwen2", 128, 32, 64, 2, 4, 2, 8, max_position_embeddings=512)
IDS = SpecialIds(think_close_ids=(5,), eos_ids=(6,), pad_id=0)
PROMPTS = [[1, 2, 3, 9], [4, 5, 7], [8, 9, 10, 11, 12], [13]]


def _sample(config, params, mesh):
    out = generate(config, params, PROMPTS, ids=IDS, think_budget=12, solution_budget=6, n=2, seed=3, mesh=mesh,
                   sampling=SamplingParams(temperature=0.9))
    return out.tokens, out.lengths, out.logprobs


@pytest.mark.parametrize("platform,tensor", [("cpu", 0), ("tpu", 0), ("tpu", 2)])
def test_decode_copy_samples_the_same_tokens_as_the_training_params(platform, tensor):
    reference = _sample(CFG, init_params(CFG, 0), None)
    mesh = make_mesh("fsdp=8")
    params = init_params(CFG, 0, mesh=mesh)
    layout = inference_layout(CFG, mesh, tensor_parallel=tensor, platform=platform)
    assert layout.mesh.shape == {"data": 8 // max(tensor, 1), "fsdp": 1, "tensor": max(tensor, 1)}
    assert list(layout.mesh.devices.flat) == list(mesh.devices.flat)  # the same devices, in the same order
    copy = layout(params)
    assert is_unrolled(copy) and kernels_out_in(CFG, copy) == (platform == "cpu")
    leaf = copy["layer_0"]["mlp"]["gate_proj"]
    assert leaf.sharding.mesh.shape == layout.mesh.shape
    if tensor:
        assert "tensor" in tuple(leaf.sharding.spec)  # split over the tensor axis, not over fsdp
    else:
        assert leaf.sharding.is_fully_replicated  # one replica per device
    tokens, lengths, logprobs = _sample(layout.config, copy, layout.mesh)
    np.testing.assert_array_equal(lengths, reference[1])
    np.testing.assert_array_equal(tokens, reference[0])
    np.testing.assert_allclose(logprobs, reference[2], atol=1e-5)


def test_tensor_parallel_is_chosen_by_the_chips_memory():
    small = PRESETS["r1-distill-qwen-1.5b"].replace(dtype="bfloat16")  # 3.6 GB of bf16 weights
    big = PRESETS["r1-distill-qwen-14b"].replace(dtype="bfloat16")  # 29.6 GB
    assert choose_tensor_parallel(small, 16, None) == 1  # memory unknown (CPU): replicated
    assert choose_tensor_parallel(small, 16, 32 * 2**30) == 1
    assert choose_tensor_parallel(big, 16, 32 * 2**30) == 4  # 7.4 GB shards: a quarter of 32 GiB
    assert choose_tensor_parallel(big, 16, 95 * 10**9) == 2
    assert choose_tensor_parallel(big, 16, 95 * 10**9, requested=8) == 8
    with pytest.raises(E1Error, match="rollout.tensor_parallel=3"):
        choose_tensor_parallel(big, 16, None, requested=3)
    with pytest.raises(E1Error, match="set rollout.tensor_parallel"):
        choose_tensor_parallel(big, 2, 16 * 10**9)
