"""Dataset readers, the known-name registry, Hub loading and the E1 prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from e1jax.data import readers, registry
from e1jax.data.prompts import E1_INSTRUCTION, e1_user_message, strip_e1_instruction
from e1jax.data.readers import last_boxed_content, read_dataset_dir, read_dataset_file
from e1jax.data.registry import KNOWN_DATASETS, resolve_dataset
from e1jax.errors import E1Error

INSTRUCTION_TEXT = "Let's think step by step and output the final answer within \\boxed{}."


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_verl_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def verl_row(question: str, truth, *, data_source="", ability="math", index=0) -> dict:
    """A row as the original's scripts/data/*_dataset.py write it."""
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": question}],
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": truth},
        "extra_info": {"split": "test", "index": index},
    }


# --- prompt -------------------------------------------------------------------------------


def test_e1_user_message_is_the_originals_prompt():
    assert E1_INSTRUCTION == " " + INSTRUCTION_TEXT
    assert e1_user_message("What is 1+1?") == "What is 1+1? " + INSTRUCTION_TEXT
    assert e1_user_message("{x}") == "{x} " + INSTRUCTION_TEXT  # braces in problems are literal


def test_strip_instruction_recovers_problem():
    for problem in ["What is 1+1?", "\nMulti\nline $x$\n", ""]:
        assert strip_e1_instruction(e1_user_message(problem)) == problem
    assert strip_e1_instruction("no instruction here") == "no instruction here"
    assert strip_e1_instruction("Q\n" + INSTRUCTION_TEXT + "\n") == "Q"


# --- JSON (the original's e1-test format) ----------------------------------------------------


def test_read_json_math_code_and_gsm8k_rows(tmp_path):
    path = write_json(tmp_path / "mixed.json", [
        {"problem": "1+1?", "solution": "It is \\boxed{2}.", "answer": "2", "year": 2024},
        {"problem": "Eggs?", "solution": "16-3-4=9\n#### 18", "answer": None},
        {"problem": "x?", "solution": "so $\\boxed{\\frac{1}{2}}$", "answer": None},
        {"problem": "Sum", "answer": 142.0},
        {"problem": "Physics", "answer": ["9.6\n"]},
        {"problem": "\nRead two ints", "tests": [{"input": "1 2", "output": "3"}]},
    ])
    recs = read_dataset_file(path)
    assert [r["id"] for r in recs] == list(range(6))
    assert {r["data_source"] for r in recs} == {"mixed"}
    assert [r["ground_truth"] for r in recs[:5]] == ["2", "18", "\\frac{1}{2}", 142.0, ["9.6\n"]]
    assert recs[0] == {"id": 0, "data_source": "mixed", "ability": "math", "problem": "1+1?",
                       "ground_truth": "2"}
    assert recs[5]["ability"] == "code"
    assert recs[5]["problem"] == "\nRead two ints"
    assert recs[5]["ground_truth"] == [{"input": "1 2", "output": "3"}]


def test_read_json_explicit_data_source(tmp_path):
    path = write_json(tmp_path / "a.json", [{"problem": "p", "answer": "1"}])
    assert read_dataset_file(path, data_source="aime")[0]["data_source"] == "aime"


