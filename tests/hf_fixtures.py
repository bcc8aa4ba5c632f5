"""Tiny random transformers models saved as Hugging Face directories, for parity tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

QWEN2_BASE = dict(
    vocab_size=131,
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=3,
    max_position_embeddings=256,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    use_sliding_window=False,
)


def make_hf_model(out_dir: Path, arch: str = "qwen2", seed: int = 0, **overrides):
    """Build a random transformers Qwen2/Qwen3 model, save it to `out_dir`, return the torch model."""
    import torch
    import transformers

    torch.manual_seed(seed)
    values = dict(QWEN2_BASE)
    values.update(overrides)
    if arch == "qwen2":
        config = transformers.Qwen2Config(**values)
        model = transformers.Qwen2ForCausalLM(config)
    elif arch == "qwen3":
        values.setdefault("head_dim", 16)
        values.setdefault("attention_bias", False)
        config = transformers.Qwen3Config(**values)
        model = transformers.Qwen3ForCausalLM(config)
    else:
        raise ValueError(arch)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))  # non-trivial norms so a mix-up shows
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model = model.float().eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    return model


def torch_logits(model, tokens: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    import torch

    with torch.no_grad():
        t = torch.tensor(np.asarray(tokens), dtype=torch.long)
        kwargs = {}
        if attention_mask is not None:
            m = torch.tensor(np.asarray(attention_mask), dtype=torch.long)
            kwargs = {"attention_mask": m, "position_ids": (m.cumsum(-1) - 1).clamp(min=0)}
        return model(t, **kwargs).logits.float().numpy()
