"""Code reward: run the response's last fenced code block against tests in the sandbox.

The code is the last fenced block whatever its language tag (rllm's
extract_code_from_model; a block tagged cpp is run as python and fails).

Test styles (the shapes of the original's datasets are all accepted):
  * stdin/stdout (Codeforces, TACO, LiveCodeBench stdin problems): the program
    reads the input and its printed output is compared with the expected one;
  * call-based (TACO `fn_name`, LiveCodeBench functional): a function, or a
    method of `class Solution`, is called with the test's arguments and its
    return value compared with the expected one;
  * check script (LeetCode's `{"functional": script}`; not LiveCodeBench's
    functional tests, which are call-based): the solution and
    then the check script (`def check(candidate): assert ...` and
    `check(Solution().method)`) run as one program, as rllm's
    leetcode_check_correctness runs `code + "\n" + tests["functional"]`, after
    the names the original's firejail_exec gives it (LEETCODE_PREAMBLE: its
    BASE_IMPORTS, such as List, Optional, inf, pairwise, deque, and
    BASE_LEETCODE_IMPORTS' ListNode, TreeNode, list_node, tree_node,
    is_same_list, is_same_tree; numpy only when used, no pandas). Reward 1 iff
    the program exits with status 0 after the check script has run to its end;
    an AssertionError raised by the check script is wrong_answer (the
    solution's own failing assert, any other exception or a missing
    `Solution` is runtime_error). Unlike the original, which reads only the
    exit status, a program that exits early with status 0 (sys.exit(0) before
    the check runs) fails (runtime_error). The program's stdin is empty.

Comparison follows the TACO/rllm checkers used by DeepCoder: outputs match
line by line (blank lines dropped, lines stripped) and token by token; tokens
that differ count as equal when both are numbers that are close
(|got - want| <= 1e-8 + 1e-5 |want|, numpy.isclose). Unlike TACO, two integer
tokens must be exactly equal (TACO's float comparison accepts 10**18 + 1 for
10**18) and unequal non-numeric tokens never match (TACO lets them through).
Call-based results match when equal after a JSON round trip (tuples become
lists), or when equal to the single element of a list-wrapped expected value.

Every test must pass for reward 1; grading stops at the first failing test.
Each test runs in a fresh sandbox (see `e1jax.rewards.sandbox`). Tests that
cannot be read (unparseable, missing input/output, wrong shape, a check script
that does not compile) score 0 with
reason malformed_tests, as the original's checkers return False for them.

Which tests run, and for how long, follows rllm's code_reward.py by each
record's data_source (`code_tests="original"`): livecodebench runs every test at
6 s (lcb_check_correctness_v2); taco, apps, code_contests, codeforces,
primeintellect and any other source run the 15 tests with the longest inputs at
12 s each (check_correctness's defaults). `code_tests="all"` runs every test at
6 s whatever the source. An explicit time limit overrides the per-source one.
Check scripts are recognised by their shape whatever the data_source (the
original runs them for data_source leetcode) and run once, in one sandbox, at
30 s (firejail_exec's --timeout) under both switches: the script holds all of a
problem's tests, so `all`'s 6 s per test does not apply; an explicit time limit
(`reward.timeout_s` > 0) is the script's limit.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import decimal
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from e1jax.errors import E1Error
from e1jax.rewards.sandbox import SandboxError, SandboxLimits, SandboxResult, run_sandboxed
from e1jax.rewards.types import GradeResult

DEFAULT_TIME_LIMIT_S = 6.0  # per test; rllm's LiveCodeBench checker uses 6 s
CODE_TESTS = ("original", "all")
COMPILE_ERROR_EXIT = 97
COMPILE_ERROR_MARKER = "E1JAX-COMPILE-ERROR"
RESULT_MARKER = "E1JAX-RESULT "
# functional check scripts (LeetCode): one run of the whole script; rllm's firejail_exec default
FUNCTIONAL_TIME_LIMIT_S = 30.0
WRONG_ANSWER_EXIT = 98
WRONG_ANSWER_MARKER = "E1JAX-WRONG-ANSWER"
CHECKED_LINE = RESULT_MARKER + "checked"

REASONS = ("correct", "no_code", "malformed_tests", "wrong_answer", "runtime_error", "timeout", "memory",
           "compile_error", "output_limit")

_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_+#.-]*[^\n]*\n(.*?)```", re.DOTALL)
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_USES_NUMPY = re.compile(r"\bnumpy\b|\bnp\.")

# Names the original checkers make available before the solution runs (TACO's
# synthesize_std_code / rllm's BASE_IMPORTS); numpy is added when the code uses it.
PREAMBLE = """\
import sys, time, itertools, collections, math, fractions, random, heapq, bisect, functools, string, re, copy
from itertools import accumulate, product, permutations, combinations
from collections import Counter, OrderedDict, deque, defaultdict, ChainMap
from functools import lru_cache, reduce, cmp_to_key
from math import sqrt, sin, cos, tan, ceil, fabs, floor, gcd, exp, log, log2
from typing import List, Tuple, Dict, Set, Optional
from heapq import *
from bisect import bisect_left, bisect_right, insort
stdin = sys.stdin
stdout = sys.stdout
"""

# What rllm's firejail_exec puts before a LeetCode program (BASE_IMPORTS, then
# BASE_LEETCODE_IMPORTS): the same names bound to the same objects (`bisect` is the
# module, `time` the function), numpy only when the code uses it and no pandas
# (not a dependency of e1jax), and the linked-list / binary-tree helpers that
# LeetCode check scripts call.
LEETCODE_PREAMBLE = """\
from bisect import bisect, bisect_left, bisect_right, insort
from collections import Counter, OrderedDict, defaultdict, deque
from copy import deepcopy
from functools import cache, cmp_to_key, lru_cache, partial, reduce
from heapq import heapify, heappop, heappush, heapreplace, merge, nlargest, nsmallest
from itertools import (accumulate, chain, combinations, count, cycle, groupby, islice, pairwise, permutations,
                       product, repeat, zip_longest)
