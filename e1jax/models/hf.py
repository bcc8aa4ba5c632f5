"""Hugging Face checkpoints <-> e1jax params, both directions.

Loading reads safetensors lazily, converts one tensor at a time straight to the
target dtype and places it on the mesh (only the local shards on multi-host).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import jax
import ml_dtypes
import numpy as np
from jax.sharding import Mesh

from e1jax.errors import E1Error
from e1jax.models.attention import attention_for
from e1jax.models.config import ModelConfig
from e1jax.models.params import Params, abstract_params, param_shardings
from e1jax.sharding import from_host, to_host
from e1jax.models.safetensors_io import SafetensorsFile, dtype_from_name, save_file, shard_plan

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One e1jax leaf and its Hugging Face tensor(s) (`{i}` = layer index)."""

    path: tuple[str, ...]
    hf_name: str
    to_ours: Callable[[np.ndarray, ModelConfig], np.ndarray]
    to_hf: Callable[[np.ndarray, ModelConfig], np.ndarray]
    per_layer: bool = True


def _identity(x, cfg):
    return x


def _t(x, cfg):
    return x.T


def _heads_in(heads_attr: str):
    def to_ours(w, cfg):  # (H*D, E) -> (E, H, D)
        return w.T.reshape(cfg.hidden_size, getattr(cfg, heads_attr), cfg.head_dim)

    def to_hf(w, cfg):
        return w.reshape(cfg.hidden_size, -1).T

    return to_ours, to_hf


def _bias_in(heads_attr: str):
    def to_ours(b, cfg):
        return b.reshape(getattr(cfg, heads_attr), cfg.head_dim)

    def to_hf(b, cfg):
        return b.reshape(-1)

    return to_ours, to_hf


def _o_to_ours(w, cfg):  # (E, H*D) -> (H, D, E)
    return w.T.reshape(cfg.num_heads, cfg.head_dim, cfg.hidden_size)


def _o_to_hf(w, cfg):
    return w.reshape(-1, cfg.hidden_size).T


def tensor_maps(cfg: ModelConfig) -> list[TensorMap]:
    layer = "model.layers.{i}."
    maps = [
        TensorMap(("embed_tokens",), "model.embed_tokens.weight", _identity, _identity, per_layer=False),
        TensorMap(("norm", "scale"), "model.norm.weight", _identity, _identity, per_layer=False),
        TensorMap(("layers", "input_layernorm", "scale"), layer + "input_layernorm.weight", _identity, _identity),
        TensorMap(("layers", "post_attention_layernorm", "scale"), layer + "post_attention_layernorm.weight", _identity, _identity),
        TensorMap(("layers", "self_attn", "q_proj_kernel"), layer + "self_attn.q_proj.weight", *_heads_in("num_heads")),
        TensorMap(("layers", "self_attn", "k_proj_kernel"), layer + "self_attn.k_proj.weight", *_heads_in("num_kv_heads")),
        TensorMap(("layers", "self_attn", "v_proj_kernel"), layer + "self_attn.v_proj.weight", *_heads_in("num_kv_heads")),
        TensorMap(("layers", "self_attn", "o_proj"), layer + "self_attn.o_proj.weight", _o_to_ours, _o_to_hf),
        TensorMap(("layers", "mlp", "gate_proj"), layer + "mlp.gate_proj.weight", _t, _t),
        TensorMap(("layers", "mlp", "up_proj"), layer + "mlp.up_proj.weight", _t, _t),
        TensorMap(("layers", "mlp", "down_proj"), layer + "mlp.down_proj.weight", _t, _t),
    ]
    if cfg.qkv_bias:
        maps += [
            TensorMap(("layers", "self_attn", "q_proj_bias"), layer + "self_attn.q_proj.bias", *_bias_in("num_heads")),
            TensorMap(("layers", "self_attn", "k_proj_bias"), layer + "self_attn.k_proj.bias", *_bias_in("num_kv_heads")),
            TensorMap(("layers", "self_attn", "v_proj_bias"), layer + "self_attn.v_proj.bias", *_bias_in("num_kv_heads")),
        ]
    if cfg.qk_norm:
        maps += [
            TensorMap(("layers", "self_attn", "q_norm", "scale"), layer + "self_attn.q_norm.weight", _identity, _identity),
            TensorMap(("layers", "self_attn", "k_norm", "scale"), layer + "self_attn.k_norm.weight", _identity, _identity),
        ]
    if not cfg.tie_word_embeddings:
        maps.append(TensorMap(("lm_head",), "lm_head.weight", _t, _t, per_layer=False))
    return maps


