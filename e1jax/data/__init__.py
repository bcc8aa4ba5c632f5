"""Datasets: readers (JSON / JSONL / parquet / Hub), the E1 prompt, the grain training
pipeline (`e1jax.data.pipeline`) and the tfds builder (`e1jax.data.tfds_e1`).

The heavier modules are imported on demand, not from here.
"""

from e1jax.data.prompts import E1_INSTRUCTION, e1_user_message, strip_e1_instruction
from e1jax.data.readers import Record, normalize_row, read_dataset_dir, read_dataset_file
from e1jax.data.registry import KNOWN_DATASETS, default_data_root, known_dataset_path, resolve_dataset

__all__ = [
    "E1_INSTRUCTION",
    "KNOWN_DATASETS",
    "Record",
    "default_data_root",
    "e1_user_message",
    "known_dataset_path",
    "normalize_row",
    "read_dataset_dir",
    "read_dataset_file",
    "resolve_dataset",
    "strip_e1_instruction",
]
