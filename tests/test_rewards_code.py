"""Code reward: extraction, test shapes, output comparison and grading in the sandbox."""

from __future__ import annotations

import json

import pytest

from e1jax.errors import E1Error
from e1jax.rewards.code import (
    CodeTests,
    call_results_match,
    extract_code,
    grade_code,
    grade_code_batch,
    normalize_tests,
    outputs_match,
)


def fenced(code: str, tag: str = "python") -> str:
    return f"<think>\nlet me think\n</think>\nHere is my solution:\n```{tag}\n{code}\n```\n"


# --- extraction -------------------------------------------------------------


def test_extract_takes_the_last_python_or_plain_block():
    response = "```python\nprint(1)\n```\ntext\n```\nprint(2)\n```\nmore\n```cpp\nint main(){}\n```\n"
    assert extract_code(response) == "print(2)\n"
    assert extract_code("```Python3\nx = 1\n```") == "x = 1\n"
    assert extract_code("``` python\nx = 2\n```") == "x = 2\n"


def test_extract_none_without_a_closed_block():
    assert extract_code("no code here") is None
    assert extract_code("```python\nprint(1)\n") is None  # cut off by the budget
    assert extract_code("```cpp\nint main(){}\n```") is None


# --- comparison -------------------------------------------------------------


def test_whitespace_is_normalised():
    assert outputs_match("1 2\n3\n", "1 2\n3")
    assert outputs_match("  1   2  \r\n\n3   \n\n", "1 2\n3")
    assert outputs_match("0 6 7\n5 4 2 5\n", "0 6 7 \n5 4 2 5 ")
    assert not outputs_match("1 2 3", "1 2\n3")  # line structure counts, as in TACO
    assert not outputs_match("1 2", "1 2 3")
    assert not outputs_match("YES", "NO")
    assert not outputs_match("", "1")


def test_numbers_compare_with_tolerance_but_integers_exactly():
    assert outputs_match("0.3333333333", "0.333333")
    assert outputs_match("1.0000001 2", "1 2")
    assert outputs_match("1e3", "1000.0")
    assert not outputs_match("0.334", "0.333333")
    assert not outputs_match("1000000000000000001", "1000000000000000000")
    assert outputs_match("007", "7")
    assert not outputs_match("nan", "1.0")
    assert not outputs_match("abc", "abd")


def test_call_results_compare_after_json_round_trip():
    assert call_results_match([1, 2], [1, 2])
    assert call_results_match([[1, 2]], [[[1, 2]]])  # list-wrapped expectation (TACO)
    assert call_results_match(3, [3])
    assert call_results_match([[1, 2], [3, 4]], ((1, 2), (3, 4)))
    assert not call_results_match([2, 1], [1, 2])
    assert not call_results_match(0.30000000000000004, 0.3)


# --- test shapes ------------------------------------------------------------


def test_normalize_accepts_the_datasets_shapes():
    codeforces = [{"input": "1\n", "output": "2"}, {"input": "2\n", "output": "4"}]
    assert normalize_tests(codeforces) == CodeTests(cases=(("1\n", "2"), ("2\n", "4")))
    taco = {"inputs": [[1, 2], [3, 4]], "outputs": [[3], [7]], "fn_name": "add"}
    assert normalize_tests(taco).fn_name == "add"
    assert normalize_tests(json.dumps(taco)) == normalize_tests(taco)
    assert normalize_tests({"input_output": json.dumps(taco)}).cases == (([1, 2], [3]), ([3, 4], [7]))
    assert normalize_tests({"inputs": ["5\n"], "outputs": ["25\n"]}).fn_name is None
    lcb = [{"input": "[1, 2]\n3", "output": "6", "testtype": "functional", "metadata": '{"func_name": "f"}'}]
    assert normalize_tests(lcb).fn_name == "f"
    assert normalize_tests({"tests": codeforces, "problem": "..."}).cases == normalize_tests(codeforces).cases


@pytest.mark.parametrize("bad", [[], {"inputs": [], "outputs": []}, {"inputs": ["1"], "outputs": []}, {"x": 1}, 3])
def test_normalize_rejects_bad_tests(bad):
    with pytest.raises(E1Error):
        normalize_tests(bad)