def _get_path(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set_path(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


class _TensorIndex:
    """Name -> SafetensorsFile over a single file or an index-sharded set."""

    def __init__(self, model_dir: Path):
        index_path = model_dir / "model.safetensors.index.json"
        single = model_dir / "model.safetensors"
        self.files: dict[str, SafetensorsFile] = {}
        self.location: dict[str, str] = {}
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise E1Error(f"{index_path} is not a valid safetensors index (needs 'weight_map')") from err
            for name, filename in weight_map.items():
                if not (model_dir / filename).is_file():
                    raise E1Error(f"checkpoint shard {filename} listed in {index_path.name} is missing from {model_dir}")
                self.location[name] = filename
        elif single.is_file():
            self.files["model.safetensors"] = SafetensorsFile(single)
            for name in self.files["model.safetensors"].names:
                self.location[name] = "model.safetensors"
        else:
            raise E1Error(f"no model.safetensors or model.safetensors.index.json in {model_dir}")
        self.model_dir = model_dir

    def get(self, name: str) -> np.ndarray | None:
        filename = self.location.get(name)
        if filename is None:
            return None
        if filename not in self.files:
            self.files[filename] = SafetensorsFile(self.model_dir / filename)
        return self.files[filename].get(name)


def _is_float(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.floating) or dtype == np.dtype(ml_dtypes.bfloat16)


def resolve_model_dir(model: str | Path) -> Path:
    """A local directory as is; otherwise a Hugging Face Hub id, downloaded (safetensors, config, tokenizer)."""
    path = Path(model)
    if path.is_dir():
        return path
    if path.exists():
        raise E1Error(f"model path {path} is not a directory")
    if str(model).startswith((".", "/", "~")) or str(model).count("/") != 1:
        raise E1Error(f"model directory not found: {model}")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            repo_id=str(model),
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"],
        )
    except Exception as err:  # network, auth, unknown repo: all end the same way for the user
        raise E1Error(f"model directory not found and Hub download of '{model}' failed: {err}".splitlines()[0]) from err
    return Path(local)


def load_config(model_dir: str | Path, **overrides: Any) -> ModelConfig:
    """The model's config.json as a ModelConfig; whole-sequence attention is the default
    backend's kernel unless `attention` is given."""
    model_dir = resolve_model_dir(model_dir)
    overrides.setdefault("attention", attention_for(jax.default_backend()))
    return ModelConfig.from_json_file(model_dir / "config.json", **overrides)


def load_params(model_dir: str | Path, config: ModelConfig, mesh: Mesh | None = None) -> Params:
    """Read a HF checkpoint into params of `config.param_dtype`, placed on `mesh` if given."""
    model_dir = resolve_model_dir(model_dir)
    index = _TensorIndex(model_dir)
    abstract = abstract_params(config)
    shardings = param_shardings(config, mesh) if mesh is not None else None
    target = dtype_from_name(config.param_dtype)
    params: dict = {}
    for tmap in tensor_maps(config):
        expected = _get_path(abstract, tmap.path).shape
        layers = range(config.num_layers) if tmap.per_layer else [None]
        host = np.empty(expected, target)
        for i in layers:
            name = tmap.hf_name.format(i=i)
            raw = index.get(name)
            if raw is None:
                if name == "lm_head.weight":
                    raise E1Error(f"tensor lm_head.weight is missing from {model_dir} and tie_word_embeddings is false")
                raise E1Error(f"tensor {name} is missing from {model_dir}")
            want = expected[1:] if tmap.per_layer else expected
            hf_shape = tuple(tmap.to_hf(np.empty(want, np.int8), config).shape)
            if tuple(raw.shape) != hf_shape:
                raise E1Error(f"tensor {name} has shape {tuple(raw.shape)} but the config expects {hf_shape}")
            if not _is_float(raw.dtype):
                # numpy would cast ints/bools silently; a weight stored that way is a broken checkpoint.
                raise E1Error(f"tensor {name} has dtype {raw.dtype}, which cannot be converted to {config.param_dtype} (float weights expected)")
            converted = tmap.to_ours(raw, config).astype(target)
            if tmap.per_layer:
                host[i] = converted
            else:
                host = converted
        if shardings is None:
            array = jax.device_put(host)
        else:
            sharding = _get_path(shardings, tmap.path)
            array = from_host(host, sharding)
        _set_path(params, tmap.path, array)
        del host
    return params


def load_model(model: str | Path, mesh: Mesh | None = None, **overrides: Any) -> tuple[ModelConfig, Params]:
    model_dir = resolve_model_dir(model)
    config = load_config(model_dir, **overrides)
    return config, load_params(model_dir, config, mesh)


def save_hf(
    params: Params,
    config: ModelConfig,
    out_dir: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    base_config: dict | None = None,
    max_shard_bytes: int = 4 * 1024**3,
    dtype: str | None = None,
) -> Path:
    """Write params as a transformers-loadable directory (config, safetensors shards, tokenizer)."""
    out_dir = Path(out_dir)
    write = jax.process_index() == 0
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
    target = dtype_from_name(dtype or config.param_dtype)
    tensors: dict[str, np.ndarray] = {}
    for tmap in tensor_maps(config):
        value = to_host(_get_path(params, tmap.path))
        if tmap.per_layer:
            for i in range(config.num_layers):
                tensors[tmap.hf_name.format(i=i)] = np.ascontiguousarray(tmap.to_hf(value[i], config).astype(target))
        else:
            tensors[tmap.hf_name] = np.ascontiguousarray(tmap.to_hf(value, config).astype(target))
    if not write:
        return out_dir
    if base_config is None and tokenizer_dir is not None and (Path(tokenizer_dir) / "config.json").is_file():
        base_config = json.loads((Path(tokenizer_dir) / "config.json").read_text())
    hf_config = config.replace(param_dtype=dtype or config.param_dtype).to_hf_dict(base_config)
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
    for stale in list(out_dir.glob("model*.safetensors")) + list(out_dir.glob("model.safetensors.index.json")):
        stale.unlink()
    names = sorted(tensors)
    shards = shard_plan([(n, tensors[n].nbytes) for n in names], max_shard_bytes)
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file({n: tensors[n] for n in shards[0]}, out_dir / "model.safetensors", metadata)
    else:
        weight_map = {}
        for k, shard in enumerate(shards, 1):
            filename = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
            save_file({n: tensors[n] for n in shard}, out_dir / filename, metadata)
            weight_map.update({n: filename for n in shard})
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    if tokenizer_dir is not None:
        copy_tokenizer_files(tokenizer_dir, out_dir)
    return out_dir


def copy_tokenizer_files(src_dir: str | Path, dst_dir: str | Path) -> None:
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    if src_dir.resolve() == dst_dir.resolve():
        return
    for name in TOKENIZER_FILES:
        if (src_dir / name).is_file():
            shutil.copy2(src_dir / name, dst_dir / name)