from math import atan2, ceil, comb, factorial, floor, gcd, inf, isqrt, log, log2, log10, pi, prod, sqrt
from operator import iand, itemgetter, or_, sub, xor
from os.path import commonprefix
from random import randrange, shuffle
from re import search as re_search
from string import ascii_lowercase, ascii_uppercase
from time import time
from typing import (Any, Callable, Deque, Dict, Generator, Iterable, Iterator, List, Optional, Set, Tuple,
                    Union)
import bisect, collections, copy, datetime, functools, heapq, io, itertools, math, operator, os, random, re
import string, sys


class ListNode:
    def __init__(self, val=0, next=None):
        self.val = val
        self.next = next


class TreeNode:
    def __init__(self, val=0, left=None, right=None):
        self.val = val
        self.left = left
        self.right = right


def list_node(values):  # the linked list of `values`, None when empty
    head = None
    for value in reversed(list(values)):
        head = ListNode(value, head)
    return head


def is_same_list(a, b):
    while a and b:
        if a.val != b.val:
            return False
        a, b = a.next, b.next
    return a is None and b is None


def tree_node(values):  # a level-order list, None for a missing child (LeetCode's notation)
    values = list(values)
    if not values:
        return None
    root = TreeNode(values[0])
    parents, i = deque([root]), 1
    while parents and i < len(values):
        node = parents.popleft()
        for side in ("left", "right"):
            if i < len(values) and values[i] is not None:
                child = TreeNode(values[i])
                setattr(node, side, child)
                parents.append(child)
            i += 1
    return root


def is_same_tree(a, b):
    if not a or not b:
        return not a and not b
    return a.val == b.val and is_same_tree(a.left, b.left) and is_same_tree(a.right, b.right)
"""

# The sandbox's main program: compiles solution.py (a syntax error is reported
# as such), then runs it as __main__ (stdio), calls its function (call), or runs
# it and then the check script check.py as __main__ in one namespace, as the
# original runs their concatenation (functional; an AssertionError raised by the
# check script itself is reported as such, and a line is printed once it ends).
RUNNER = f"""\
import builtins, json, os, sys
if hasattr(sys, "set_int_max_str_digits"):
    sys.set_int_max_str_digits(0)
mode, use_numpy = sys.argv[1], sys.argv[-1] == "numpy"
with open("solution.py", encoding="utf-8") as f:
    source = f.read()
try:
    code = compile(source, "solution.py", "exec")