# --- grading in the sandbox -------------------------------------------------

SQUARE_TESTS = [{"input": "3\n", "output": "9\n"}, {"input": "12", "output": "144"}]


def test_correct_and_wrong_stdio_solutions():
    good = grade_code(fenced("n = int(input())\nprint(n * n)"), SQUARE_TESTS)
    assert (good.reward, good.correct, good.reason) == (1.0, True, "correct")
    assert good.extracted == "n = int(input())\nprint(n * n)\n"
    bad = grade_code(fenced("n = int(input())\nprint(n + n)"), SQUARE_TESTS)
    assert (bad.reward, bad.correct, bad.reason) == (0.0, False, "wrong_answer")


def test_all_tests_must_pass():
    tests = [{"input": "3", "output": "9"}, {"input": "4", "output": "16"}]
    only_first = "n = int(input())\nprint(9)"
    assert grade_code(fenced(only_first), tests[:1]).correct
    assert grade_code(fenced(only_first), tests).reason == "wrong_answer"


def test_preamble_names_and_main_guard_work():
    code = (
        "def main():\n    print(gcd(12, 18), sqrt(16), Counter('aab')['a'])\n\n"
        "if __name__ == '__main__':\n    main()"
    )
    assert grade_code(fenced(code), [{"input": "", "output": "6 4.0 2"}]).correct


def test_float_output_within_tolerance():
    tests = [{"input": "3", "output": "0.333333333"}]
    assert grade_code(fenced("print(1 / int(input()))"), tests).correct
    assert grade_code(fenced("print(round(1 / int(input()), 3))"), tests).reason == "wrong_answer"


@pytest.mark.parametrize(
    "code,reason",
    [
        ("print(", "compile_error"),
        ("raise ValueError('boom')", "runtime_error"),
        ("import sys\nprint(9)\nsys.exit(3)", "runtime_error"),
        ("x = bytearray(8 << 30)", "memory"),
        ("while True:\n    pass", "timeout"),
        ("import sys\nwhile True:\n    sys.stdout.write('9' * 65536)", "output_limit"),
    ],
)
def test_failure_reasons(code, reason):
    time_limit_s = 1.0 if reason == "timeout" else 10.0
    result = grade_code(fenced(code), SQUARE_TESTS[:1], time_limit_s=time_limit_s, memory_mb=512)
    assert (result.reward, result.correct, result.reason) == (0.0, False, reason)


def test_no_code_block():
    result = grade_code("The answer is to print n squared.", SQUARE_TESTS)
    assert (result.reward, result.extracted, result.reason) == (0.0, None, "no_code")


def test_call_based_taco_style():
    tests = {"inputs": [[[3, 1, 2]], [[5, 4]]], "outputs": [[[1, 2, 3]], [[4, 5]]], "fn_name": "sort_list"}
    good = grade_code(fenced("def sort_list(xs):\n    print('debug output is ignored')\n    return sorted(xs)"), tests)
    assert good.correct, good
    tuple_result = grade_code(fenced("def sort_list(xs):\n    return tuple(sorted(xs))"), tests)
    assert tuple_result.correct
    wrong = grade_code(fenced("def sort_list(xs):\n    return xs"), tests)
    assert wrong.reason == "wrong_answer"
    missing = grade_code(fenced("def other(xs):\n    return xs"), tests)
    assert missing.reason == "runtime_error"
    crash = grade_code(fenced("def sort_list(xs):\n    return xs[10]"), tests)
    assert crash.reason == "runtime_error"


def test_call_based_livecodebench_style_with_solution_class():
    functional = {"testtype": "functional", "metadata": {"func_name": "twoSum"}}
    tests = [
        {"input": "[2, 7, 11, 15]\n9", "output": "[0, 1]", **functional},
        {"input": "[3, 3]\n6", "output": "[0, 1]", **functional},
    ]
    code = """
class Solution:
    def twoSum(self, nums: List[int], target: int) -> List[int]:
        seen = {}
        for i, x in enumerate(nums):
            if target - x in seen:
                return [seen[target - x], i]
            seen[x] = i
"""
    assert grade_code(fenced(code), tests).correct
    assert grade_code(fenced(code.replace("[seen[target - x], i]", "[i, seen[target - x]]")), tests).reason == (
        "wrong_answer"
    )


