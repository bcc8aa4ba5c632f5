"""Model configuration: a frozen dataclass read from a Hugging Face config.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from e1jax.dtypes import check_dtype
from e1jax.errors import E1Error
from e1jax.models.attention import AttentionKernel, XlaAttention

SUPPORTED_ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: Literal["qwen2", "qwen3"]
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: Literal["none", "full", "dots"] = "none"
    # whole-sequence attention (training, scoring, prefill): e1jax.models.attention.attention_for(platform)
    attention: AttentionKernel = XlaAttention()

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise E1Error(
                f"num_attention_heads ({self.num_heads}) must be a multiple of num_key_value_heads ({self.num_kv_heads})"
            )
        for name in ("param_dtype", "dtype"):
            check_dtype(getattr(self, name), name)

    @property
    def qkv_bias(self) -> bool:
        return self.arch == "qwen2"

    @property
    def qk_norm(self) -> bool:
        return self.arch == "qwen3"

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        e, f, v, d = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
        h, kv = self.num_heads, self.num_kv_heads
        attn = e * h * d + 2 * e * kv * d + h * d * e
        if self.qkv_bias:
            attn += h * d + 2 * kv * d
        if self.qk_norm:
            attn += 2 * d
        layer = attn + 3 * e * f + 2 * e
        return v * e * (1 if self.tie_word_embeddings else 2) + self.num_layers * layer + e

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], **overrides: Any) -> "ModelConfig":
        archs = hf.get("architectures") or []
        arch = None
        for name in archs:
            arch = SUPPORTED_ARCHITECTURES.get(name)
            if arch:
                break
        if arch is None:
            model_type = hf.get("model_type")
            arch = {"qwen2": "qwen2", "qwen3": "qwen3"}.get(model_type or "")
        if arch is None:
            found = ", ".join(archs) or hf.get("model_type") or "none"
            raise E1Error(
                f"unsupported architecture {found}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if hf.get("use_sliding_window"):
            raise E1Error("sliding-window attention (use_sliding_window: true) is not supported; supported: full attention")
        # transformers < 5 writes `rope_scaling`, >= 5 writes `rope_parameters`; both may name a scaling type.
        for key in ("rope_scaling", "rope_parameters"):
            rope = hf.get(key)
            rope_type = (rope.get("rope_type") or rope.get("type")) if isinstance(rope, dict) else None
            if rope_type not in (None, "default"):
                raise E1Error(f"{key} type '{rope_type}' is not supported; supported: none (default RoPE)")
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise E1Error(f"hidden_act '{act}' is not supported; supported: silu")
        if arch == "qwen3" and hf.get("attention_bias"):
            raise E1Error("Qwen3 with attention_bias: true is not supported; supported: attention_bias false")
        missing = [k for k in REQUIRED_KEYS if hf.get(k) is None]
        if missing:
            raise E1Error(f"config is missing {', '.join(missing)}")
        heads = int(hf["num_attention_heads"])
        hidden = int(hf["hidden_size"])
        head_dim = hf.get("head_dim") or hidden // heads
        rope_theta = hf.get("rope_theta")
        if rope_theta is None:
            rope_theta = (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        values = dict(
            arch=arch,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            rope_theta=float(rope_theta),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_json_file(cls, path: str | Path, **overrides: Any) -> "ModelConfig":
        path = Path(path)
        if not path.is_file():
            raise E1Error(f"config.json not found: {path}")
        try:
            hf = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise E1Error(f"{path} is not valid JSON: {err}") from err
        if not isinstance(hf, dict):
            raise E1Error(f"{path} is not a JSON object")
        return cls.from_hf_dict(hf, **overrides)

    def to_hf_dict(self, base: dict[str, Any] | None = None) -> dict[str, Any]:
        """A transformers config.json for this model (fields of `base` kept where not ours)."""
        hf = dict(base or {})
        arch_name = {v: k for k, v in SUPPORTED_ARCHITECTURES.items()}[self.arch]
        hf.update(
            architectures=[arch_name],
            model_type=self.arch,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            max_position_embeddings=self.max_position_embeddings,
            hidden_act="silu",
            use_sliding_window=False,
            torch_dtype=self.param_dtype,
            dtype=self.param_dtype,  # transformers >= 5 reads `dtype` and prefers it over `torch_dtype`
        )
        if isinstance(hf.get("rope_parameters"), dict):  # transformers >= 5 prefers it over rope_theta
            hf["rope_parameters"] = {**hf["rope_parameters"], "rope_theta": self.rope_theta}
        if self.arch == "qwen3":
            hf["attention_bias"] = False
        return hf


PRESETS: dict[str, ModelConfig] = {
    "r1-distill-qwen-1.5b": ModelConfig("qwen2", 151936, 1536, 8960, 28, 12, 2, 128, rope_theta=10000.0, max_position_embeddings=131072),
    "r1-distill-qwen-7b": ModelConfig("qwen2", 152064, 3584, 18944, 28, 28, 4, 128, rope_theta=10000.0, max_position_embeddings=131072),
    "r1-distill-qwen-14b": ModelConfig("qwen2", 152064, 5120, 13824, 48, 40, 8, 128, rope_theta=1000000.0, max_position_embeddings=131072, rms_norm_eps=1e-5),
    "qwen2.5-0.5b": ModelConfig("qwen2", 151936, 896, 4864, 24, 14, 2, 64, rope_theta=1000000.0, tie_word_embeddings=True),
}