except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError) as e:
    sys.stderr.write("{COMPILE_ERROR_MARKER} " + type(e).__name__ + ": " + str(e) + "\\n")
    sys.stderr.flush()
    os._exit({COMPILE_ERROR_EXIT})
namespace = {{
    "__name__": "solution" if mode == "call" else "__main__",
    "__file__": "solution.py",
    "__builtins__": builtins,
}}
exec({LEETCODE_PREAMBLE!r} if mode == "functional" else {PREAMBLE!r}, namespace)
if use_numpy:
    exec("import numpy as np", namespace)
if mode == "stdio":
    sys.argv[:] = ["solution.py"]
    exec(code, namespace)
elif mode == "functional":
    with open("check.py", encoding="utf-8") as f:
        check = compile(f.read(), "check.py", "exec")
    result_fd = os.dup(1)
    os.dup2(2, 1)  # what the program prints goes to stderr
    sys.argv[:] = ["solution.py"]
    try:
        exec(code, namespace)
        exec(check, namespace)
    except AssertionError as e:
        tb = e.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        if tb.tb_frame.f_code.co_filename != "check.py":
            raise  # the solution's own assert: a runtime error
        sys.stdout.flush()
        sys.stderr.write("{WRONG_ANSWER_MARKER} line " + str(tb.tb_lineno) + "\\n")
        sys.stderr.flush()
        os._exit({WRONG_ANSWER_EXIT})
    sys.stdout.flush()
    os.write(result_fd, "{CHECKED_LINE}\\n".encode())
else:
    fn_name = sys.argv[2]
    args = json.loads(sys.stdin.read())
    sys.stdin = open(os.devnull)
    result_fd = os.dup(1)
    os.dup2(2, 1)  # what the function prints goes to stderr
    sys.argv[:] = ["solution.py"]
    exec(code, namespace)
    cls = namespace.get("Solution")
    if isinstance(cls, type) and hasattr(cls, fn_name):
        fn = getattr(cls(), fn_name)
    elif callable(namespace.get(fn_name)):
        fn = namespace[fn_name]
    else:
        raise NameError("function " + repr(fn_name) + " is not defined")
    result = fn(*args)
    sys.stdout.flush()

    def plain(obj):
        if hasattr(obj, "tolist"):
            return obj.tolist()
        raise TypeError(type(obj).__name__)

    try:
        payload = json.dumps({{"result": result}}, default=plain)
    except (TypeError, ValueError) as e:
        payload = json.dumps({{"unserializable": type(result).__name__ + ": " + str(e)}})
    os.write(result_fd, ("{RESULT_MARKER}" + payload + "\\n").encode())
"""


@dataclasses.dataclass(frozen=True)
class CodeTests:
    """Normalised tests: (input, expected output) pairs; fn_name set for call-based tests;
    for functional tests no cases and the check script run after the solution."""

    cases: tuple[tuple[Any, Any], ...]
    fn_name: str | None = None
    script: str | None = None


@dataclasses.dataclass(frozen=True)
class SourceRule:
    """Which tests of a problem run, and each one's time limit."""

    max_tests: int | None  # the tests with the longest inputs kept; None: all
    time_limit_s: float


ALL_TESTS = SourceRule(max_tests=None, time_limit_s=DEFAULT_TIME_LIMIT_S)
LONGEST_15 = SourceRule(max_tests=15, time_limit_s=12.0)  # rllm check_correctness's defaults
# rllm's RewardCodeFn by data_source; any other source gets LONGEST_15 too
ORIGINAL_RULES = {"livecodebench": ALL_TESTS,
                  **dict.fromkeys(("taco", "apps", "code_contests", "codeforces", "primeintellect"), LONGEST_15)}


def source_rule(data_source: str | None, code_tests: str = "original") -> SourceRule:
    """The tests run for a record of `data_source` (see the module docstring)."""
    if code_tests not in CODE_TESTS:
        raise E1Error(f"code_tests must be one of {', '.join(CODE_TESTS)}, got {code_tests!r}")
    if code_tests == "all":
        return ALL_TESTS
    return ORIGINAL_RULES.get(str(data_source or "").lower(), LONGEST_15)


