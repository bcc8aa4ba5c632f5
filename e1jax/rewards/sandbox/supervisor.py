"""The grader's side of a run: start the launcher, supervise it, kill what is left."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from e1jax.rewards.sandbox import launcher
from e1jax.rewards.sandbox.launcher import LAUNCH_FAILED_EXIT, LAUNCH_FLAG, MAIN_SCRIPT, PROGRAM_PATH
from e1jax.rewards.sandbox.types import Isolation, SandboxError, SandboxLimits, SandboxResult
from e1jax.rewards.sandbox.uids import UID_POOL, kill_uid


def run_sandboxed(
    source: str,
    stdin: str | bytes = "",
    limits: SandboxLimits = SandboxLimits(),
    *,
    files: dict[str, str | bytes] | None = None,
    argv: tuple[str, ...] | list[str] = (),
    python: str | None = None,
) -> SandboxResult:
    """Run `source` as a Python program (`python -I -B main.py *argv`) in the sandbox.

    `files` are placed next to it in the working directory (plain names only).
    Raises SandboxError when the sandbox cannot be set up; everything the
    program does (crash, hang, flood) is reported in the result instead.
    """
    files = dict(files or {})
    for name in files:
        if not name or "/" in name or name.startswith(".") or name == MAIN_SCRIPT:
            raise SandboxError(f"bad sandbox file name {name!r}")
    files[MAIN_SCRIPT] = source
    python = python or sys.executable
    stdin_bytes = stdin.encode() if isinstance(stdin, str) else bytes(stdin)
    with UID_POOL.slot() as uid:
        return _run_in_slot(files, stdin_bytes, limits, list(argv), python, uid)


def sandbox_info() -> Isolation:
    """The isolation a run gets on this machine (runs an empty program)."""
    return run_sandboxed("", limits=SandboxLimits(time_s=10.0)).isolation


def _run_in_slot(
    files: dict[str, str | bytes], stdin: bytes, limits: SandboxLimits, argv: list[str], python: str, uid: int | None
) -> SandboxResult:
    hostdir = tempfile.mkdtemp(prefix="e1jax-sandbox-")
    status_r = status_w = -1
    proc = None
    try:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else bytes(content)
            fd = os.open(os.path.join(hostdir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with open(fd, "wb") as f:
                f.write(data)
        if uid is not None:  # only used as the working directory when there is no mount namespace
            os.chown(hostdir, uid, uid)
        os.chmod(hostdir, 0o700)
        status_r, status_w = os.pipe()
        config = {
            "hostdir": hostdir,
            "files": sorted(files),
            "uid": uid,
            "python": python,
            "python_paths": _python_paths(python),
            "argv": argv,
            "status_fd": status_w,
            "limits": dataclasses.asdict(limits),
            "cpu_s": limits.cpu_limit_s(),
        }
        with tempfile.TemporaryFile() as stdin_file:
            stdin_file.write(stdin)
            stdin_file.flush()
            stdin_file.seek(0)
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(launcher.__file__), LAUNCH_FLAG, json.dumps(config)],
                stdin=stdin_file,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=hostdir,
                env={"PATH": PROGRAM_PATH, "LANG": "C.UTF-8"},
                start_new_session=True,
                pass_fds=(status_w,),
                close_fds=True,
            )
        os.close(status_w)
        status_w = -1
        outcome = _supervise(proc, limits, uid)
        status = _read_status(status_r)
    finally:
        if proc is not None:
            if proc.returncode is None:  # not reaped yet, so its pid still names our group
                _kill_run(proc.pid, uid)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(proc.pid, 0)
                proc.returncode = -signal.SIGKILL
            elif uid is not None:
                kill_uid(uid)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        for fd in (status_r, status_w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(hostdir, ignore_errors=True)
    if "fatal" in status:
        raise SandboxError(f"sandbox launch failed: {status['fatal']}")
    if not status:
        if outcome["returncode"] == LAUNCH_FAILED_EXIT or not (outcome["timed_out"] or outcome["output_limited"]):
            detail = outcome["stderr"].decode(errors="replace").strip().splitlines()[-1:] or ["no detail"]
            raise SandboxError(f"sandbox launcher died before starting the program: {detail[0]}")
        status = {"uid": uid, "netns": False, "mountns": False, "pidns": False, "notes": ["killed during setup"]}
    returncode = outcome["returncode"]
    killed_by_us = outcome["timed_out"] or outcome["output_limited"]
    cpu_limited = not killed_by_us and (
        returncode == -signal.SIGXCPU
        or (returncode == -signal.SIGKILL and outcome["cpu_s"] >= limits.cpu_limit_s() - 0.1)
    )
    return SandboxResult(
        stdout=outcome["stdout"].decode(errors="replace"),
        stderr=outcome["stderr"].decode(errors="replace"),
        returncode=returncode,
        timed_out=outcome["timed_out"],
        output_limited=outcome["output_limited"],
        cpu_limited=cpu_limited,
        wall_s=outcome["wall_s"],
        cpu_s=outcome["cpu_s"],
        max_rss_mb=outcome["max_rss_mb"],
        isolation=Isolation(
            uid=status.get("uid"),
            netns=bool(status.get("netns")),
            mountns=bool(status.get("mountns")),
            pidns=bool(status.get("pidns")),
            notes=tuple(status.get("notes", ())),
        ),
    )


def _supervise(proc: subprocess.Popen, limits: SandboxLimits, uid: int | None) -> dict:
    """Pump stdout/stderr until the launcher exits, enforcing wall time and output caps."""
    start = time.monotonic()
    deadline = start + limits.time_s
    out, err = bytearray(), bytearray()
    err_total = 0
    timed_out = output_limited = False
    wait_status = rusage = None
    exited_at = None
    sel = selectors.DefaultSelector()
    streams = {proc.stdout.fileno(): "out", proc.stderr.fileno(): "err"}
    for fd in streams:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    pidfd = -1
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(proc.pid)
        sel.register(pidfd, selectors.EVENT_READ)
    try:
        while True:
            if wait_status is None and os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                exited_at = time.monotonic()
                # Whatever the program left behind dies now (its pipes then reach EOF); the
                # launcher is reaped only afterwards so that its pid cannot be reused meanwhile.
                _kill_run(proc.pid, uid)
                _, wait_status, rusage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(wait_status)
                if pidfd >= 0:
                    sel.unregister(pidfd)
            now = time.monotonic()
            if wait_status is not None and (not streams or now > exited_at + 2.0):
                break
            if wait_status is None and now >= deadline and not timed_out:
                timed_out = True
                _kill_run(proc.pid, uid)
            if wait_status is None:
                timeout = max(0.0, deadline - now) if not timed_out else 0.05
                if pidfd < 0:
                    timeout = min(timeout, 0.01)
            else:
                timeout = 0.05
            for key, _ in sel.select(timeout):
                fd = key.fd
                if fd == pidfd:
                    continue
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(fd)
                    del streams[fd]
                    continue
                if streams[fd] == "out":
                    room = limits.max_output_bytes - len(out)
                    out += chunk[: max(room, 0)]
                    if len(chunk) > room and not output_limited:
                        output_limited = True
                        _kill_run(proc.pid, uid)
                else:
                    err_total += len(chunk)
                    err += chunk
                    if len(err) > 2 * limits.max_stderr_bytes:
                        del err[: len(err) - limits.max_stderr_bytes]
                    if err_total > limits.max_output_bytes and not output_limited:
                        output_limited = True
                        _kill_run(proc.pid, uid)
    finally:
        sel.close()
        if pidfd >= 0:
            os.close(pidfd)
    returncode = proc.returncode
    return {
        "stdout": bytes(out),
        "stderr": bytes(err[-limits.max_stderr_bytes :]),
        "returncode": returncode,
        "timed_out": timed_out,
        "output_limited": output_limited,
        "wall_s": (exited_at or time.monotonic()) - start,
        "cpu_s": rusage.ru_utime + rusage.ru_stime,
        "max_rss_mb": rusage.ru_maxrss / 1024.0,
    }


def _read_status(fd: int) -> dict:
    chunks = []
    os.set_blocking(fd, False)
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    text = b"".join(chunks).decode(errors="replace").strip()
    if not text:
        return {}
    try:
        return json.loads(text.splitlines()[-1])
    except json.JSONDecodeError:
        return {"fatal": f"unreadable launcher status {text[:200]!r}"}


def _kill_run(pgid: int, uid: int | None) -> None:
    """Kill the run's process group and, with a sandbox uid, every process of that uid."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    if uid is not None:
        kill_uid(uid)


def _python_paths(python: str) -> list[str]:
    """Directories the program's interpreter must be able to reach."""
    real = os.path.realpath(python)
    paths = {real, os.path.dirname(os.path.dirname(real))}
    if os.path.realpath(sys.executable) == real or os.path.abspath(python) == os.path.abspath(sys.executable):
        paths |= {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    pyvenv = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(python))), "pyvenv.cfg")
    if os.path.exists(pyvenv):
        paths.add(os.path.dirname(pyvenv))
    return sorted(os.path.realpath(p) for p in paths)
