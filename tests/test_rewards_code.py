"""Code reward: extraction, test shapes, output comparison and grading in the sandbox."""

from __future__ import annotations

import json

import pytest

from e1jax.errors import E1Error
from e1jax.rewards import code as code_reward
from e1jax.rewards.code import (
    ALL_TESTS,
    LONGEST_15,
    CodeTests,
    call_results_match,
    extract_code,
    grade_code,
    grade_code_batch,
    normalize_tests,
    outputs_match,
    source_rule,
)
from e1jax.rewards.sandbox import Isolation, SandboxResult


def fenced(code: str, tag: str = "python") -> str:
    return f"<think>\nlet me think\n</think>\nHere is my solution:\n```{tag}\n{code}\n```\n"


# --- extraction -------------------------------------------------------------


def test_extract_takes_the_last_block_of_any_tag():
    # rllm's extract_code_from_model: the last block whatever its tag, stripped
    response = "```python\nprint(1)\n```\ntext\n```\nprint(2)\n```\nmore\n```cpp\nint main(){}\n```\n"
    assert extract_code(response) == "int main(){}"
    assert extract_code(response + "```py\nprint(3)\n```") == "print(3)"
    assert extract_code("```python\nprint(1)\n```\n```\n\nprint(2)\n\n```") == "print(2)"
    assert extract_code("```Python3\nx = 1\n```") == "x = 1"
    assert extract_code("``` python\nx = 2\n```") == "x = 2"


def test_extract_none_without_a_closed_block():
    assert extract_code("no code here") is None
    assert extract_code("```python\nprint(1)\n") is None  # cut off by the budget


def test_a_last_block_in_another_language_is_run_as_python():
    response = fenced("n = int(input())\nprint(n * n)") + "\nIn C++:\n```cpp\nint main() { return 0; }\n```\n"
    result = grade_code(response, SQUARE_TESTS[:1])
    assert (result.reward, result.reason, result.extracted) == (0.0, "compile_error", "int main() { return 0; }")


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
    leetcode = {"functional": "def check(candidate):\n    assert candidate(x=1) == 2\n\ncheck(Solution().f)"}
    assert normalize_tests(leetcode) == CodeTests(cases=(), script=leetcode["functional"])
    assert normalize_tests(json.dumps(leetcode)) == normalize_tests(leetcode)


BAD_TESTS = [
    [], {"inputs": [], "outputs": []}, {"inputs": ["1"], "outputs": []}, {"x": 1}, 3, "not json", "[1, 2]",
    [{"input": "1"}], {"inputs": "12", "outputs": "34"}, {"inputs": [[1]], "outputs": [1], "fn_name": 7},
    [{"input": "1", "output": "1", "testtype": "functional", "metadata": "{bad"}],
    {"functional": 3}, {"functional": "  \n"}, {"functional": "def check(candidate:\n    pass"},
]


@pytest.mark.parametrize("bad", BAD_TESTS)
def test_normalize_rejects_bad_tests(bad):
    with pytest.raises(E1Error):
        normalize_tests(bad)


@pytest.mark.parametrize("bad", BAD_TESTS + [[{"input": "not json", "output": "1", "testtype": "functional",
                                               "metadata": {"func_name": "f"}}]])
def test_malformed_tests_score_zero(bad):
    # the original's checkers return False for tests they cannot read; nothing is run
    result = grade_code(fenced("print(1)"), bad)
    assert (result.reward, result.correct, result.reason) == (0.0, False, "malformed_tests")
    assert result.extracted == "print(1)"
    assert grade_code("no code", bad).reason == "no_code"


# --- grading in the sandbox -------------------------------------------------

SQUARE_TESTS = [{"input": "3\n", "output": "9\n"}, {"input": "12", "output": "144"}]


def test_correct_and_wrong_stdio_solutions():
    good = grade_code(fenced("n = int(input())\nprint(n * n)"), SQUARE_TESTS)
    assert (good.reward, good.correct, good.reason) == (1.0, True, "correct")
    assert good.extracted == "n = int(input())\nprint(n * n)"
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


# --- the original's tests per data source -------------------------------------


def test_source_rules_follow_rllm_code_reward():
    assert source_rule("livecodebench") == ALL_TESTS == code_reward.SourceRule(None, 6.0)
    for source in ("taco", "apps", "code_contests", "codeforces", "primeintellect", "mine", None):
        assert source_rule(source) == LONGEST_15 == code_reward.SourceRule(15, 12.0)
        assert source_rule(source, "all") == ALL_TESTS
    with pytest.raises(E1Error, match="code_tests must be one of original, all"):
        source_rule("taco", "some")