def test_last_boxed_content_handles_nesting_and_fbox():
    assert last_boxed_content("\\boxed{1} then \\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"
    assert last_boxed_content("\\fbox{7}") == "7"
    assert last_boxed_content("\\boxed{unclosed") is None
    assert last_boxed_content("nothing") is None


# --- verl parquet -----------------------------------------------------------------------------


def test_read_verl_parquet_math_strips_instruction(tmp_path):
    rows = [verl_row(e1_user_message("What is 2+2?"), "4", index=0),
            verl_row(e1_user_message("$x^2=9$, $x>0$?"), "3", index=1)]
    recs = read_dataset_file(write_verl_parquet(tmp_path / "aime.parquet", rows))
    assert [r["problem"] for r in recs] == ["What is 2+2?", "$x^2=9$, $x>0$?"]
    assert [r["ground_truth"] for r in recs] == ["4", "3"]
    assert {r["data_source"] for r in recs} == {"aime"}  # empty data_source -> file stem
    assert {r["ability"] for r in recs} == {"math"}


def test_read_verl_parquet_code_decodes_tests(tmp_path):
    tests = [{"input": "1\n", "output": "2\n"}, {"input": "5\n", "output": "6\n"}]
    rows = [verl_row("Add one.", json.dumps(tests), data_source="codeforces", ability="code")]
    rec = read_dataset_file(write_verl_parquet(tmp_path / "test_codeforces.parquet", rows))[0]
    assert rec["problem"] == "Add one."  # code prompts carry no instruction: kept as is
    assert rec["ground_truth"] == tests
    assert rec["data_source"] == "codeforces"
    assert rec["ability"] == "code"


def test_read_verl_parquet_takes_last_user_message(tmp_path):
    row = verl_row("ignored", "1")
    row["prompt"] = [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": e1_user_message("Real question")}]
    assert read_dataset_file(write_verl_parquet(tmp_path / "s.parquet", [row]))[0]["problem"] == "Real question"


def test_read_plain_parquet(tmp_path):
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.Table.from_pylist([{"problem": "p0", "answer": "a0"}, {"problem": "p1", "answer": "a1"}]), path)
    assert [(r["problem"], r["ground_truth"]) for r in read_dataset_file(path)] == [("p0", "a0"), ("p1", "a1")]


# --- JSONL ------------------------------------------------------------------------------------


def test_read_jsonl(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join([
        json.dumps({"question": "q0", "ground_truth": "g0"}),
        "",
        json.dumps({"problem": "q1", "answer": ["a", "b"], "data_source": "mine"}),
        json.dumps(verl_row(e1_user_message("q2"), "g2")),
    ]) + "\n", encoding="utf-8")
    recs = read_dataset_file(path)
    assert [r["problem"] for r in recs] == ["q0", "q1", "q2"]
    assert [r["ground_truth"] for r in recs] == ["g0", ["a", "b"], "g2"]
    assert [r["data_source"] for r in recs] == ["train", "mine", "train"]
    assert [r["id"] for r in recs] == [0, 1, 2]


# --- errors -----------------------------------------------------------------------------------


def test_missing_file_error(tmp_path):
    with pytest.raises(E1Error, match="not found"):
        read_dataset_file(tmp_path / "nope.json")
    with pytest.raises(E1Error, match="not found"):
        resolve_dataset(str(tmp_path / "nope.parquet"))


def test_unknown_name_lists_known():
    with pytest.raises(E1Error) as info:
        resolve_dataset("aime2099")
    message = str(info.value)
    assert "aime2099" in message
    for name in KNOWN_DATASETS:
        assert name in message


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("problem,answer\n1+1,2\n")
    with pytest.raises(E1Error, match=r"unsupported dataset file type '\.csv'"):
        read_dataset_file(path)
    with pytest.raises(E1Error, match="unsupported dataset file type"):
        resolve_dataset(str(tmp_path / "missing.txt"))


def test_malformed_rows_name_row_and_field(tmp_path):
    path = write_json(tmp_path / "bad.json", [{"problem": "ok", "answer": "1"}, {"problem": "no answer"}])
    with pytest.raises(E1Error, match=r"bad\.json row 1: missing field 'answer'"):
        read_dataset_file(path)

    path = write_json(tmp_path / "bad2.json", [{"answer": "1"}])
    with pytest.raises(E1Error, match=r"bad2\.json row 0: missing field 'problem'"):
        read_dataset_file(path)

    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"problem": "a", "answer": "1"}) + "\n\n" + json.dumps({"problem": "b"}) + "\n")
    with pytest.raises(E1Error, match=r"bad\.jsonl line 3: missing field 'answer'"):
        read_dataset_file(path)

    path.write_text('{"problem": "a", "answer": "1"}\n{not json}\n')
    with pytest.raises(E1Error, match=r"bad\.jsonl line 2: not valid JSON"):
        read_dataset_file(path)

    row = verl_row("q", "1")
    del row["reward_model"]
    path = write_verl_parquet(tmp_path / "bad.parquet", [verl_row("q", "1"), row])
    with pytest.raises(E1Error, match=r"bad\.parquet row 1: missing field 'reward_model.ground_truth'"):
        read_dataset_file(path)


