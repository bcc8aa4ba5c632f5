"""The elastic sampler: two-phase (thinking / solution) decoding with per-sequence budgets."""

from e1jax.sampling.generate import generate
from e1jax.sampling.ops import SamplingParams
from e1jax.sampling.prepare import GenerationOutput, SpecialIds, check_context, prompt_bucket
from e1jax.sampling.sweep import budget_sweep

__all__ = ["GenerationOutput", "SamplingParams", "SpecialIds", "budget_sweep", "check_context", "generate",
           "prompt_bucket"]