def squares(count: int, wrong_shortest: bool) -> list[dict]:
    """`count` tests of n -> n*n with distinct input lengths; the shortest expects a wrong answer."""
    tests = [{"input": "7" * (i + 1), "output": str(int("7" * (i + 1)) ** 2)} for i in range(count)]
    if wrong_shortest:
        tests[0]["output"] = "0"
    return tests[::-1]  # longest first: the selection keeps their own order


def fake_sandbox(monkeypatch) -> list[tuple[str, float]]:
    """Replace the sandbox by one that prints the square of its input; returns the (stdin, time limit) runs."""
    runs = []

    def run(program, stdin, limits, files, argv):
        runs.append((stdin, limits.time_s))
        out = str(int(stdin) ** 2)
        return SandboxResult(out, "", 0, False, False, False, 0.0, 0.0, 0.0, Isolation(None, False, False, False))

    monkeypatch.setattr(code_reward, "run_sandboxed", run)
    return runs


@pytest.mark.parametrize("source,code_tests,runs,limit", [
    ("taco", "original", 15, 12.0), ("primeintellect", "original", 15, 12.0), ("codeforces", "original", 15, 12.0),
    ("livecodebench", "original", 17, 6.0), (None, "original", 15, 12.0), ("taco", "all", 17, 6.0),
])
def test_tests_run_and_time_limit_per_source(monkeypatch, source, code_tests, runs, limit):
    ran = fake_sandbox(monkeypatch)
    result = grade_code(fenced("print(int(input()) ** 2)"), squares(17, wrong_shortest=False),
                        data_source=source, code_tests=code_tests)
    assert result.correct and len(ran) == runs and {t for _, t in ran} == {limit}
    assert sorted(len(stdin.strip()) for stdin, _ in ran) == list(range(17 - runs + 1, 18))  # the longest inputs
    ran.clear()
    grade_code(fenced("print(1)"), squares(17, False), data_source=source, code_tests=code_tests, time_limit_s=2.5)
    assert {t for _, t in ran} == {2.5}  # an explicit limit overrides the source's


def test_only_the_15_longest_inputs_run_for_codeforces_and_taco():
    # 16 tests whose shortest-input one fails: the original skips it, "all" does not (real sandbox)
    program = fenced("n = int(input())\nprint(n * n)")
    tests = squares(16, wrong_shortest=True)
    assert grade_code(program, tests, data_source="codeforces").correct
    assert grade_code(program, tests, data_source="codeforces", code_tests="all").reason == "wrong_answer"
    assert grade_code(program, tests[::-1], data_source="livecodebench").reason == "wrong_answer"


def test_batch_takes_each_records_source(monkeypatch):
    ran = fake_sandbox(monkeypatch)
    tests = squares(16, wrong_shortest=False)
    program = fenced("print(int(input()) ** 2)")
    results = grade_code_batch([program, program], [tests, tests], data_sources=["taco", "livecodebench"], workers=1)
    assert all(r.correct for r in results)
    assert sorted(t for _, t in ran) == [6.0] * 16 + [12.0] * 15
    with pytest.raises(E1Error, match="2 responses but 1 data sources"):
        grade_code_batch([program, program], [tests, tests], data_sources=["taco"])
    with pytest.raises(E1Error, match="code_tests"):
        grade_code_batch([program], [tests], code_tests="none")


def test_task_passes_each_records_data_source_and_the_switch(monkeypatch):
    from e1jax.task import RewardSpec, Task

    ran = fake_sandbox(monkeypatch)
    records = [{"ability": "code", "data_source": source, "ground_truth": squares(16, False)}
               for source in ("taco", "livecodebench")]
    program = fenced("print(int(input()) ** 2)")
    assert all(g.correct for g in Task().grade([program] * 2, records))
    assert sorted(t for _, t in ran) == [6.0] * 16 + [12.0] * 15
    ran.clear()
    Task(reward=RewardSpec(code_tests="all", timeout_s=3.0)).grade([program] * 2, records)
    assert [t for _, t in ran] == [3.0] * 32


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


# --- real LeetCode problems (functional check scripts) ------------------------


@pytest.fixture(scope="module")
def leetcode(e1_test_data) -> list[tuple[dict, str]]:
    """(record as e1jax reads it, the raw file's reference solution) per problem."""
    from e1jax.data.registry import resolve_dataset

    _, records = resolve_dataset("leetcode")
    raw = json.loads((e1_test_data / "code" / "leetcode.json").read_text())
    assert len(records) == len(raw)
    return [(record, row["solutions"]) for record, row in zip(records, raw)]