def test_json_must_be_a_list(tmp_path):
    with pytest.raises(E1Error, match="expected a JSON list"):
        read_dataset_file(write_json(tmp_path / "d.json", {"problem": "p", "answer": "a"}))
    path = tmp_path / "lines.json"
    path.write_text('{"problem": "p", "answer": "a"}\n{"problem": "q", "answer": "b"}\n')
    with pytest.raises(E1Error, match="not valid JSON.*jsonl"):
        read_dataset_file(path)


# --- folders, data root, Hub --------------------------------------------------------------------


def test_read_dir_with_split_and_running_ids(tmp_path):
    write_verl_parquet(tmp_path / "data" / "train-00000-of-00002.parquet", [verl_row("a", "1"), verl_row("b", "2")])
    write_verl_parquet(tmp_path / "data" / "train-00001-of-00002.parquet", [verl_row("c", "3")])
    write_json(tmp_path / "data" / "test.json", [{"problem": "t", "answer": "9"}])
    train = read_dataset_dir(tmp_path, data_source="ds", split="train")
    assert [(r["id"], r["problem"]) for r in train] == [(0, "a"), (1, "b"), (2, "c")]
    assert [r["problem"] for r in read_dataset_dir(tmp_path, data_source="ds", split="test")] == ["t"]
    assert len(read_dataset_dir(tmp_path, data_source="ds")) == 4
    with pytest.raises(E1Error, match="no files of split 'validation'"):
        read_dataset_dir(tmp_path, data_source="ds", split="validation")


def test_data_root_from_env(tmp_path, monkeypatch):
    write_json(tmp_path / "math" / "aime.json", [{"problem": "p", "answer": "7"}])
    monkeypatch.setenv(registry.DATA_DIR_ENV, str(tmp_path))
    name, recs = resolve_dataset("aime")
    assert name == "aime"
    assert recs == [{"id": 0, "data_source": "aime", "ability": "math", "problem": "p", "ground_truth": "7"}]
    with pytest.raises(E1Error, match="dataset file for 'amc' not found"):
        resolve_dataset("amc")
    monkeypatch.setenv(registry.DATA_DIR_ENV, str(tmp_path / "absent"))
    with pytest.raises(E1Error, match=registry.DATA_DIR_ENV):
        resolve_dataset("aime")


def test_resolve_paths(tmp_path):
    path = write_json(tmp_path / "mine.json", [{"problem": "p", "answer": "1"}])
    name, recs = resolve_dataset(str(path))
    assert name == "mine" and recs[0]["data_source"] == "mine"
    name, recs = resolve_dataset(tmp_path)
    assert name == tmp_path.name and len(recs) == 1


def test_hub_dataset_downloads_then_reads(tmp_path, monkeypatch):
    import huggingface_hub

    snapshot = tmp_path / "snapshot"
    write_verl_parquet(snapshot / "data" / "train-00000-of-00001.parquet", [verl_row(e1_user_message("hq"), "5")])
    write_json(snapshot / "data" / "test-00000-of-00001.json", [{"problem": "tq", "answer": "6"}])
    (snapshot / "README.md").write_text("card")
    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    name, recs = resolve_dataset("hf://someone/tiny-set:train")
    assert name == "tiny-set"
    assert recs == [{"id": 0, "data_source": "tiny-set", "ability": "math", "problem": "hq", "ground_truth": "5"}]
    assert calls[0]["repo_id"] == "someone/tiny-set" and calls[0]["repo_type"] == "dataset"
    assert len(resolve_dataset("hf://someone/tiny-set")[1]) == 2

    def failing(**kwargs):
        raise OSError("offline\nmore detail")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
    with pytest.raises(E1Error, match="cannot fetch dataset someone/tiny-set .*OSError: offline$"):
        resolve_dataset("hf://someone/tiny-set")
    with pytest.raises(E1Error, match="owner/name"):
        resolve_dataset("hf://just-a-name")


