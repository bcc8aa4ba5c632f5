"""Code reward: run the response's last fenced code block against tests in the sandbox.

Test styles (the shapes of the original's datasets are all accepted):
  * stdin/stdout (Codeforces, TACO, LiveCodeBench stdin problems): the program
    reads the input and its printed output is compared with the expected one;
  * call-based (TACO `fn_name`, LiveCodeBench functional): a function, or a
    method of `class Solution`, is called with the test's arguments and its
    return value compared with the expected one.

Comparison follows the TACO/rllm checkers used by DeepCoder: outputs match
line by line (blank lines dropped, lines stripped) and token by token; tokens
that differ count as equal when both are numbers that are close
(|got - want| <= 1e-8 + 1e-5 |want|, numpy.isclose). Unlike TACO, two integer
tokens must be exactly equal (TACO's float comparison accepts 10**18 + 1 for
10**18) and unequal non-numeric tokens never match (TACO lets them through).
Call-based results match when equal after a JSON round trip (tuples become
lists), or when equal to the single element of a list-wrapped expected value.

Every test must pass for reward 1; grading stops at the first failing test.
Each test runs in a fresh sandbox (see `e1jax.rewards.sandbox`).
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
COMPILE_ERROR_EXIT = 97
COMPILE_ERROR_MARKER = "E1JAX-COMPILE-ERROR"
RESULT_MARKER = "E1JAX-RESULT "

REASONS = ("correct", "no_code", "wrong_answer", "runtime_error", "timeout", "memory", "compile_error", "output_limit")

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = ("", "python", "py", "python3", "py3")
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

# The sandbox's main program: compiles solution.py (a syntax error is reported
# as such), then runs it as __main__ (stdio) or calls its function (call).
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
    "__name__": "__main__" if mode == "stdio" else "solution",
    "__file__": "solution.py",
    "__builtins__": builtins,
}}
exec({PREAMBLE!r}, namespace)
if use_numpy:
    exec("import numpy as np", namespace)
if mode == "stdio":
    sys.argv[:] = ["solution.py"]
    exec(code, namespace)
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
    """Normalised tests: (input, expected output) pairs; fn_name set for call-based tests."""

    cases: tuple[tuple[Any, Any], ...]
    fn_name: str | None = None


def extract_code(response: str) -> str | None:
    """The last fenced code block tagged python (or untagged); None when there is none."""
    blocks = [body for tag, body in _FENCE.findall(response) if tag.lower() in _PYTHON_TAGS]
    return blocks[-1] if blocks else None


def normalize_tests(tests: Any) -> CodeTests:
    """Accept the test shapes of Codeforces (list of {input, output}), TACO/APPS
    ({inputs, outputs, fn_name}, possibly a JSON string), LiveCodeBench (list of
    {input, output, testtype, metadata}) and PrimeIntellect (list with fn_name)."""
    if isinstance(tests, (str, bytes)):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError as e:
            raise E1Error(f"code tests are a string but not JSON ({e})") from e
    fn_name = None
    if isinstance(tests, Mapping):
        if "tests" in tests and "inputs" not in tests:
            return normalize_tests(tests["tests"])
        if "input_output" in tests:
            return normalize_tests(tests["input_output"])
        if "inputs" in tests and "outputs" in tests:
            inputs, outputs = list(tests["inputs"]), list(tests["outputs"])
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
    return CodeTests(cases=tuple(cases), fn_name=fn_name or None)


def _lcb_func_name(item: Mapping) -> str | None:
    if item.get("testtype") != "functional":
        return None
    metadata = item.get("metadata") or {}
    if isinstance(metadata, str):
        metadata = json.loads(metadata or "{}")
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
    time_limit_s: float | None = None,
    memory_mb: int = 1024,
    max_tests: int | None = None,
) -> GradeResult:
    """Reward 1 when the response's last code block passes every test, else 0.

    `max_tests` keeps the tests with the longest inputs (as rllm does).
    Reasons: correct, no_code, compile_error, wrong_answer, runtime_error,
    timeout, memory, output_limit.
    """
    code = extract_code(response)
    if code is None:
        return GradeResult(reward=0.0, correct=False, extracted=None, reason="no_code")
    normalized = normalize_tests(tests)
    cases = list(normalized.cases)
    if max_tests is not None and len(cases) > max_tests:
        keep = sorted(range(len(cases)), key=lambda i: len(str(cases[i][0])), reverse=True)[:max_tests]
        cases = [cases[i] for i in sorted(keep)]
    limits = SandboxLimits(time_s=time_limit_s or DEFAULT_TIME_LIMIT_S, memory_mb=memory_mb)
    uses_numpy = bool(_USES_NUMPY.search(code))
    for test_input, expected in cases:
        reason = _run_case(code, test_input, expected, normalized.fn_name, limits, uses_numpy)
        if reason is not None:
            return GradeResult(reward=0.0, correct=False, extracted=code, reason=reason)
    return GradeResult(reward=1.0, correct=True, extracted=code, reason="correct")


def grade_code_batch(
    responses: Sequence[str],
    tests_list: Sequence[Any],
    *,
    workers: int | None = None,
    time_limit_s: float | None = None,
    memory_mb: int = 1024,
    max_tests: int | None = None,
) -> list[GradeResult]:
    """Grade many responses in parallel with at most `workers` (default: CPU count) sandboxes at a time."""
    if len(responses) != len(tests_list):
        raise E1Error(f"{len(responses)} responses but {len(tests_list)} test sets")
    if not responses:
        return []
    workers = max(1, min(workers or os.cpu_count() or 1, len(responses)))
    kwargs = dict(time_limit_s=time_limit_s, memory_mb=memory_mb, max_tests=max_tests)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grade-code") as pool:
        return list(pool.map(lambda pair: grade_code(pair[0], pair[1], **kwargs), zip(responses, tests_list)))


def _run_case(
    code: str, test_input: Any, expected: Any, fn_name: str | None, limits: SandboxLimits, uses_numpy: bool
) -> str | None:
    """Run one test; None when it passes, else the failure reason."""
    numpy_flag = "numpy" if uses_numpy else "plain"
    if fn_name:
        stdin = json.dumps(_call_args(test_input))
        argv = ("call", fn_name, numpy_flag)
    else:
        stdin = _as_text(test_input)
        if not stdin.endswith("\n"):
            stdin += "\n"
        argv = ("stdio", numpy_flag)
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
        return [json.loads(line) for line in test_input.strip().split("\n") if line.strip()]
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
