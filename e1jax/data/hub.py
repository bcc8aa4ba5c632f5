"""Datasets from the Hugging Face Hub: download the repository's data files, then read them.

`hf://owner/name[:split]` reads the whole repository or one split; `hf://owner/name:config/split`
reads one split of one config (the repository's top folder named after it, the Hub's layout for
datasets with several configs) and labels its records with the config's data_source.
"""

from __future__ import annotations

from pathlib import Path

from e1jax.data.deepcoder import config_source
from e1jax.data.readers import SUPPORTED_SUFFIXES, Record, read_dataset_dir
from e1jax.errors import E1Error

HUB_PREFIX = "hf://"


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """'hf://owner/name[:[config/]split]' -> (repo_id, split or 'config/split')."""
    if not name.startswith(HUB_PREFIX):
        raise E1Error(f"not a Hub dataset name (expected {HUB_PREFIX}owner/name[:split]): {name}")
    repo_id, _, split = name[len(HUB_PREFIX):].partition(":")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise E1Error(f"Hub dataset must be {HUB_PREFIX}owner/name[:split], got {name}")
    if split and (split.count("/") > 1 or not all(split.split("/"))):
        raise E1Error(f"Hub dataset split must be 'split' or 'config/split', got {name}")
    return repo_id, split or None


def hub_dataset_name(repo_id: str, split: str | None) -> str:
    """The dataset's name: the repository's, with the config and split when one is named."""
    name = repo_id.split("/")[1]
    return f"{name}-{split.replace('/', '-')}" if split and "/" in split else name


def load_hub_dataset(repo_id: str, *, split: str | None = None, revision: str | None = None,
                     cache_dir: str | Path | None = None) -> list[Record]:
    """Download (or reuse the cached copy of) a Hub dataset repository (only the split's files
    when `split` is 'config/split') and read its .parquet/.json/.jsonl files;
    honours HF_HUB_OFFLINE and HF_HOME like any Hub client."""
    from huggingface_hub import snapshot_download

    config = split.split("/")[0] if split and "/" in split else None
    prefix = f"{split}*" if config else "*"  # a config's split: only its files are fetched
    try:
        local = snapshot_download(repo_id=repo_id, repo_type="dataset", revision=revision,
                                  cache_dir=cache_dir,
                                  allow_patterns=[f"{prefix}{s}" for s in SUPPORTED_SUFFIXES])
    except Exception as exc:  # network, auth and missing-repo errors all end here
        raise E1Error(f"cannot fetch dataset {repo_id} from the Hugging Face Hub: "
                      f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    source = config_source(config) if config else repo_id.split("/")[1]
    return read_dataset_dir(local, data_source=source, split=split)
