"""The original's evaluation sets as a tensorflow-datasets builder, built and read without TensorFlow.

tfds writes `array_record` files and reads them back through
`tfds.data_source` / `builder.as_data_source()`, neither of which imports
TensorFlow (only `as_dataset()`, the tf.data path, needs it). One builder
config per evaluation set; a single `test` split in source order.

    build_eval_set("aime", data_dir)          # writes <data_dir>/e1_eval_sets/aime/1.0.0
    load_eval_set("aime", data_dir)           # -> the same records as readers give
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from e1jax.data.readers import Record, read_dataset_file
from e1jax.data.registry import KNOWN_DATASETS, known_dataset_path
from e1jax.errors import E1Error

FILE_FORMAT = "array_record"
SPLIT = "test"


class E1EvalSets(tfds.core.GeneratorBasedBuilder):
    """Elastic Reasoning evaluation sets (math: aime, amc, math500, minerva, olympiad_bench, gsm8k; code: codeforces, code_contests, leetcode).

    Features: `problem` and `answer` as text (`answer` is the ground truth,
    verbatim when it is text, JSON otherwise: numbers, lists of acceptable
    answers, code tests), plus the exact `ground_truth_json`, `data_source`,
    `ability` and the source row `id`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "The original's data/e1-test files."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=f"{path} of the original")
                       for name, path in KNOWN_DATASETS.items()]

    def __init__(self, *, source_root: str | Path | None = None, **kwargs: Any):
        # Only generation reads the source files; reading a built set needs no source_root.
        self._source_root = source_root
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Scalar(dtype=np.int64),
                "problem": tfds.features.Text(),
                "answer": tfds.features.Text(),
                "ground_truth_json": tfds.features.Text(),
                "data_source": tfds.features.Text(),
                "ability": tfds.features.Text(),
            }),
            disable_shuffling=True,  # keep source order, so ids and records line up with the readers
            homepage="https://github.com/SalesforceAIResearch/Elastic-Reasoning",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager
        return {SPLIT: self._generate_examples()}

    def _generate_examples(self):
        name = self.builder_config.name
        for record in read_dataset_file(known_dataset_path(name, self._source_root), data_source=name):
            yield record["id"], _to_example(record)


def build_eval_set(name: str, data_dir: str | Path, *, source_root: str | Path | None = None) -> Path:
    """Prepare one evaluation set as array_record files under `data_dir`; returns its folder."""
    if importlib.util.find_spec("importlib_resources") is None:
        # tensorflow-datasets 4.9.x imports this backport when preparing a builder that lives
        # in a package but declares it only for Python < 3.9 (tensorflow/datasets#11212).
        raise E1Error("building tfds datasets needs the 'importlib_resources' package "
                      "(pip install importlib_resources)")
    builder = _builder(name, data_dir, source_root=source_root)
    builder.download_and_prepare(file_format=FILE_FORMAT)
    return Path(builder.data_dir)


def load_eval_set(name: str, data_dir: str | Path) -> list[Record]:
    """Read a prepared evaluation set back as reader-style records."""
    builder = _builder(name, data_dir)
    if not builder.is_prepared():
        raise E1Error(f"tfds evaluation set '{name}' is not built under {data_dir}; run build_eval_set first")
    source = builder.as_data_source(split=SPLIT)
    return [_to_record(source[i]) for i in range(len(source))]


def _builder(name: str, data_dir: str | Path, **kwargs: Any) -> E1EvalSets:
    if name not in KNOWN_DATASETS:
        raise E1Error(f"unknown dataset '{name}'; known: {', '.join(KNOWN_DATASETS)}")
    return E1EvalSets(config=name, data_dir=str(data_dir), file_format=FILE_FORMAT, **kwargs)


def _to_example(record: Record) -> dict[str, Any]:
    truth = record["ground_truth"]
    return {
        "id": int(record["id"]),
        "problem": record["problem"],
        "answer": truth if isinstance(truth, str) else json.dumps(truth, ensure_ascii=False),
        "ground_truth_json": json.dumps(truth, ensure_ascii=False),
        "data_source": record["data_source"],
        "ability": record["ability"],
    }


def _to_record(example: dict[str, Any]) -> Record:
    def text(key: str) -> str:
        value = example[key]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    return {"id": int(example["id"]), "data_source": text("data_source"), "ability": text("ability"),
            "problem": text("problem"), "ground_truth": json.loads(text("ground_truth_json"))}