def test_max_tests_keeps_the_longest_inputs():
    tests = [{"input": "1", "output": "wrong"}, {"input": "100", "output": "10000"}, {"input": "20", "output": "400"}]
    code = fenced("n = int(input())\nprint(n * n)")
    assert grade_code(code, tests).reason == "wrong_answer"
    assert grade_code(code, tests, max_tests=2).correct


def test_batch_grades_in_order_and_matches_single_grading():
    responses = [
        fenced("n = int(input())\nprint(n * n)"),
        "no code",
        fenced("n = int(input())\nprint(n)"),
        fenced("def f(a, b):\n    return a + b"),
    ]
    tests = [SQUARE_TESTS, SQUARE_TESTS, SQUARE_TESTS, {"inputs": [[1, 2]], "outputs": [3], "fn_name": "f"}]
    results = grade_code_batch(responses, tests, workers=2)
    assert [r.reason for r in results] == ["correct", "no_code", "wrong_answer", "correct"]
    assert [r.reward for r in results] == [1.0, 0.0, 0.0, 1.0]
    assert grade_code_batch([], []) == []
    with pytest.raises(E1Error):
        grade_code_batch(responses, tests[:2])


def test_hostile_program_scores_zero_and_grader_survives():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = grade_code(fenced(bomb), SQUARE_TESTS, time_limit_s=1.0)
    assert (result.reward, result.reason) == (0.0, "timeout")
    assert grade_code(fenced("print(int(input()) ** 2)"), SQUARE_TESTS).correct


# --- real Codeforces problems from the original's evaluation set --------------

# Problem statements are matched by a phrase so that the test finds them wherever they sit in the file.
CODEFORCES_SOLUTIONS = {
    "Output two integers: the minimum of $x$ and $y$": (
        """
t = int(input())
for _ in range(t):
    x, y = map(int, input().split())
    print(min(x, y), max(x, y))
""",
        """
t = int(input())
for _ in range(t):
    x, y = map(int, input().split())
    print(x, y)
""",
    ),
    "minimum number of pieces you need to cut it into": (
        """
import sys
data = sys.stdin.read().split()
out = []
for s in data[1:]:
    changes = sum(1 for a, b in zip(s, s[1:]) if a != b)
    out.append(changes + 1 - (1 if "01" in s else 0))
print("\\n".join(map(str, out)))
""",
        """
import sys
data = sys.stdin.read().split()
print("\\n".join(str(sum(1 for a, b in zip(s, s[1:]) if a != b) + 1) for s in data[1:]))
""",
    ),
    "find the number of lattice points": (
        """
from math import isqrt
def count(r):
    total = 0
    for x in range(1, r + 1):
        hi = isqrt((r + 1) ** 2 - 1 - x * x)
        rest = r * r - x * x
        lo = 0 if rest <= 0 else isqrt(rest - 1) + 1
        if lo <= hi:
            total += hi - lo + 1
    return 4 * total
t = int(input())
for _ in range(t):
    print(count(int(input())))
""",
        """
t = int(input())
for _ in range(t):
    r = int(input())
    print(8 * r)
""",
    ),
}


@pytest.fixture(scope="module")
def codeforces(e1_test_data) -> list[dict]:
    return json.loads((e1_test_data / "code" / "codeforces.json").read_text())


@pytest.mark.parametrize("phrase", list(CODEFORCES_SOLUTIONS))
def test_codeforces_correct_and_wrong_solutions(codeforces, phrase):
    problem = next(p for p in codeforces if phrase in p["problem"])
    good, bad = CODEFORCES_SOLUTIONS[phrase]
    correct, wrong = grade_code_batch([fenced(good), fenced(bad)], [problem["tests"], problem["tests"]], workers=2)
    assert (correct.reward, correct.reason) == (1.0, "correct")
    assert (wrong.reward, wrong.reason) == (0.0, "wrong_answer")
