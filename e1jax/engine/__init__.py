"""The continuous-batching engine: decode slots over a paged KV cache with E1's budgets."""

from e1jax.engine.engine import Completion, Engine, EngineConfig, Request, response_width
from e1jax.engine.generate import engine_generate
from e1jax.engine.model import DecodeWeights

__all__ = ["Completion", "DecodeWeights", "Engine", "EngineConfig", "Request", "engine_generate", "response_width"]