def extract_code(response: str) -> str | None:
    """The last fenced code block, whatever its language tag, stripped; None when there is none."""
    blocks = _FENCE.findall(response)
    return blocks[-1].strip() if blocks else None


def normalize_tests(tests: Any) -> CodeTests:
    """Accept the test shapes of Codeforces (list of {input, output}), TACO/APPS
    ({inputs, outputs, fn_name}, possibly a JSON string), LiveCodeBench (list of
    {input, output, testtype, metadata}), PrimeIntellect (list with fn_name) and
    LeetCode ({functional: check script})."""
    if isinstance(tests, (str, bytes)):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError as e:
            raise E1Error(f"code tests are a string but not JSON ({e})") from e
    fn_name = None
    if isinstance(tests, Mapping):
        if "functional" in tests:
            return CodeTests(cases=(), script=_check_script(tests["functional"]))
        if "tests" in tests and "inputs" not in tests:
            return normalize_tests(tests["tests"])
        if "input_output" in tests:
            return normalize_tests(tests["input_output"])
        if "inputs" in tests and "outputs" in tests:
            inputs, outputs = tests["inputs"], tests["outputs"]
            if not isinstance(inputs, (list, tuple)) or not isinstance(outputs, (list, tuple)):
                raise E1Error("code tests' 'inputs' and 'outputs' must be lists")
            if len(inputs) != len(outputs):
                raise E1Error(f"code tests have {len(inputs)} inputs but {len(outputs)} outputs")
            cases = list(zip(inputs, outputs))
            fn_name = tests.get("fn_name")
        elif "input" in tests and "output" in tests:
            return normalize_tests([tests])
        else:
            raise E1Error(f"code tests need 'inputs'/'outputs' or 'input'/'output' keys, got {sorted(tests)[:6]}")
    elif isinstance(tests, Sequence):
        cases = []
        for item in tests:
            if not isinstance(item, Mapping) or "input" not in item or "output" not in item:
                raise E1Error("each code test in a list must be a dict with 'input' and 'output'")
            cases.append((item["input"], item["output"]))
            fn_name = fn_name or item.get("fn_name") or _lcb_func_name(item)
    else:
        raise E1Error(f"unsupported code tests of type {type(tests).__name__}")
    if not cases:
        raise E1Error("code tests are empty")
    if fn_name is not None and not isinstance(fn_name, str):
        raise E1Error(f"code tests' function name must be text, got {type(fn_name).__name__}")
    return CodeTests(cases=tuple(cases), fn_name=fn_name or None)


def _check_script(script: Any) -> str:
    """A functional test's check script, which must be Python that compiles."""
    if not isinstance(script, str) or not script.strip():
        raise E1Error(f"functional code tests must be a non-empty script, got {type(script).__name__}")
    try:
        compile(script, "check.py", "exec")
    except (SyntaxError, ValueError) as e:
        raise E1Error(f"functional code tests do not compile ({type(e).__name__}: {e})") from None
    return script


def _lcb_func_name(item: Mapping) -> str | None:
    if item.get("testtype") != "functional":
        return None
    metadata = item.get("metadata") or {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata or "{}")
        except json.JSONDecodeError as e:
            raise E1Error(f"code test metadata is a string but not JSON ({e.msg})") from None
    if not isinstance(metadata, Mapping):
        raise E1Error(f"code test metadata must be a dict, got {type(metadata).__name__}")
    return metadata.get("func_name")


def outputs_match(got: str, expected: str) -> bool:
    """Line-by-line, token-by-token comparison with whitespace normalised and numeric tolerance."""
    got_lines, want_lines = _token_lines(got), _token_lines(expected)
    if got_lines == want_lines:
        return True
    if len(got_lines) != len(want_lines):
        return False
    for got_tokens, want_tokens in zip(got_lines, want_lines):
        if len(got_tokens) != len(want_tokens):
            return False
        if not all(a == b or _numbers_close(a, b) for a, b in zip(got_tokens, want_tokens)):
            return False
    return True


def _token_lines(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines() if line.strip()]


def _numbers_close(got: str, want: str) -> bool:
    if not (_NUMBER.fullmatch(got) and _NUMBER.fullmatch(want)):
        return False
    if _INTEGER.fullmatch(got) and _INTEGER.fullmatch(want):
        return decimal.Decimal(got) == decimal.Decimal(want)
    g, w = float(got), float(want)
    return abs(g - w) <= 1e-8 + 1e-5 * abs(w)


