"""e1jax: Elastic Reasoning (E1) in JAX/Flax."""

__version__ = "0.1.0"
