"""Training checkpoints: the orbax store the trainer writes, and its conversion to and from Hugging Face."""

from e1jax.checkpoints.convert import hf_to_orbax, orbax_to_hf
from e1jax.checkpoints.store import CheckpointStore, abstract_like, model_config_from_meta, model_meta

__all__ = [
    "CheckpointStore",
    "abstract_like",
    "hf_to_orbax",
    "model_config_from_meta",
    "model_meta",
    "orbax_to_hf",
]
