"""Dataset names -> records: the original's evaluation sets by name, files, Hub datasets.

The evaluation sets ship in the package (e1jax/data/e1_test: the original's rllm/data/test
files, byte for byte, with its Apache-2.0 license); $E1JAX_DATA_DIR replaces that folder."""

from __future__ import annotations

import os
from pathlib import Path

from e1jax.data import deepcoder
from e1jax.data.hub import HUB_PREFIX, hub_dataset_name, load_hub_dataset, parse_hub_name
from e1jax.data.readers import SUPPORTED_SUFFIXES, Record, read_dataset_dir, read_dataset_file
from e1jax.errors import E1Error

DATA_DIR_ENV = "E1JAX_DATA_DIR"

# The original's evaluation sets, relative to the data root (its rllm/data/test folder).
KNOWN_DATASETS: dict[str, str] = {
    "aime": "math/aime.json",
    "amc": "math/amc.json",
    "math": "math/math.json",  # MATH500
    "minerva": "math/minerva.json",
    "olympiad_bench": "math/olympiad_bench.json",
    "gsm8k": "math/gsm8k.json",
    "codeforces": "code/codeforces.json",
    "code_contests": "code/code_contests.json",
    "leetcode": "code/leetcode.json",
}
# Evaluation sets read from the Hugging Face Hub (LiveCodeBench v5, 2024-08 to 2025-01, as
# the original's test_livecodebench.parquet).
HUB_DATASETS: dict[str, str] = {
    "livecodebench": f"{HUB_PREFIX}{deepcoder.REPO}:lcbv5/test",
}
PACKAGED_DATA = Path(__file__).resolve().parent / "e1_test"


def default_data_root() -> Path:
    """$E1JAX_DATA_DIR, else the evaluation sets shipped in the package."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise E1Error(f"{DATA_DIR_ENV}={env} is not a directory")
        return root
    if not PACKAGED_DATA.is_dir():
        raise E1Error(f"the packaged evaluation sets are missing ({PACKAGED_DATA}): reinstall e1jax "
                      f"or set {DATA_DIR_ENV} to a folder holding math/*.json and code/*.json")
    return PACKAGED_DATA


def known_dataset_path(name: str, root: str | Path | None = None) -> Path:
    """The file of a known evaluation set under `root` (default: default_data_root())."""
    if name not in KNOWN_DATASETS:
        raise E1Error(f"unknown dataset '{name}'; known: {', '.join(KNOWN_DATASETS)}")
    path = Path(root if root is not None else default_data_root()) / KNOWN_DATASETS[name]
    if not path.is_file():
        raise E1Error(f"dataset file for '{name}' not found: {path}")
    return path


def resolve_dataset(name_or_path: str | Path, *, root: str | Path | None = None) -> tuple[str, list[Record]]:
    """A known name, a file, a folder of files, or hf://owner/name[:[config/]split] -> (name, records)."""
    spec = str(name_or_path)
    if spec in KNOWN_DATASETS:
        return spec, read_dataset_file(known_dataset_path(spec, root), data_source=spec)
    if spec in HUB_DATASETS:
        repo_id, split = parse_hub_name(HUB_DATASETS[spec])
        return spec, load_hub_dataset(repo_id, split=split)
    if spec.startswith(HUB_PREFIX):
        repo_id, split = parse_hub_name(spec)
        return hub_dataset_name(repo_id, split), load_hub_dataset(repo_id, split=split)
    path = Path(spec).expanduser()
    if path.is_file():
        return path.stem, read_dataset_file(path)
    if path.is_dir():
        return path.name, read_dataset_dir(path, data_source=path.name)
    if path.suffix or os.sep in spec or "/" in spec:
        if path.suffix and path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise E1Error(f"unsupported dataset file type '{path.suffix}' for {spec} "
                          f"(supported: {', '.join(SUPPORTED_SUFFIXES)})")
        raise E1Error(f"dataset file not found: {spec}")
    raise E1Error(f"unknown dataset '{spec}'; known: {', '.join([*KNOWN_DATASETS, *HUB_DATASETS])} "
                  f"(or give a {'/'.join(SUPPORTED_SUFFIXES)} file, a folder, or {HUB_PREFIX}owner/name)")
