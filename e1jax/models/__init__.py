"""Qwen2/Qwen3 models: config, Flax module, params, Hugging Face checkpoints."""

from e1jax.models.config import PRESETS, ModelConfig
from e1jax.models.qwen import Qwen, init_cache, positions_from_mask

__all__ = ["ModelConfig", "PRESETS", "Qwen", "init_cache", "positions_from_mask"]
