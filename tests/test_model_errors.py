"""Broken or unsupported checkpoints fail with one clear E1Error naming the problem."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")

from e1jax.errors import E1Error  # noqa: E402
from e1jax.models.config import ModelConfig  # noqa: E402
from e1jax.models.hf import load_model  # noqa: E402
from e1jax.models.safetensors_io import SafetensorsFile, save_file  # noqa: E402
from hf_fixtures import make_hf_model  # noqa: E402


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    single = tmp_path_factory.mktemp("src_single")
    model = make_hf_model(single, "qwen2", seed=1, num_hidden_layers=2)
    sharded = tmp_path_factory.mktemp("src_sharded")
    model.save_pretrained(sharded, max_shard_size="20KB")
    return single, sharded


@pytest.fixture
def model_dir(tmp_path, source):
    out = tmp_path / "model"
    shutil.copytree(source[0], out)
    return out


@pytest.fixture
def sharded_dir(tmp_path, source):
    out = tmp_path / "sharded"
    shutil.copytree(source[1], out)
    return out


def error_of(model, **overrides) -> str:
    with pytest.raises(E1Error) as err:
        load_model(model, **overrides)
    message = str(err.value)
    assert message and "\n" not in message
    return message


def edit_config(model_dir, **changes):
    path = model_dir / "config.json"
    hf = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            hf.pop(key, None)
        else:
            hf[key] = value
    path.write_text(json.dumps(hf))


def rewrite_tensors(model_dir, edit):
    path = model_dir / "model.safetensors"
    f = SafetensorsFile(path)
    tensors = {name: np.array(f.get(name)) for name in f.names}
    del f
    edit(tensors)
    save_file(tensors, path, {"format": "pt"})


def test_missing_directory(tmp_path):
    message = error_of(tmp_path / "nope")
    assert "not found" in message and str(tmp_path / "nope") in message


def test_path_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    assert "is not a directory" in error_of(tmp_path / "f")


def test_missing_config(model_dir):
    (model_dir / "config.json").unlink()
    message = error_of(model_dir)
    assert "config.json not found" in message


def test_invalid_json_config(model_dir):
    (model_dir / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"],')
    message = error_of(model_dir)
    assert "config.json is not valid JSON" in message


def test_config_that_is_not_an_object(model_dir):
    (model_dir / "config.json").write_text("[1, 2]")
    assert "is not a JSON object" in error_of(model_dir)


def test_config_missing_a_required_field(model_dir):
    edit_config(model_dir, hidden_size=None)
    assert error_of(model_dir) == "config is missing hidden_size"


def test_missing_safetensors(model_dir):
    (model_dir / "model.safetensors").unlink()
    message = error_of(model_dir)
    assert "no model.safetensors or model.safetensors.index.json" in message and str(model_dir) in message


def test_shard_listed_in_index_missing(sharded_dir):
    index = json.loads((sharded_dir / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    (sharded_dir / shard).unlink()
    message = error_of(sharded_dir)
    assert shard in message and "missing" in message


def test_invalid_index(sharded_dir):
    (sharded_dir / "model.safetensors.index.json").write_text('{"metadata": {}}')
    assert "not a valid safetensors index" in error_of(sharded_dir)


def test_missing_tensor_is_named(model_dir):
    rewrite_tensors(model_dir, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    message = error_of(model_dir)
    assert "model.layers.1.mlp.up_proj.weight" in message and "missing" in message


def test_missing_lm_head_with_untied_embeddings(model_dir):
    rewrite_tensors(model_dir, lambda t: t.pop("lm_head.weight"))
    message = error_of(model_dir)
    assert "lm_head.weight" in message and "tie_word_embeddings" in message


@pytest.mark.parametrize(
    "name,shape,expected",
    [
        ("model.layers.0.self_attn.q_proj.weight", (40, 48), (48, 48)),
        ("model.layers.1.self_attn.k_proj.bias", (16,), (24,)),
        ("model.embed_tokens.weight", (130, 48), (131, 48)),
        ("model.layers.0.mlp.down_proj.weight", (96, 48), (48, 96)),  # transposed
    ],
)
def test_wrong_shape_names_tensor_and_both_shapes(model_dir, name, shape, expected):
    rewrite_tensors(model_dir, lambda t: t.__setitem__(name, np.zeros(shape, np.float32)))
    message = error_of(model_dir)
    assert name in message and str(shape) in message and str(expected) in message


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_])
def test_integer_or_bool_tensor_is_refused(model_dir, dtype):
    name = "model.layers.0.post_attention_layernorm.weight"
    rewrite_tensors(model_dir, lambda t: t.__setitem__(name, np.ones(t[name].shape, dtype)))
    message = error_of(model_dir)
    assert name in message and np.dtype(dtype).name in message and "cannot be converted to float32" in message


def test_float16_tensor_is_converted(model_dir):
    name = "model.norm.weight"
    original = {}

    def to_fp16(t):
        original["x"] = t[name]
        t[name] = t[name].astype(np.float16)

    rewrite_tensors(model_dir, to_fp16)
    _, params = load_model(model_dir)
    np.testing.assert_array_equal(np.asarray(params["norm"]["scale"]), original["x"].astype(np.float16).astype(np.float32))


def test_truncated_safetensors(model_dir):
    path = model_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    assert "past the end of the file" in error_of(model_dir)


def test_garbage_safetensors(model_dir):
    (model_dir / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    assert "is not a safetensors file" in error_of(model_dir)


def test_unsupported_architecture(model_dir):
    edit_config(model_dir, architectures=["LlamaForCausalLM"], model_type="llama")
    message = error_of(model_dir)
    assert "LlamaForCausalLM" in message and "Qwen2ForCausalLM" in message and "Qwen3ForCausalLM" in message


def test_sliding_window(model_dir):
    edit_config(model_dir, use_sliding_window=True, sliding_window=64)
    message = error_of(model_dir)
    assert "sliding" in message and "not supported" in message


@pytest.mark.parametrize(
    "changes",
    [
        {"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}},  # transformers 4 style
        {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}},  # transformers 5 style
    ],
)
def test_unsupported_rope_scaling(model_dir, changes):
    edit_config(model_dir, **changes)
    message = error_of(model_dir)
    kind = next(iter(changes.values())).get("type") or next(iter(changes.values())).get("rope_type")
    assert kind in message and "not supported" in message


def test_default_rope_parameters_are_accepted():
    hf = json.loads(json.dumps(dict(
        architectures=["Qwen2ForCausalLM"], vocab_size=11, hidden_size=8, intermediate_size=16,
        num_hidden_layers=1, num_attention_heads=2, rope_scaling=None,
        rope_parameters={"rope_type": "default", "rope_theta": 5e5},
    )))
    config = ModelConfig.from_hf_dict(hf)
    assert config.rope_theta == 5e5 and config.num_kv_heads == 2 and config.head_dim == 4


def test_bad_head_counts(model_dir):
    edit_config(model_dir, num_key_value_heads=4)
    message = error_of(model_dir)
    assert "num_attention_heads (6)" in message and "num_key_value_heads (4)" in message


def test_unknown_dtype_override(model_dir):
    assert "param_dtype 'float64'" in error_of(model_dir, param_dtype="float64")