def call_results_match(result: Any, expected: Any) -> bool:
    """TACO's rule: equal, or equal to the only element of a list-wrapped expectation."""
    expected = json.loads(json.dumps(expected))
    if result == expected:
        return True
    return isinstance(expected, list) and len(expected) == 1 and result == expected[0]


def grade_code(
    response: str,
    tests: Any,
    *,
    data_source: str | None = None,
    code_tests: str = "original",
    time_limit_s: float | None = None,
    memory_mb: int = 1024,
    max_tests: int | None = None,
) -> GradeResult:
    """Reward 1 when the response's last code block passes every selected test, else 0.

    The tests run and their time limit follow `source_rule(data_source, code_tests)`;
    `time_limit_s` and `max_tests` (the tests with the longest inputs), when given, override it.
    A check script (LeetCode's functional tests) runs once after the solution, within `time_limit_s`
    or FUNCTIONAL_TIME_LIMIT_S whatever the source and switch (`max_tests` does not apply).
    Reasons: correct, no_code, malformed_tests, compile_error, wrong_answer, runtime_error,
    timeout, memory, output_limit.
    """
    code = extract_code(response)
    if code is None:
        return GradeResult(reward=0.0, correct=False, extracted=None, reason="no_code")
    rule = source_rule(data_source, code_tests)
    try:
        normalized = normalize_tests(tests)
        cases = _select(list(normalized.cases), max_tests if max_tests is not None else rule.max_tests)
        runs = [(_stdin_of(test_input, normalized.fn_name), expected) for test_input, expected in cases]
    except E1Error:
        return GradeResult(reward=0.0, correct=False, extracted=code, reason="malformed_tests")
    if normalized.script is not None:
        limits = SandboxLimits(time_s=time_limit_s or FUNCTIONAL_TIME_LIMIT_S, memory_mb=memory_mb)
        reason = _run_script(code, normalized.script, limits, bool(_USES_NUMPY.search(code + normalized.script)))
        return GradeResult(reward=float(reason is None), correct=reason is None, extracted=code,
                           reason=reason or "correct")
    limits = SandboxLimits(time_s=time_limit_s or rule.time_limit_s, memory_mb=memory_mb)
    uses_numpy = bool(_USES_NUMPY.search(code))
    for stdin, expected in runs:
        reason = _run_case(code, stdin, expected, normalized.fn_name, limits, uses_numpy)
        if reason is not None:
            return GradeResult(reward=0.0, correct=False, extracted=code, reason=reason)
    return GradeResult(reward=1.0, correct=True, extracted=code, reason="correct")


def grade_code_batch(
    responses: Sequence[str],
    tests_list: Sequence[Any],
    *,
    data_sources: Sequence[str | None] | None = None,
    code_tests: str = "original",
    workers: int | None = None,
    time_limit_s: float | None = None,
    memory_mb: int = 1024,
    max_tests: int | None = None,
) -> list[GradeResult]:
    """Grade many responses in parallel with at most `workers` (default: CPU count) sandboxes at a time;
    `data_sources[i]` chooses response i's tests (see `grade_code`)."""
    if len(responses) != len(tests_list):
        raise E1Error(f"{len(responses)} responses but {len(tests_list)} test sets")
    sources = list(data_sources) if data_sources is not None else [None] * len(responses)
    if len(sources) != len(responses):
        raise E1Error(f"{len(responses)} responses but {len(sources)} data sources")
    source_rule(None, code_tests)  # an unknown switch fails before any sandbox starts
    if not responses:
        return []
    workers = max(1, min(workers or os.cpu_count() or 1, len(responses)))
    kwargs = dict(code_tests=code_tests, time_limit_s=time_limit_s, memory_mb=memory_mb, max_tests=max_tests)

    def grade(item):
        response, tests, source = item
        return grade_code(response, tests, data_source=source, **kwargs)

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grade-code") as pool:
        return list(pool.map(grade, zip(responses, tests_list, sources)))


