"""The tfds builder for the evaluation sets, built and read back without TensorFlow."""

from __future__ import annotations

import json
import sys

import pytest

from e1jax.data import tfds_e1
from e1jax.data.registry import KNOWN_DATASETS, resolve_dataset
from e1jax.errors import E1Error


def test_builds_and_reads_back_a_small_source(tmp_path):
    source = tmp_path / "src"
    (source / "math").mkdir(parents=True)
    rows = [{"problem": "1+1?", "answer": "2"}, {"problem": "Pick ü", "answer": 3.0},
            {"problem": "List", "answer": ["a", "b"]}, {"problem": "g", "solution": "#### 4", "answer": None}]
    (source / "math" / "amc.json").write_text(json.dumps(rows), encoding="utf-8")
    folder = tfds_e1.build_eval_set("amc", tmp_path / "tfds", source_root=source)
    assert any(p.name.endswith("array_record-00000-of-00001") for p in folder.iterdir())
    got = tfds_e1.load_eval_set("amc", tmp_path / "tfds")
    assert got == resolve_dataset("amc", root=source)[1]
    assert [r["ground_truth"] for r in got] == ["2", 3.0, ["a", "b"], "4"]
    assert "tensorflow" not in sys.modules


def test_generic_tfds_data_source_reads_text_features(tmp_path):
    import tensorflow_datasets as tfds

    source = tmp_path / "src"
    (source / "math").mkdir(parents=True)
    (source / "math" / "aime.json").write_text(json.dumps([{"problem": "P0", "answer": "204"},
                                                           {"problem": "P1", "answer": ["x", "y"]}]))
    tfds_e1.build_eval_set("aime", tmp_path / "tfds", source_root=source)
    split = tfds.data_source("e1_eval_sets/aime", data_dir=str(tmp_path / "tfds"), download=False)["test"]
    assert len(split) == 2
    assert split[0]["problem"] == b"P0" and split[0]["answer"] == b"204"
    assert json.loads(split[1]["answer"]) == ["x", "y"]  # non-text answers are JSON text


def test_unbuilt_and_unknown_sets(tmp_path):
    with pytest.raises(E1Error, match="not built"):
        tfds_e1.load_eval_set("aime", tmp_path)
    with pytest.raises(E1Error, match="unknown dataset 'nope'"):
        tfds_e1.build_eval_set("nope", tmp_path)
    with pytest.raises(E1Error, match="not found"):
        tfds_e1.build_eval_set("minerva", tmp_path / "out", source_root=tmp_path / "empty")


def test_every_real_eval_set_round_trips(e1_test_data, tmp_path):
    assert [c.name for c in tfds_e1.E1EvalSets.BUILDER_CONFIGS] == list(KNOWN_DATASETS)
    for name in KNOWN_DATASETS:
        tfds_e1.build_eval_set(name, tmp_path, source_root=e1_test_data)
        expected = resolve_dataset(name, root=e1_test_data)[1]
        assert tfds_e1.load_eval_set(name, tmp_path) == expected, name
    assert len(tfds_e1.load_eval_set("aime", tmp_path)) == 30
    assert "tensorflow" not in sys.modules
