"""`python -m e1jax grade`: JSONL in, graded JSONL out, summary and one-line errors on stderr."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from e1jax.__main__ import main

MATH_RECORDS = [
    {"id": 0, "response": "a</think> \\boxed{\\frac12}", "ground_truth": "0.5"},
    {"id": 1, "response": "no closing tag \\boxed{2}", "ground_truth": 2},
    {"id": 2, "response": "</think> \\boxed{x^2+2x+1}", "ground_truth": ["(x+1)^2"]},
    {"id": 3, "response": "</think> I give up", "ground_truth": 142.0},
    {"id": 4, "response": "</think> \\boxed{141}", "ground_truth": 142.0},
]
EXPECTED_REASONS = ["correct", "format_error", "correct", "no_answer", "mismatch"]


def write_jsonl(path, records, blank_line_at=None):
    lines = [json.dumps(r) for r in records]
    if blank_line_at is not None:
        lines.insert(blank_line_at, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_grade_math_to_file(tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", MATH_RECORDS, blank_line_at=2)
    out = tmp_path / "sub" / "out.jsonl"
    assert main(["grade", "--input", str(source), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["reason"] for row in rows] == EXPECTED_REASONS
    for row, record in zip(rows, MATH_RECORDS):
        assert {k: row[k] for k in record} == record  # the input fields are kept
        assert row["reward"] == (1.0 if row["reason"] == "correct" else 0.0)
        assert row["correct"] == (row["reason"] == "correct")
    assert rows[0]["extracted"] == "\\frac12" and rows[1]["extracted"] is None
    assert "graded 5 (math): accuracy 0.4000 (2/5), format errors 1" in captured.err


def test_grade_math_to_stdout_in_subprocess(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", MATH_RECORDS[:2])
    proc = subprocess.run([sys.executable, "-m", "e1jax", "grade", "--input", str(source), "--kind", "math"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [row["reason"] for row in rows] == EXPECTED_REASONS[:2]
    assert "accuracy 0.5000 (1/2)" in proc.stderr


def test_no_require_think(tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", MATH_RECORDS[1:2])
    assert main(["grade", "--input", str(source), "--no-require-think"]) == 0
    assert json.loads(capsys.readouterr().out)["reason"] == "correct"


@pytest.mark.parametrize("content,message", [
    ('{"response": "x", "ground_truth": "1"}\n{"response": "y", "ground_truth": \n', "line 2: not valid JSON"),
    ('{"response": "x", "ground_truth": "1"}\n\n{"response": "y"}\n', "line 3: missing field 'ground_truth'"),
    ('{"ground_truth": "1"}\n', "line 1: missing field 'response'"),
    ('[1, 2]\n', "line 1: expected a JSON object"),
    ('{"response": 5, "ground_truth": "1"}\n', "line 1: 'response' must be a string"),
    ('{"response": "x", "ground_truth": "1"}\n{"response": "x", "ground_truth": null}\n', "line 2: ground truth is missing"),
])
def test_bad_input_gives_one_line_error(tmp_path, capsys, content, message):
    source = tmp_path / "bad.jsonl"
    source.write_text(content)
    assert main(["grade", "--input", str(source)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("e1jax grade: error: ")
    assert message in lines[0], lines[0]


def test_missing_input_file(tmp_path, capsys):
    assert main(["grade", "--input", str(tmp_path / "nope.jsonl")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("e1jax grade: error: input file not found") and "nope.jsonl" in err


def test_code_kind_reads_the_tests_from_ground_truth(tmp_path, capsys):
    """One field for the reference of both kinds: forced code grading of a math answer finds no code."""
    source = write_jsonl(tmp_path / "in.jsonl", [{"response": "x", "ground_truth": "1"}])
    assert main(["grade", "--input", str(source), "--kind", "code"]) == 0
    assert json.loads(capsys.readouterr().out)["reason"] == "no_code"


def test_unknown_kind_is_one_line_error(tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [{"response": "x", "ground_truth": "1"}])
    assert main(["grade", "--input", str(source), "--kind", "poetry"]) == 1
    assert "reward kind 'poetry' is not one of auto, math, code" in capsys.readouterr().err


def test_code_kind_grades_with_grade_code(tmp_path, capsys):
    pytest.importorskip("e1jax.rewards.code")
    program = "</think>\n```python\nn = int(input())\nprint(n * 2)\n```"
    records = [
        {"response": program, "ground_truth": [{"input": "3\n", "output": "6\n"}, {"input": "5\n", "output": "10\n"}]},
        {"response": program, "ground_truth": [{"input": "3\n", "output": "7\n"}]},
        {"response": "</think>\\boxed{3}", "ground_truth": "3", "ability": "math"},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    assert main(["grade", "--input", str(source), "--kind", "code"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["reason"] for row in rows] == ["correct", "wrong_answer", "no_code"]
    records = [{**r, "ability": "code"} for r in records[:2]] + records[2:]
    source = write_jsonl(tmp_path / "mixed.jsonl", records)
    assert main(["grade", "--input", str(source)]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [row["correct"] for row in rows] == [True, False, True]
    assert [row["reward"] for row in rows] == [1.0, 0.0, 1.0]
    assert "graded 3 (code+math): accuracy 0.6667 (2/3)" in captured.err