def _select(cases: list[tuple[Any, Any]], max_tests: int | None) -> list[tuple[Any, Any]]:
    """The `max_tests` cases with the longest inputs (ties: the earlier), in their order.

    Length is len() of the raw input as in rllm (characters of a stdin text, the number
    of arguments of a call-based list)."""
    if max_tests is None or len(cases) <= max_tests:
        return cases
    keep = sorted(range(len(cases)), key=lambda i: _input_length(cases[i][0]), reverse=True)[:max_tests]
    return [cases[i] for i in sorted(keep)]


def _input_length(test_input: Any) -> int:
    return len(test_input) if isinstance(test_input, (str, list, tuple, dict)) else len(str(test_input))


def _stdin_of(test_input: Any, fn_name: str | None) -> str:
    """The sandbox's stdin: the text (stdio) or the JSON argument list (call-based)."""
    if fn_name:
        return json.dumps(_call_args(test_input))
    stdin = _as_text(test_input)
    return stdin if stdin.endswith("\n") else stdin + "\n"


def _run_case(
    code: str, stdin: str, expected: Any, fn_name: str | None, limits: SandboxLimits, uses_numpy: bool
) -> str | None:
    """Run one test; None when it passes, else the failure reason."""
    numpy_flag = "numpy" if uses_numpy else "plain"
    argv = ("call", fn_name, numpy_flag) if fn_name else ("stdio", numpy_flag)
    try:
        run = run_sandboxed(RUNNER, stdin, limits, files={"solution.py": code}, argv=argv)
    except SandboxError as e:
        raise E1Error(f"code sandbox failed: {e}") from e
    failure = _failure_reason(run)
    if failure is not None:
        return failure
    if not fn_name:
        return None if outputs_match(run.stdout, _as_text(expected)) else "wrong_answer"
    line = next((ln for ln in reversed(run.stdout.splitlines()) if ln.startswith(RESULT_MARKER)), None)
    if line is None:
        return "runtime_error"
    try:
        payload = json.loads(line[len(RESULT_MARKER) :])
    except ValueError:  # not JSON, or an integer beyond the grader's digit limit
        return "wrong_answer"
    if not isinstance(payload, dict) or "result" not in payload:
        return "wrong_answer"
    return None if call_results_match(payload["result"], _call_expected(expected)) else "wrong_answer"


def _run_script(code: str, script: str, limits: SandboxLimits, uses_numpy: bool) -> str | None:
    """Run the solution then a functional check script; None when it ends cleanly, else the failure reason."""
    argv = ("functional", "numpy" if uses_numpy else "plain")
    try:
        run = run_sandboxed(RUNNER, "", limits, files={"solution.py": code, "check.py": script}, argv=argv)
    except SandboxError as e:
        raise E1Error(f"code sandbox failed: {e}") from e
    if run.returncode == WRONG_ANSWER_EXIT and WRONG_ANSWER_MARKER in run.stderr:
        return "wrong_answer"
    failure = _failure_reason(run)
    if failure is not None:
        return failure
    # exit status 0 without the line: the program left early (sys.exit, os._exit) before the check ended
    return None if CHECKED_LINE in run.stdout.splitlines() else "runtime_error"


def _failure_reason(run: SandboxResult) -> str | None:
    if run.returncode == COMPILE_ERROR_EXIT and COMPILE_ERROR_MARKER in run.stderr:
        return "compile_error"
    if run.output_limited:
        return "output_limit"
    if run.timed_out or run.cpu_limited:
        return "timeout"
    if run.returncode != 0:
        tail = run.stderr.strip().splitlines()[-3:]
        return "memory" if any("MemoryError" in line for line in tail) else "runtime_error"
    return None


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):  # APPS-style list of lines
        return "\n".join(str(v) for v in value)
    return str(value)


def _call_args(test_input: Any) -> list:
    """TACO gives a list of arguments; LiveCodeBench one JSON value per line."""
    if isinstance(test_input, str):
        try:
            return [json.loads(line) for line in test_input.strip().split("\n") if line.strip()]
        except json.JSONDecodeError as e:
            raise E1Error(f"call-based test input is not one JSON value per line ({e.msg})") from None
    if isinstance(test_input, (list, tuple)):
        return list(test_input)
    return [test_input]


def _call_expected(expected: Any) -> Any:
    if isinstance(expected, str):
        try:
            return json.loads(expected)
        except json.JSONDecodeError:
            return expected
    return expected
