"""The code recipe's data: DeepCoder's training splits, the `livecodebench` set, its prompt and tests.

The Hub is not reached: snapshot_download is replaced by a fake snapshot laid out like
agentica-org/DeepCoder-Preview-Dataset (one folder per config, `<split>-0000K-of-0000N.parquet`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from e1jax.data import deepcoder
from e1jax.data.registry import HUB_DATASETS, resolve_dataset
from e1jax.errors import E1Error
from e1jax.rewards.code import normalize_tests
from e1jax.rl.config import load_train_config
from e1jax.task import RewardSpec, Task

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

TWO_SUM = "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n        "
FUNCTIONAL = [{"input": "[2, 7, 11, 15]\n9", "output": "[0, 1]", "testtype": "functional"},
              {"input": "[3, 3]\n6", "output": "[0, 1]", "testtype": "functional"}]
STDIN = [{"input": "3\n", "output": "9\n", "testtype": "stdin"}]


def lcb_row(problem: str, tests: list[dict], starter_code: str = "", func_name: str | None = None) -> dict:
    return {"problem": problem, "starter_code": starter_code, "tests": json.dumps(tests),
            "metadata": {"func_name": func_name}}


def plain_row(problem: str, tests) -> dict:
    return {"problem": problem, "tests": json.dumps(tests)}


SNAPSHOT = {
    "lcbv5/train-00000-of-00002.parquet": [lcb_row("lcb train stdin", STDIN)],
    "lcbv5/train-00001-of-00002.parquet": [lcb_row("lcb train functional", FUNCTIONAL, TWO_SUM, "twoSum")],
    "lcbv5/test-00000-of-00001.parquet": [lcb_row("lcb EVAL functional", FUNCTIONAL, TWO_SUM, "twoSum"),
                                          lcb_row("lcb EVAL stdin", STDIN)],
    "primeintellect/train-00000-of-00001.parquet": [
        plain_row("pi train", [{"input": "1\n", "output": "1\n", "type": "stdin_stdout"}])],
    "taco/train-00000-of-00001.parquet": [plain_row("taco train", {"inputs": ["2\n"], "outputs": ["4\n"]})],
    "codeforces/test-00000-of-00001.parquet": [plain_row("codeforces EVAL", [{"input": "5\n", "output": "25\n"}])],
}


@pytest.fixture
def hub(tmp_path, monkeypatch) -> list[dict]:
    """A fake DeepCoder snapshot; returns the snapshot_download calls."""
    import huggingface_hub

    root = tmp_path / "DeepCoder-Preview-Dataset"
    for relative, rows in SNAPSHOT.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), root / relative)
    (root / "README.md").write_text("card")
    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(root)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    return calls


def test_recipe_trains_on_the_training_splits_only(hub):
    cfg = load_train_config(CONFIGS / "e1_code_14b.yaml")
    assert cfg.data.train_files == tuple(f"hf://{deepcoder.REPO}:{s}" for s in deepcoder.TRAIN_SPLITS)
    assert cfg.run.validation.datasets == ("livecodebench",) and cfg.reward.code_tests == "original"
    assert cfg.reward.timeout_s == 0  # the per-source limits apply
    datasets = Task().load(cfg.data.train_files)
    assert list(datasets) == ["DeepCoder-Preview-Dataset-primeintellect-train",
                              "DeepCoder-Preview-Dataset-taco-train", "DeepCoder-Preview-Dataset-lcbv5-train"]
    records = [r for rs in datasets.values() for r in rs]
    problems = [r["problem"] for r in records]
    assert len(records) == 4 and not any("EVAL" in p for p in problems)
    assert {r["data_source"] for r in records} == {"primeintellect", "taco", "livecodebench"}
    fetched = [c["allow_patterns"][0] for c in hub]  # only each split's files are downloaded
    assert fetched == ["primeintellect/train*.json", "taco/train*.json", "lcbv5/train*.json"]
    # the whole repository (no split) would include both evaluation splits
    everything = resolve_dataset(f"hf://{deepcoder.REPO}")[1]
    assert len(everything) == 7 and sum("EVAL" in r["problem"] for r in everything) == 3


def test_livecodebench_is_the_lcbv5_test_split_with_the_originals_prompt(hub):
    assert HUB_DATASETS["livecodebench"] == f"hf://{deepcoder.REPO}:lcbv5/test"
    name, records = resolve_dataset("livecodebench")
    assert name == "livecodebench" and len(records) == 2
    assert {r["data_source"] for r in records} == {"livecodebench"} and {r["ability"] for r in records} == {"code"}
    functional, stdin = records
    system = deepcoder.LCB_SYSTEM_MESSAGE_GENERIC
    assert functional["problem"] == (
        f"{system}\n\nlcb EVAL functional### Format: {deepcoder.LCB_FORMATTING_MESSAGE_WITH_STARTER_CODE}\n"
        f"```python\n{TWO_SUM}\n```\n\n### Answer: (use the provided format with backticks)\n\n")
    assert stdin["problem"] == (
        f"{system}\n\nlcb EVAL stdin### Format: {deepcoder.LCB_FORMATTING_WITHOUT_STARTER_CODE}\n"
        "```python\n# YOUR CODE HERE\n```\n\n### Answer: (use the provided format with backticks)\n\n")
    assert normalize_tests(functional["ground_truth"]).fn_name == "twoSum"
    assert normalize_tests(stdin["ground_truth"]).fn_name is None
    assert deepcoder.lcb_prompt(functional["problem"], TWO_SUM) == functional["problem"]  # wrapped once


def test_livecodebench_functional_tests_call_the_named_method(hub):
    [functional, stdin] = resolve_dataset("livecodebench")[1]
    solved = ("```python\nclass Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n"
              "        for i, x in enumerate(nums):\n            if target - x in seen:\n"
              "                return [seen[target - x], i]\n            seen[x] = i\n```")
    renamed = solved.replace("def twoSum", "def two_sum")
    squared = "```python\nprint(int(input()) ** 2)\n```"
    grades = Task(reward=RewardSpec(kind="code")).grade([solved, renamed, squared],
                                                        [functional, functional, stdin])
    assert [g.reason for g in grades] == ["correct", "runtime_error", "correct"]


def test_unreachable_hub_is_one_line(monkeypatch):
    import huggingface_hub

    def offline(**kwargs):
        raise OSError("no network\ntraceback detail")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(E1Error, match=f"^cannot fetch dataset {deepcoder.REPO} from the Hugging Face Hub: "
                                      "OSError: no network$"):
        resolve_dataset("livecodebench")


def test_config_split_names_are_checked():
    with pytest.raises(E1Error, match="'split' or 'config/split'"):
        resolve_dataset(f"hf://{deepcoder.REPO}:lcbv5/")
    with pytest.raises(E1Error, match="unknown dataset 'livecode'; known: .*livecodebench"):
        resolve_dataset("livecode")


def test_code_tests_switch_in_config_cli_and_spec():
    import argparse

    from e1jax.commands.common import add_reward_args, reward_spec

    cfg = load_train_config(CONFIGS / "e1_code_14b.yaml", ["reward.code_tests=all"])
    assert cfg.reward.code_tests == "all"
    with pytest.raises(E1Error, match="reward.code_tests"):
        load_train_config(CONFIGS / "e1_code_14b.yaml", ["reward.code_tests=some"])
    with pytest.raises(E1Error, match="reward code_tests must be one of original, all, got 'some'"):
        RewardSpec(code_tests="some")
    parser = argparse.ArgumentParser()
    add_reward_args(parser)
    assert reward_spec(parser.parse_args([])).code_tests == "original"
    assert reward_spec(parser.parse_args(["--code-tests", "all"])).code_tests == "all"


def test_config_splits_in_converted_layouts_and_the_originals_json(tmp_path):
    from e1jax.data.readers import read_dataset_dir, read_dataset_file

    layout = ("primeintellect/train/0000.parquet", "primeintellect/test/0000.parquet", "taco/train/0000.parquet")
    for relative in layout:
        (tmp_path / "hub" / relative).parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist([plain_row(relative, STDIN)]), tmp_path / "hub" / relative)
    recs = read_dataset_dir(tmp_path / "hub", data_source="x", split="primeintellect/train")
    assert [r["problem"] for r in recs] == ["primeintellect/train/0000.parquet"]
    # rllm/data/test/code/livecodebench.json rows: tests a list, metadata a dict
    path = tmp_path / "livecodebench.json"
    path.write_text(json.dumps([{"problem": "p", "starter_code": TWO_SUM, "tests": FUNCTIONAL,
                                 "metadata": {"func_name": "twoSum"}}]))
    [record] = read_dataset_file(path)
    assert record["data_source"] == "livecodebench" and TWO_SUM in record["problem"]
    assert all(t["metadata"] == {"func_name": "twoSum"} for t in record["ground_truth"])