def test_leetcode_solution_then_check_script_as_one_program(leetcode):
    # rllm's leetcode_check_correctness: code + "\n" + tests["functional"], passed iff it exits cleanly
    record, solution = leetcode[0]
    assert record["data_source"] == "leetcode"
    assert "check(Solution().minOperations)" in record["ground_truth"]["functional"]
    variants = {
        "correct": solution,
        "wrong_answer": solution.replace("return n - i", "return n - i + 1"),
        "runtime_error": solution.replace("count = 0", "count = 0\n        1 / 0"),
        "compile_error": solution.replace("class Solution:", "class Solution(:"),
        "missing": "def minOperations(nums, k):\n    return 4",  # no class Solution: NameError
        "early_exit": "import sys\nsys.exit(0)",  # exit status 0, but the check never ran
    }
    assert all(code != solution for name, code in variants.items() if name != "correct")
    results = grade_code_batch([fenced(code) for code in variants.values()], [record["ground_truth"]] * len(variants),
                               data_sources=["leetcode"] * len(variants), workers=2)
    reasons = dict(zip(variants, (r.reason for r in results)))
    assert reasons == {"correct": "correct", "wrong_answer": "wrong_answer", "runtime_error": "runtime_error",
                       "compile_error": "compile_error", "missing": "runtime_error", "early_exit": "runtime_error"}
    assert [r.reward for r in results] == [1.0] + [0.0] * 5


def test_leetcode_programs_get_the_originals_preamble():
    # BASE_IMPORTS and BASE_LEETCODE_IMPORTS: typing names, math.inf, pairwise, `bisect` the
    # module, `time` the function, and the linked-list / tree helpers; the solution's own
    # assert is a runtime error, not a wrong answer
    code = """
class Solution:
    def f(self, nums: List[int], root: Optional[TreeNode]) -> Tuple[int, Optional[ListNode]]:
        assert bisect.bisect_left([1, 3], 2) == 1 and isinstance(time(), float) and nums
        best = max((b - a for a, b in pairwise(nums)), default=-inf)
        return best + root.left.val, list_node(sorted(Counter(nums)))
"""
    check = """
def check(candidate):
    best, head = candidate(nums=[1, 4, 4, 9], root=tree_node([1, 2, None, 3]))
    assert best == 7
    assert is_same_list(head, list_node([1, 4, 9]))
    assert is_same_tree(tree_node([1, None, 2]), TreeNode(1, None, TreeNode(2)))
    assert not is_same_tree(tree_node([1, 2]), tree_node([1, None, 2]))

check(Solution().f)
"""
    good, own_assert = grade_code_batch([fenced(code), fenced(code.replace("and nums", "and not nums"))],
                                        [{"functional": check}] * 2, workers=2)
    assert (good.reason, own_assert.reason) == ("correct", "runtime_error")


@pytest.mark.parametrize("code_tests", ["original", "all"])
def test_leetcode_script_runs_once_at_30_s(monkeypatch, code_tests):
    runs = []

    def run(program, stdin, limits, files, argv):
        runs.append((limits.time_s, sorted(files), argv))
        return SandboxResult(code_reward.CHECKED_LINE + "\n", "", 0, False, False, False, 0.0, 0.0, 0.0,
                             Isolation(None, False, False, False))

    monkeypatch.setattr(code_reward, "run_sandboxed", run)
    tests = {"functional": "def check(candidate):\n    assert candidate() == 1\n\ncheck(Solution().f)"}
    for source in ("leetcode", "taco", None):
        assert grade_code(fenced("x = 1"), tests, data_source=source, code_tests=code_tests, max_tests=1).correct
    assert runs == [(30.0, ["check.py", "solution.py"], ("functional", "plain"))] * 3
    runs.clear()
    grade_code(fenced("import numpy as np"), tests, data_source="leetcode", code_tests=code_tests, time_limit_s=2.5)
    assert runs == [(2.5, ["check.py", "solution.py"], ("functional", "numpy"))]  # reward.timeout_s overrides


def test_reference_solutions_of_the_packaged_leetcode_set_pass(leetcode):
    picked = leetcode[1:6]
    results = grade_code_batch([fenced(solution) for _, solution in picked], [r["ground_truth"] for r, _ in picked],
                               data_sources=[r["data_source"] for r, _ in picked], workers=2)
    assert [r.reason for r in results] == ["correct"] * 5
