"""The elastic sampler: two-phase (thinking / solution) decoding with per-sequence budgets."""

from e1jax.sampling.generate import GenerationOutput, SpecialIds, generate
from e1jax.sampling.ops import SamplingParams
from e1jax.sampling.sweep import budget_sweep

__all__ = ["GenerationOutput", "SamplingParams", "SpecialIds", "budget_sweep", "generate"]
