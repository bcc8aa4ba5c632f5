"""Hugging Face checkpoints: single/sharded load, dtype conversion, mesh placement, save back, Hub ids."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

pytest.importorskip("torch")

from e1jax.errors import E1Error  # noqa: E402
from e1jax.models import Qwen  # noqa: E402
from e1jax.models.hf import load_model, save_hf  # noqa: E402
from e1jax.models.params import param_shardings  # noqa: E402
from e1jax.models.safetensors_io import SafetensorsFile  # noqa: E402
from e1jax.sharding import activate, make_mesh  # noqa: E402
from hf_fixtures import make_hf_model, torch_logits  # noqa: E402

# Dimensions that every mesh axis divides (vocab, heads, mlp, embed), except kv_heads=2 on tensor=4,
# which must fall back to replication.
SHAPES = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
TOKENS = np.random.RandomState(3).randint(0, 128, (2, 9))


def forward(config, params, tokens=TOKENS):
    positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    logits, _ = Qwen(config).apply({"params": params}, jnp.asarray(tokens), jnp.asarray(positions), jnp.ones(tokens.shape, bool))
    return np.asarray(logits)


def leaves(params):
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(params)}


def assert_bit_equal(a, b):
    la, lb = leaves(a), leaves(b)
    assert la.keys() == lb.keys()
    for key in la:
        assert la[key].dtype == lb[key].dtype, key
        assert la[key].shape == lb[key].shape, key
        np.testing.assert_array_equal(la[key].view(np.uint8), lb[key].view(np.uint8), err_msg=key)


def header_dtypes(model_dir):
    files = sorted(model_dir.glob("*.safetensors"))
    return {SafetensorsFile(f).header[n]["dtype"] for f in files for n in SafetensorsFile(f).names}


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    """A tiny random Qwen2 saved twice by transformers: one model.safetensors, and many shards with an index."""
    single = tmp_path_factory.mktemp("qwen2_single")
    torch_model = make_hf_model(single, "qwen2", seed=5, **SHAPES)
    sharded = tmp_path_factory.mktemp("qwen2_sharded")
    torch_model.save_pretrained(sharded, max_shard_size="20KB")
    return single, sharded, torch_model


@pytest.fixture(scope="module")
def loaded(qwen2):
    config, params = load_model(qwen2[0])
    return config, params, forward(config, params)


def test_single_file_load_matches_transformers(qwen2, loaded):
    config, params, logits = loaded
    assert (config.arch, config.vocab_size, config.num_kv_heads, config.param_dtype) == ("qwen2", 128, 2, "float32")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    np.testing.assert_allclose(logits, torch_logits(qwen2[2], TOKENS), atol=1e-4, rtol=0)


def test_sharded_index_load_equals_single_file(qwen2, loaded):
    sharded = qwen2[1]
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 3
    assert not (sharded / "model.safetensors").exists()
    _, params = load_model(sharded)
    assert_bit_equal(params, loaded[1])


def test_bf16_load_of_fp32_checkpoint(qwen2, loaded):
    assert header_dtypes(qwen2[0]) == {"F32"}
    config, params = load_model(qwen2[0], param_dtype="bfloat16", dtype="bfloat16")
    assert config.param_dtype == "bfloat16"
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    assert_bit_equal(params, jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16), loaded[1]))


def test_fp32_load_of_bf16_checkpoint(tmp_path, qwen2, loaded):
    import copy

    import torch

    bf16_model = copy.deepcopy(qwen2[2]).to(torch.bfloat16)
    bf16_model.save_pretrained(tmp_path)
    assert header_dtypes(tmp_path) == {"BF16"}
    config, params = load_model(tmp_path, param_dtype="float32")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    # bf16 -> fp32 is exact: the values are the fp32 originals rounded to bf16.
    expected = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), loaded[1])
    assert_bit_equal(params, expected)
    np.testing.assert_array_equal(
        np.asarray(params["embed_tokens"]), bf16_model.model.embed_tokens.weight.detach().float().numpy()
    )


@pytest.mark.parametrize(
    "spec,expected",
    [
        (
            "data=2,tensor=4",
            {
                "['embed_tokens']": ("tensor", None),
                "['lm_head']": (None, "tensor"),
                "['layers']['self_attn']['q_proj_kernel']": (None, None, "tensor", None),
                "['layers']['self_attn']['k_proj_kernel']": (None, None, None, None),  # 2 kv heads, 4-way tensor
                "['layers']['mlp']['down_proj']": (None, "tensor", None),
            },
        ),
        (
            "fsdp=8",
            {
                "['embed_tokens']": (None, "fsdp"),
                "['lm_head']": ("fsdp", None),
                "['layers']['self_attn']['q_proj_kernel']": (None, "fsdp", None, None),
                "['layers']['mlp']['down_proj']": (None, None, "fsdp"),
                "['norm']['scale']": ("fsdp",),
            },
        ),
    ],
)
def test_load_onto_mesh(qwen2, loaded, spec, expected):
    mesh = make_mesh(spec)
    config, params = load_model(qwen2[1], mesh=mesh)
    want = param_shardings(config, mesh)
    specs = {}
    for (path, x), s in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(want)):
        assert x.sharding.is_equivalent_to(s, x.ndim), jax.tree_util.keystr(path)
        assert x.sharding.mesh.shape == mesh.shape
        specs[jax.tree_util.keystr(path)] = tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))
    for key, axes in expected.items():
        assert specs[key] == axes, key
    assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated for x in jax.tree.leaves(params))
    assert_bit_equal(params, loaded[1])
    rows = np.tile(TOKENS, (4, 1))  # 8 rows: every batch axis of the meshes divides them
    with activate(mesh):
        logits = jax.jit(lambda p, t: forward_traced(config, p, t))(params, jnp.asarray(rows))
    np.testing.assert_allclose(np.asarray(logits), np.tile(loaded[2], (4, 1, 1)), atol=1e-5, rtol=0)


def forward_traced(config, params, tokens):
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return Qwen(config).apply({"params": params}, tokens, positions, jnp.ones(tokens.shape, bool))[0]


def fake_tokenizer_dir(path):
    path.mkdir()
    files = {
        "tokenizer.json": '{"version": "1.0", "marker": 1}',
        "tokenizer_config.json": '{"marker": 2}',
        "chat_template.jinja": "{{ messages[0]['content'] }}",
        "generation_config.json": '{"eos_token_id": [1, 2]}',
        "unrelated.bin": "not a tokenizer file",
    }
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_save_sharded_loads_in_transformers(tmp_path, qwen2, loaded):
    import torch
    from transformers import AutoModelForCausalLM

    config, params, logits = loaded
    tok = fake_tokenizer_dir(tmp_path / "tok")
    out = save_hf(params, config, tmp_path / "out", tokenizer_dir=tok, max_shard_bytes=40_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == {s.name for s in shards}
    assert all(s.stat().st_size <= 40_000 + 4096 for s in shards)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (tok / name).read_bytes()
    assert not (out / "unrelated.bin").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    np.testing.assert_allclose(torch_logits(reloaded, TOKENS), logits, atol=1e-4, rtol=0)
    # The saved tensors are exactly transformers' own.
    original = SafetensorsFile(qwen2[0] / "model.safetensors")
    for name in original.names:
        saved = SafetensorsFile(out / index["weight_map"][name]).get(name)
        np.testing.assert_array_equal(saved, original.get(name), err_msg=name)


def test_save_qwen3_tied_single_file_loads_in_transformers(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    torch_model = make_hf_model(tmp_path / "src", "qwen3", seed=2, tie_word_embeddings=True, head_dim=12)
    config, params = load_model(tmp_path / "src")
    assert config.tie_word_embeddings and "lm_head" not in params
    out = save_hf(params, config, tmp_path / "out", base_config=json.loads((tmp_path / "src" / "config.json").read_text()))
    assert (out / "model.safetensors").is_file() and not (out / "model.safetensors.index.json").exists()
    assert "lm_head.weight" not in SafetensorsFile(out / "model.safetensors").names
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    np.testing.assert_allclose(torch_logits(reloaded, TOKENS[:, :5]), torch_logits(torch_model, TOKENS[:, :5]), atol=1e-4, rtol=0)
    np.testing.assert_allclose(forward(config, params, TOKENS[:, :5]), torch_logits(reloaded, TOKENS[:, :5]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_load_save_load_is_bit_exact(tmp_path, qwen2, dtype):
    config, params = load_model(qwen2[1], param_dtype=dtype, dtype=dtype)
    out = save_hf(params, config, tmp_path / "a", tokenizer_dir=qwen2[1], max_shard_bytes=30_000)
    assert header_dtypes(out) == {"float32": {"F32"}, "bfloat16": {"BF16"}}[dtype]
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["dtype"] == dtype and hf_config["architectures"] == ["Qwen2ForCausalLM"]
    # Fields we do not model are kept from the source config.
    assert hf_config["initializer_range"] == json.loads((qwen2[1] / "config.json").read_text())["initializer_range"]
    config2, params2 = load_model(out, param_dtype=dtype, dtype=dtype)
    assert config2 == config
    assert_bit_equal(params2, params)
    # Saving again over the same directory replaces the shards instead of mixing old and new.
    save_hf(params2, config2, out)
    assert (out / "model.safetensors").is_file() and not list(out.glob("model-*-of-*.safetensors"))
    assert_bit_equal(load_model(out, param_dtype=dtype, dtype=dtype)[1], params)


def test_save_from_mesh_equals_save_from_host(tmp_path, qwen2, loaded):
    mesh = make_mesh("data=2,tensor=4")
    config, params = load_model(qwen2[0], mesh=mesh)
    out = save_hf(params, config, tmp_path / "m")
    a, b = SafetensorsFile(out / "model.safetensors"), SafetensorsFile(qwen2[0] / "model.safetensors")
    assert sorted(a.names) == sorted(b.names)
    for name in a.names:
        np.testing.assert_array_equal(a.get(name), b.get(name), err_msg=name)


def test_hub_id_goes_through_snapshot_download(monkeypatch, tmp_path, qwen2, loaded):
    import huggingface_hub

    local = tmp_path / "snapshot"
    shutil.copytree(qwen2[0], local)
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(local)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.chdir(tmp_path)
    config, params = load_model("someorg/tiny-qwen2")
    assert [c[0] for c in calls] == ["someorg/tiny-qwen2"]
    patterns = calls[0][1].get("allow_patterns")
    assert patterns is None or {"*.safetensors", "*.json"} <= set(patterns)
    assert_bit_equal(params, loaded[1])


def test_hub_download_failure_is_one_clear_error(monkeypatch, tmp_path):
    import huggingface_hub

    def failing_snapshot_download(repo_id, **kwargs):
        raise OSError(f"Cannot reach https://huggingface.co/{repo_id}\nsecond line of detail")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing_snapshot_download)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(E1Error) as err:
        load_model("someorg/no-such-model")
    message = str(err.value)
    assert "someorg/no-such-model" in message and "download" in message
    assert "\n" not in message
