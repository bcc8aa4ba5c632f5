"""Benchmarks behind `python -m e1jax bench`."""
