"""`--grader original`: the original E1 math grader's rules beside e1jax's, and the switch that picks them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from e1jax.__main__ import main
from e1jax.errors import E1Error
from e1jax.eval.results import fingerprint
from e1jax.eval.settings import EvalSettings
from e1jax.rewards.math import grade_math
from e1jax.rewards.original_math import (
    extract_answer,
    grade_original_math,
    grade_original_math_batch,
    ground_truths,
    mathd_normalize,
    solution_of,
    split_tuple,
    sympy_normalize,
    sympy_plan,
)
from e1jax.task import RewardSpec, Task


def solved(answer: str) -> str:
    return "thinking</think> so \\boxed{" + answer + "}"


# (response, ground truth, the original's reason, e1jax's reason), as both graders give them.
DIFFERENCES = [
    # the solution ends at a second </think>: the original reads between the first two
    ("a</think>b</think> \\boxed{5}", "5", "no_answer", "correct"),
    ("a</think>\\boxed{4}</think>\\boxed{5}", "5", "mismatch", "correct"),
    # the original reads \boxed{...} only
    ("a</think> \\fbox{5}", "5", "no_answer", "correct"),
    ("a</think> \\boxed 5", "5", "no_answer", "correct"),
    # the original lower-cases; math-verify ignores the case of most text too, not of these words
    (solved("True"), "true", "correct", "mismatch"),
    (solved("Infinity"), "infinity", "correct", "mismatch"),
    # an integer truth wants an integer answer
    (solved("6/2"), "3", "mismatch", "correct"),
    (solved("\\frac{6}{2}"), "3", "mismatch", "correct"),
    (solved("\\sqrt{9}"), "3", "mismatch", "correct"),
    # fractions must be reduced
    (solved("2/4"), "1/2", "mismatch", "correct"),
    (solved("\\frac{2}{4}"), "\\frac{1}{2}", "mismatch", "correct"),
    # a float within 1e-7 of an integer is that integer
    (solved("2.999999999999"), "3", "correct", "mismatch"),
]

AGREEMENTS = [
    (solved("5"), "5", "correct"),
    (solved("4"), "5", "mismatch"),
    ("no closing tag \\boxed{5}", "5", "format_error"),
    ("a</think> the answer is five", "5", "no_answer"),
    (solved("\\text{Evelyn}"), "evelyn", "correct"),
    (solved("x^2+2x+1"), "(x+1)^2", "correct"),
    (solved("\\frac12"), "0.5", "correct"),
    (solved("142"), 142.0, "correct"),
    (solved("(1, 2)"), "(1,2)", "correct"),
    (solved("(2, 1)"), "(1,2)", "mismatch"),
    (solved("[1, 2)"), "(1,2)", "mismatch"),
    (solved("2\\sqrt{2}"), "\\sqrt{8}", "correct"),
    (solved("5 \\text{ cm}"), "5", "correct"),
    (solved("2"), ["\\boxed{3}", "2"], "correct"),
]


@pytest.mark.parametrize("response,truth,original,e1jax", DIFFERENCES)
def test_graders_differ(response, truth, original, e1jax):
    got = grade_original_math(response, truth)
    assert got.reason == original and got.correct == (original == "correct")
    assert got.reward == (1.0 if original == "correct" else 0.0)
    assert grade_math(response, truth).reason == e1jax


@pytest.mark.parametrize("response,truth,reason", AGREEMENTS)
def test_graders_agree(response, truth, reason):
    assert grade_original_math(response, truth).reason == reason
    assert grade_math(response, truth).reason == reason


# ------------------------------------------------------------------ pieces


@pytest.mark.parametrize("response,solution", [
    ("a</think>b", "b"),
    ("a</think>b</think>c", "b"),
    ("</think>", ""),
    ("no tag", None),
])
def test_solution_of(response, solution):
    assert solution_of(response) == solution
    assert solution_of("no tag", require_think_close=False) == "no tag"


@pytest.mark.parametrize("text,expected", [
    ("\\boxed{5}", "5"),
    ("\\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{}", ""),
    ("\\fbox{7}", None),
    ("\\boxed{1} and \\fbox{8}", "1"),
    ("\\boxed 5", None),
    ("\\boxed {5}", None),
    ("\\boxed{5", None),
    ("\\boxed{\\boxed{3}}", "3"),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("truth,expected", [
    ("5", ["5"]),
    (5, ["5"]),
    (142.0, ["142.0"]),
    ("\\boxed{7}", ["7"]),
    (["\\boxed{", "3"], ["3"]),
    (("1", 2), ["1", "2"]),
])
def test_ground_truths(truth, expected):
    assert ground_truths(truth) == expected


@pytest.mark.parametrize("truth", [None, [], ["\\boxed{"]])
def test_unusable_ground_truth_raises(truth):
    with pytest.raises(E1Error):
        ground_truths(truth)


@pytest.mark.parametrize("answer,expected", [
    ("\\text{Evelyn}", "Evelyn"),
    ("\\dfrac12", "\\frac{1}{2}"),
    ("\\frac1{72}", "\\frac{1}{72}"),
    ("0.5", "\\frac{1}{2}"),
    (".25", "0.25"),
    ("3/4", "\\frac{3}{4}"),
    ("03/4", "03/4"),
    ("x = 3", "3"),
    ("xyz = 3", "xyz=3"),
    ("\\left( 1, 2 \\right)", "(1,2)"),
    ("90^\\circ", "90"),
    ("5 \\text{ cm}", "5"),
    ("10\\%", "10"),
    ("\\sqrt3", "\\sqrt{3}"),
    ("1 \\text{ cm} + 2 \\text{ cm}", "1 \\text{ cm} + 2 \\text{ cm}"),  # two unit markers: kept as it was
    ("2\\sqrt", "2\\sqrt"),  # a dangling \sqrt: kept as it was
    ("\\frac1", "\\frac1"),
])
def test_mathd_normalize(answer, expected):
    assert mathd_normalize(answer) == expected


@pytest.mark.parametrize("answer,expected", [
    ("\\text{Evelyn}", "evelyn"),
    ("\\frac{1}{2}", "1/2"),
    ("142.0", "142"),
    ("1,000", "1000"),
    ("5 cm", "5"),
    ("1 or 2", "1,2"),
    ("2 million", "2*10^6"),
    ("7 3/4", "7+3/4"),
    ("\\sqrt{2}", "sqrt(2)"),
    ("\\pi", "pi"),
    ("{3}", "3"),
    ("$x$", "x"),
])
def test_sympy_normalize(answer, expected):
    assert sympy_normalize(answer) == expected


def test_split_tuple():
    assert split_tuple("(1,2)") == ["1", "2"]
    assert split_tuple("[1,000,2)") == ["1000", "2"]
    assert split_tuple("((1,2))") == ["((1,2))"]
    assert split_tuple("") == []


@pytest.mark.parametrize("answer,truth,plan", [
    ("1/2", "\\frac{1}{2}", True),
    ("2/4", "1/2", False),
    ("6/2", "3", False),
    ("(1,2)", "[1,2]", False),
    ("(1,2,3)", "(1,2)", False),
    ("a+b+c", "a+b", False),  # three unknown letters: not evaluated
    ("2^{10}", "1024", False),
    ("x^2+2x+1", "(x+1)^2", ["((x+1)^2)-(x^2+2x+1)"]),
])
def test_sympy_plan(answer, truth, plan):
    assert sympy_plan(answer, truth) == plan


# ----------------------------------------------------------- batch, limits


def test_batch_keeps_order():
    rows = DIFFERENCES + [(r, t, reason, reason) for r, t, reason in AGREEMENTS]
    results = grade_original_math_batch([r[0] for r in rows], [r[1] for r in rows], workers=2)
    assert [g.reason for g in results] == [r[2] for r in rows]


def test_runaway_sympy_hits_the_safety_limit():
    result = grade_original_math(solved("3**10**9"), "x", timeout_s=1.0)
    assert result.reason == "timeout" and result.reward == 0.0
    assert grade_original_math(solved("x^2+2x+1"), "(x+1)^2").reason == "correct"  # the pool recovered


# ---------------------------------------------------------------- the switch


def test_reward_spec_grader():
    assert RewardSpec().grader == "e1jax"
    with pytest.raises(E1Error, match="reward grader must be one of e1jax, original, got 'bogus'"):
        RewardSpec(grader="bogus")


def test_task_grades_math_by_the_grader():
    records = [{"ground_truth": "5"}, {"ground_truth": "1/2"}]
    texts = ["a</think>b</think> \\boxed{5}", solved("2/4")]
    original = Task(reward=RewardSpec(grader="original")).grade(texts, records)
    assert [g.reason for g in original] == ["no_answer", "mismatch"]
    assert [g.reason for g in Task(reward=RewardSpec()).grade(texts, records)] == ["correct", "correct"]


def test_fingerprint_changes_with_the_grader():
    settings = EvalSettings()
    prints = [fingerprint(settings, [], RewardSpec(grader=g), "m", None) for g in ("e1jax", "original")]
    assert prints[0] != prints[1] and prints[1]["reward"]["grader"] == "original"


def test_train_config_reward_grader():
    from e1jax.rl.config import load_train_config

    assert load_train_config(None, ["reward.grader=original"], require_model=False).reward.grader == "original"
    with pytest.raises(E1Error, match="reward.grader"):
        load_train_config(None, ["reward.grader=bogus"], require_model=False)


def test_grade_cli_original(tmp_path, capsys):
    rows = [{"response": r, "ground_truth": t} for r, t, _, _ in DIFFERENCES[:3]]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["grade", "--input", str(source), "--grader", "original"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["reason"] for o in out] == [d[2] for d in DIFFERENCES[:3]]
    assert main(["grade", "--input", str(source)]) == 0
    assert [json.loads(line)["reason"] for line in capsys.readouterr().out.splitlines()] == ["correct"] * 3


def test_grade_cli_names_an_unusable_truth(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"response": solved("1"), "ground_truth": ["\\boxed{"]}) + "\n")
    assert main(["grade", "--input", str(source), "--grader", "original"]) == 1
    assert "line 1: ground truth" in capsys.readouterr().err


def test_grade_cli_rejects_bogus_grader(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"response": solved("1"), "ground_truth": "1"}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "e1jax", "grade", "--input", str(source), "--grader", "bogus"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "argument --grader: invalid choice: 'bogus'" in proc.stderr