# --- the original's files -------------------------------------------------------------------------

EXPECTED_COUNTS = {"aime": 30, "amc": 83, "math": 500, "minerva": 272, "olympiad_bench": 675,
                   "gsm8k": 1319, "codeforces": 408, "code_contests": 165, "leetcode": 200}


def test_known_sets_cover_registry():
    assert set(EXPECTED_COUNTS) == set(KNOWN_DATASETS)


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_real_eval_sets(e1_test_data, name):
    got_name, recs = resolve_dataset(name, root=e1_test_data)
    assert got_name == name
    assert len(recs) == EXPECTED_COUNTS[name]
    assert [r["id"] for r in recs] == list(range(len(recs)))
    assert all(r["data_source"] == name and isinstance(r["problem"], str) and r["problem"] for r in recs)
    assert all(r["ground_truth"] not in (None, "", []) for r in recs)
    raw = json.loads((e1_test_data / KNOWN_DATASETS[name]).read_text())
    assert [r["problem"] for r in recs] == [row["problem"] for row in raw]
    if name == "codeforces":
        assert all(r["ability"] == "code" for r in recs)
        assert all(isinstance(t, dict) and set(t) == {"input", "output"} for r in recs for t in r["ground_truth"])
    elif name == "code_contests":
        assert all(r["ability"] == "code" and set(r["ground_truth"]) == {"inputs", "outputs"} for r in recs)
    elif name == "leetcode":
        assert all(r["ability"] == "code" and "def check(candidate)" in r["ground_truth"]["functional"] for r in recs)
    else:
        assert all(r["ability"] == "math" for r in recs)


def test_real_eval_set_values(e1_test_data):
    assert resolve_dataset("aime", root=e1_test_data)[1][0]["ground_truth"] == "204"
    assert resolve_dataset("amc", root=e1_test_data)[1][0]["ground_truth"] == 142.0
    assert resolve_dataset("gsm8k", root=e1_test_data)[1][0]["ground_truth"] == "18"
    assert resolve_dataset("minerva", root=e1_test_data)[1][0]["ground_truth"] == ["9.6\n"]


def test_default_data_root_is_the_package(monkeypatch, tmp_path):
    monkeypatch.delenv(registry.DATA_DIR_ENV, raising=False)
    assert registry.default_data_root() == registry.PACKAGED_DATA
    assert len(resolve_dataset("aime")[1]) == 30
    (tmp_path / "math").mkdir()
    (tmp_path / "math" / "aime.json").write_text('[{"problem": "1+1?", "answer": "2"}]')
    monkeypatch.setenv(registry.DATA_DIR_ENV, str(tmp_path))
    assert resolve_dataset("aime")[1][0]["ground_truth"] == "2"  # the variable overrides the package


def test_packaged_sets_are_the_originals_files():
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "e1-test"
    if not shared.is_dir():
        pytest.skip(f"{shared} is not present")
    for relative in [*KNOWN_DATASETS.values(), "LICENSE.txt"]:
        assert (registry.PACKAGED_DATA / relative).read_bytes() == (shared / relative).read_bytes(), relative


def test_wheel_ships_the_evaluation_sets(tmp_path):
    import subprocess
    import sys
    import zipfile

    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(repo)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("e1jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"e1jax/data/e1_test/{r}" for r in [*KNOWN_DATASETS.values(), "LICENSE.txt", "NOTICE"]}
    assert expected <= names, sorted(expected - names)


def test_module_has_no_heavy_imports():
    # `import e1jax.data` stays cheap: pipeline (grain) and tfds_e1 are imported on demand.
    import subprocess
    import sys

    code = "import sys, e1jax.data; print('grain' in sys.modules, 'tensorflow_datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    assert readers.SUPPORTED_SUFFIXES == (".json", ".jsonl", ".parquet")
