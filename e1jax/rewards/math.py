"""Math reward: E1's rules (the original's rllm/rewards/math_reward.py, with the differences below).

No `</think>` in the response -> "format_error". Otherwise the last
`\\boxed{...}` / `\\fbox{...}` after the last `</think>` is the answer (none
-> "no_answer"), compared with every acceptable ground truth: first the
Hendrycks-normalised strings (cheap, in process), then symbolic equality with
math-verify. The symbolic part runs in a pool of long-lived worker processes
so that it can be cut off after `timeout_s` from any thread (math-verify's own
timeout uses SIGALRM: main thread only, and it cannot interrupt a big-integer
power computed in C); a timed-out worker is killed and replaced. The same pool runs the
sympy part of `e1jax.rewards.original_math` (requests with "rules": "original").
Reward is 1.0 for "correct", 0.0 for every other reason ("format_error",
"no_answer", "mismatch", "timeout", "grader_error" when a worker crashed).
A boxed answer over MAX_ANSWER_CHARS is a "mismatch" without being read.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from e1jax.errors import E1Error
from e1jax.rewards.normalize import exact_number, matching_brace, strip_string
from e1jax.rewards.types import GradeResult

THINK_CLOSE = "</think>"
_BOX_COMMANDS = ("\\boxed", "\\fbox")
_WORKER_STARTUP_TIMEOUT_S = 120.0
_WORKER_MEMORY_BYTES = 4 << 30
_MAX_DEFAULT_WORKERS = 16
# Boxed answers longer than this are graded wrong unread (ground truths are a few hundred characters at most).
MAX_ANSWER_CHARS = 10_000


def default_workers() -> int:
    return max(1, min(_MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


# ---------------------------------------------------------------- extraction


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` or `\\fbox{...}` (nested braces kept), or None.

    Also reads the brace-less form `\\boxed 5` (up to the next space or `$`).
    A last box whose braces never close (a truncated answer) gives None.
    """
    start, command = max((text.rfind(cmd), cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    i = start + len(command)
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        close = matching_brace(text, i)
        if close < 0:
            return None
        content = text[i + 1 : close].strip()
    else:
        if i == start + len(command) and i < len(text) and text[i].isalpha():
            return None  # "\\boxedfoo" is some other command
        end = i
        while end < len(text) and not text[end].isspace() and text[end] != "$":
            end += 1
        content = text[i:end].rstrip(".,;")
    return content or None


def ground_truth_answers(ground_truth) -> list[str]:
    """Acceptable answers as strings: a string, a number (`142.0` -> `142`) or a list of them."""
    if isinstance(ground_truth, (list, tuple)):
        answers = [answer for item in ground_truth for answer in ground_truth_answers(item)]
        if not answers:
            raise E1Error("ground truth is an empty list")
        return answers
    if ground_truth is None:
        raise E1Error("ground truth is missing (null)")
    if isinstance(ground_truth, bool):
        raise E1Error(f"ground truth must be a string, number or list, not a bool ({ground_truth})")
    if isinstance(ground_truth, int):
        return [str(ground_truth)]
    if isinstance(ground_truth, float):
        if not math.isfinite(ground_truth):
            raise E1Error(f"ground truth is not a finite number: {ground_truth}")
        return [str(int(ground_truth)) if ground_truth.is_integer() else repr(ground_truth)]
    if isinstance(ground_truth, str):
        text = ground_truth.strip()
        if "\\boxed" in text or "\\fbox" in text:
            text = extract_boxed(text) or text
        if not text:
            raise E1Error("ground truth is an empty string")
        return [text]
    raise E1Error(f"ground truth must be a string, number or list, not {type(ground_truth).__name__}")


# ------------------------------------------------------------------- grading


def grade_math(
    response: str,
    ground_truth,
    *,
    timeout_s: float = 5.0,
    require_think_close: bool = True,
) -> GradeResult:
    """Grade one response against a ground truth (string, number or list of acceptable answers)."""
    if not isinstance(response, str):
        raise E1Error(f"response must be a string, not {type(response).__name__}")
    golds = ground_truth_answers(ground_truth)
    if THINK_CLOSE in response:
        solution = response.rsplit(THINK_CLOSE, 1)[1]
    elif require_think_close:
        return GradeResult(0.0, False, None, "format_error")
    else:
        solution = response
    extracted = extract_boxed(solution)
    if extracted is None:
        return GradeResult(0.0, False, None, "no_answer")
    verdict = compare_answers(extracted, golds, timeout_s=timeout_s)
    return GradeResult(1.0 if verdict == "correct" else 0.0, verdict == "correct", extracted, verdict)


def compare_answers(answer: str, golds: Sequence[str], *, timeout_s: float = 5.0) -> str:
    """"correct", "mismatch", "timeout" or "grader_error" for one extracted answer."""
    if len(answer) > MAX_ANSWER_CHARS:
        return "mismatch"
    normalized = strip_string(answer)
    if not normalized:
        return "mismatch"
    gold_normalized = [strip_string(gold) for gold in golds]
    if normalized in gold_normalized:
        return "correct"
    # Numbers have one canonical spelling after strip_string, so unequal strings are unequal numbers.
    if exact_number(normalized) is not None and all(exact_number(g) is not None for g in gold_normalized):
        return "mismatch"
    return _POOL.verdict({"answer": answer, "golds": list(golds)}, timeout_s)


def grade_math_batch(
    responses: Sequence[str],
    ground_truths: Sequence,
    *,
    workers: int | None = None,
    timeout_s: float = 5.0,
    require_think_close: bool = True,
) -> list[GradeResult]:
    """Grade many responses in parallel, results in input order; at most `workers` symbolic checks at once."""

    def one(response, truth):
        return grade_math(response, truth, timeout_s=timeout_s, require_think_close=require_think_close)

    return run_batch(one, responses, ground_truths, workers)


def run_batch(grade_one, responses: Sequence[str], ground_truths: Sequence, workers: int | None) -> list:
    """grade_one(response, truth) over the pairs on `workers` threads (and as many verifier processes), in order."""
    responses = list(responses)
    ground_truths = list(ground_truths)
    if len(responses) != len(ground_truths):
        raise E1Error(f"{len(responses)} responses but {len(ground_truths)} ground truths")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise E1Error(f"workers must be at least 1, got {workers}")
    _POOL.reserve(workers)
    if workers == 1 or len(responses) <= 1:
        return [grade_one(r, t) for r, t in zip(responses, ground_truths)]
    with ThreadPoolExecutor(max_workers=min(workers, len(responses))) as executor:
        return list(executor.map(grade_one, responses, ground_truths))


# ------------------------------------------------- symbolic comparison pool


class _Worker:
    """One verifier process, spoken to in JSON lines over its stdin/stdout."""

    def __init__(self):
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from e1jax.rewards.math import worker_main; worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            bufsize=0,
        )
        self._buffer = b""
        if self._read_line(_WORKER_STARTUP_TIMEOUT_S) is None:
            self.kill()
            raise E1Error("the math verifier worker did not start (is math-verify installed?)")

    def ask(self, request: dict, timeout_s: float) -> dict | None:
        """The worker's reply, {"timeout": True} when it took too long, or None when it died."""
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        except OSError:
            return None
        return self._read_line(timeout_s)

    def _read_line(self, timeout_s: float) -> dict | None:
        fd = self.proc.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                return {"timeout": True}
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass


class _VerifierPool:
    """Lazily started verifier processes shared by all threads; grows on demand up to max_size."""

    def __init__(self):
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._live = 0
        self._pid = os.getpid()
        self.max_size = default_workers()

    def reserve(self, size: int) -> None:
        with self._cond:
            self.max_size = max(self.max_size, size)
            self._cond.notify_all()

    def verdict(self, request: dict, timeout_s: float) -> str:
        worker = self._acquire()
        healthy = False
        try:
            reply = worker.ask(request, timeout_s)
            if reply is None:
                return "grader_error"  # the worker died on this input
            if reply.get("timeout"):
                return "timeout"
            healthy = True
            if "error" in reply:
                return "grader_error"
            return "correct" if reply["match"] else "mismatch"
        finally:
            self._release(worker, healthy)

    def _acquire(self) -> _Worker:
        with self._cond:
            if self._pid != os.getpid():  # a forked child must not share the parent's pipes
                self._idle, self._live, self._pid = [], 0, os.getpid()
            while True:
                while self._idle:
                    worker = self._idle.pop()
                    if worker.proc.poll() is None:
                        return worker
                    self._live -= 1  # killed from outside while idle
                    worker.kill()
                if self._live < self.max_size:
                    break
                self._cond.wait()
            self._live += 1
        try:
            return _Worker()
        except BaseException:
            with self._cond:
                self._live -= 1
                self._cond.notify()
            raise

    def _release(self, worker: _Worker, healthy: bool) -> None:
        if not healthy:
            worker.kill()
        with self._cond:
            if healthy and self._pid == os.getpid():
                self._idle.append(worker)
            else:
                self._live -= 1
            self._cond.notify()

    def close(self) -> None:
        """Stop the idle workers (busy ones stop when released)."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._live -= len(idle)
        for worker in idle:
            worker.kill()


_POOL = _VerifierPool()
atexit.register(_POOL.close)


def pool_verdict(request: dict, timeout_s: float) -> str:
    """A verifier worker's "correct" / "mismatch" on a request ("rules": "e1jax" or "original"),
    "timeout" past `timeout_s`, "grader_error" when it failed."""
    return _POOL.verdict(request, timeout_s)


def close_verifier_workers() -> None:
    """Stop the symbolic-comparison worker processes (they restart on the next comparison)."""
    _POOL.close()


# ---------------------------------------------------------- worker process


def _as_latex(answer: str) -> str:
    return "\\boxed{" + answer.replace("\\$", "").replace("$", "").strip() + "}"


def worker_main() -> None:
    """Entry point of a verifier process: one JSON request per stdin line, one reply per stdout line."""
    import logging
    import resource
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    protocol = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    sys.stdout = sys.stderr
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _WORKER_MEMORY_BYTES if hard == resource.RLIM_INFINITY else min(hard, _WORKER_MEMORY_BYTES)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    logging.disable(logging.CRITICAL)

    import functools

    from math_verify import parse, verify

    # Rollouts of one prompt share a ground truth and often an answer: parse each string once.
    @functools.lru_cache(maxsize=4096)
    def parsed(answer: str) -> list:
        return parse(_as_latex(answer), parsing_timeout=None)

    def matches(answer: str, golds: list[str]) -> bool:
        predicted = parsed(answer)
        if not predicted:
            return False
        for gold in golds:
            parsed_gold = parsed(gold)
            if parsed_gold and verify(parsed_gold, predicted, timeout_seconds=None):
                return True
        return False

    def original_matches(request: dict) -> bool:
        from e1jax.rewards.original_sympy import symbolic_match

        return symbolic_match(request["candidates"])

    rules = {"e1jax": lambda request: matches(request["answer"], request["golds"]), "original": original_matches}
    protocol.write(b'{"ready": true}\n')
    for line in sys.stdin.buffer:
        try:
            request = json.loads(line)
            reply = {"match": bool(rules[request.get("rules", "e1jax")](request))}
        except Exception as err:  # noqa: BLE001 - any failure is reported, the worker keeps serving
            reply = {"error": f"{type(err).__name__}: {err}"[:500]}
        protocol.write(json.dumps(reply).encode() + b"\n")
