"""Run an untrusted Python program in a sandbox and capture what it prints.

Each run gets its own process session, a fresh working directory, resource
limits (wall and CPU time, address space, processes, file size, open files),
a scrubbed environment and, where the kernel allows it, private network,
mount, PID, IPC and UTS namespaces. As root the program runs as a dedicated
unprivileged uid (one per concurrent run, taken from a lock-file pool) so
that the limits bind (root is exempt from RLIMIT_NPROC) and every process of
that uid can be killed afterwards.

Layout of one run:

    grader ──Popen(setsid)──> launcher (this file run as a script, as root)
                                unshare(net, mount, pid, ipc, uts)
                                chroot into a minimal read-only root: system
                                dirs, the interpreter's dirs, /dev, and a
                                private tmpfs /tmp (the working directory)
                                fork ──> init: PID 1 of the new PID namespace,
                                         fresh /proc, reaps orphans
                                         fork ──> program: rlimits, setuid,
                                                  no_new_privs, exec python

When the program exits, init exits and the kernel kills everything left in
the PID namespace; the grader then kills the process group and every process
of the sandbox uid, so daemonised children do not survive either way.

This file is also executed by a bare interpreter (`python -I -S sandbox.py`)
as the launcher, so it imports only the standard library.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import json
import math
import os
import re
import resource
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

LAUNCH_FLAG = "--e1jax-sandbox-launch"
LAUNCH_FAILED_EXIT = 125
MAIN_SCRIPT = "main.py"
WORKDIR = "/tmp"  # inside the sandbox's root: a fresh tmpfs per run
NEW_ROOT = "/tmp"  # where the sandbox's root is assembled (covers the host /tmp in the namespace)
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/dev")
PROGRAM_PATH = "/usr/local/bin:/usr/bin:/bin"

# The sandbox uids: UID_SLOTS consecutive ids from the first base that the
# current user namespace maps (override with E1JAX_SANDBOX_UID_BASE). Any
# process with such a uid is killed, so the range must belong to nobody: the
# first lies in systemd's unused 0x70000000-0x7FFFFFFF block (below 2**31, which
# some tools treat as signed), far above LDAP/SSSD ranges; the second is for
# user namespaces that map only 65536 ids.
UID_SLOTS = 256
UID_BASE_CANDIDATES = (0x7E1A0000, 60_600)

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

_MOUNT_OPTION_FLAGS = {
    "ro": MS_RDONLY,
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
}


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up (not a fault of the program)."""


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    time_s: float = 6.0  # wall clock, from launch to exit
    cpu_s: float | None = None  # RLIMIT_CPU; None: time_s + 1
    memory_mb: int = 1024  # RLIMIT_AS of the program
    max_processes: int = 16  # RLIMIT_NPROC: processes and threads of the sandbox uid
    max_file_mb: int = 16  # RLIMIT_FSIZE
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_output_bytes: int = 16 << 20  # stdout (or stderr) beyond this: killed
    max_stderr_bytes: int = 64 << 10  # tail of stderr that is kept
    disk_mb: int = 64  # size of the private tmpfs working directory

    def cpu_limit_s(self) -> int:
        return max(1, math.ceil(self.cpu_s if self.cpu_s is not None else self.time_s + 1))


@dataclasses.dataclass(frozen=True)
class Isolation:
    """Which protections a run actually got (the kernel may refuse some)."""

    uid: int | None  # the unprivileged uid the program ran as; None: the caller's
    netns: bool
    mountns: bool
    pidns: bool
    notes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    stdout: str
    stderr: str  # the last max_stderr_bytes
    returncode: int | None  # negative: killed by that signal
    timed_out: bool  # killed at the wall-clock limit
    output_limited: bool  # killed for printing more than max_output_bytes
    cpu_limited: bool  # killed by RLIMIT_CPU
    wall_s: float
    cpu_s: float
    max_rss_mb: float
    isolation: Isolation


# ----------------------------------------------------------------------------
# Grader side
# ----------------------------------------------------------------------------


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
    with _UID_POOL.slot() as uid:
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
                [sys.executable, "-I", "-S", os.path.abspath(__file__), LAUNCH_FLAG, json.dumps(config)],
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
                _kill_uid(uid)
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
        _kill_uid(uid)


def _kill_uid(uid: int) -> None:
    """SIGKILL every live process whose real, effective or saved uid is `uid`, until none is left."""
    for attempt in range(200):
        pids = _live_pids_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(min(0.001 * (attempt + 1), 0.02))
    raise SandboxError(f"processes of sandbox uid {uid} survive SIGKILL: {_live_pids_of_uid(uid)[:10]}")


def _live_pids_of_uid(uid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", "rb") as f:
                text = f.read()
        except OSError:
            continue
        state = uids = None
        for line in text.splitlines():
            if line.startswith(b"State:"):
                state = line.split()[1]
            elif line.startswith(b"Uid:"):
                uids = {int(x) for x in line.split()[1:4]}
                break
        if uids and uid in uids and state not in (b"Z", b"X"):
            pids.append(int(name))
    return pids


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


class _UidPool:
    """Dedicated sandbox uids, one per concurrent run, shared across processes through flock."""

    def __init__(self) -> None:
        self._base: int | None = None

    @contextlib.contextmanager
    def slot(self):
        if os.geteuid() != 0:
            yield None
            return
        base = self._uid_base()
        lock_dir = _lock_dir()
        start = (os.getpid() * 7919 + time.monotonic_ns()) % UID_SLOTS
        while True:
            for i in range(UID_SLOTS):
                n = (start + i) % UID_SLOTS
                fd = os.open(os.path.join(lock_dir, f"slot-{n}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                try:
                    uid = base + n
                    _kill_uid(uid)  # leftovers of a grader that crashed mid-run
                    yield uid
                finally:
                    os.close(fd)
                return
            time.sleep(0.01)

    def _uid_base(self) -> int:
        if self._base is None:
            override = os.environ.get("E1JAX_SANDBOX_UID_BASE")
            candidates = (int(override),) if override else UID_BASE_CANDIDATES
            for base in candidates:
                if _id_range_mapped("/proc/self/uid_map", base, UID_SLOTS) and _id_range_mapped(
                    "/proc/self/gid_map", base, UID_SLOTS
                ):
                    self._base = base
                    break
            else:
                raise SandboxError(f"no sandbox uid range among {candidates} is mapped in this user namespace")
        return self._base


_UID_POOL = _UidPool()


def _id_range_mapped(path: str, first: int, count: int) -> bool:
    try:
        with open(path) as f:
            rows = [tuple(int(x) for x in line.split()) for line in f if line.strip()]
    except OSError:
        return True  # no user namespaces: every id is valid
    return any(inside <= first and first + count <= inside + length for inside, _outside, length in rows)


def _lock_dir() -> str:
    root = "/run" if os.path.isdir("/run") and os.access("/run", os.W_OK) else tempfile.gettempdir()
    path = os.path.join(root, f"e1jax-sandbox-{os.geteuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise SandboxError(f"sandbox lock directory {path} is not a private directory of this user")
    return path


# ----------------------------------------------------------------------------
# Launcher side: runs as `python -I -S sandbox.py --e1jax-sandbox-launch CONFIG`
# ----------------------------------------------------------------------------

_libc = None


def _sys(name: str, *args) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if getattr(_libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _sys("mount", enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))


def _prctl(option: int, value: int) -> None:
    _sys("prctl", option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def _launcher_main(config: dict) -> None:
    status_fd = config["status_fd"]
    try:
        _launch(config, status_fd)
    except BaseException as e:  # report anything, from the launcher or its forked child
        with contextlib.suppress(OSError):
            os.write(status_fd, (json.dumps({"fatal": f"{type(e).__name__}: {e}"}) + "\n").encode())
        os._exit(LAUNCH_FAILED_EXIT)


def _launch(config: dict, status_fd: int) -> None:
    uid = config["uid"]
    limits = config["limits"]
    files = {}
    for name in config["files"]:
        with open(os.path.join(config["hostdir"], name), "rb") as f:
            files[name] = f.read()
    notes: list[str] = []
    spaces = _unshare(as_root=uid is not None, notes=notes)
    workdir = config["hostdir"]
    if "mount" in spaces:
        _setup_mounts(files, uid, limits, config["python_paths"], notes)
        workdir = WORKDIR
    os.chdir(workdir)
    if "pid" in spaces:
        _fork_init(status_fd, mount_proc="mount" in spaces, notes=notes)
    elif "mount" in spaces:
        try:
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError as e:
            notes.append(f"no /proc ({e})")
    _limit_and_drop(uid, limits, config["cpu_s"], config["python"])
    status = {
        "uid": uid,
        "netns": "net" in spaces,
        "mountns": "mount" in spaces,
        "pidns": "pid" in spaces,
        "notes": notes,
    }
    os.write(status_fd, (json.dumps(status) + "\n").encode())
    os.close(status_fd)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    env = {
        "PATH": PROGRAM_PATH,
        "LANG": "C.UTF-8",
        "HOME": workdir,
        # Thread pools sized to the host would exceed the process limit.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    python = config["python"]
    os.execve(python, [python, "-I", "-B", MAIN_SCRIPT, *config["argv"]], env)


def _unshare(as_root: bool, notes: list[str]) -> set[str]:
    """Enter new namespaces, as many as the kernel allows; returns their names."""
    wanted = {"net": CLONE_NEWNET, "mount": CLONE_NEWNS, "pid": CLONE_NEWPID, "ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS}
    if not as_root:
        # Unprivileged: a user namespace grants the capabilities the others need.
        uid, gid = os.getuid(), os.getgid()
        try:
            _sys("unshare", CLONE_NEWUSER)
            for path, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{path}", "w") as f:
                    f.write(text)
        except OSError as e:
            notes.append(f"no user namespace ({e}); running without namespaces")
            return set()
    try:
        _sys("unshare", sum(wanted.values()))
        return set(wanted)
    except OSError:
        pass
    got = set()
    for name, flag in wanted.items():
        try:
            _sys("unshare", flag)
            got.add(name)
        except OSError as e:
            notes.append(f"no {name} namespace ({e})")
    return got


def _setup_mounts(files: dict[str, bytes], uid: int | None, limits: dict, python_paths: list[str], notes: list[str]):
    """Build a minimal read-only root and chroot into it.

    The new root holds the system directories, the interpreter's directories,
    /dev (with a private /dev/shm), /proc and a fresh tmpfs /tmp owned by the
    sandbox uid (the working directory). Everything else (home directories,
    /work, data sets, checkpoints, the host /tmp) is not there at all.
    """
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    failed = []
    for mountpoint, options in _mountinfo():
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for opt in options:
            flags |= _MOUNT_OPTION_FLAGS.get(opt, 0)
        try:
            _mount(None, mountpoint, None, flags)
        except OSError:
            failed.append(mountpoint)
    if failed:
        notes.append(f"{len(failed)} host mounts stay writable: {failed[:5]}")
    root = NEW_ROOT
    # Handles taken before the new root covers NEW_ROOT, which may lie on the way to some of them.
    sources = [(path, _open_source(path)) for path in _exposed_paths(python_paths)]
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=1024,mode=0755")
    workdir = root + WORKDIR
    os.makedirs(workdir)
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    work_options = f"size={limits['disk_mb']}m,nr_inodes=4096,mode=0700{owner}"
    _mount("tmpfs", workdir, "tmpfs", MS_NOSUID | MS_NODEV, work_options)
    for path, source in sources:  # after the working directory, in case the interpreter lives under it
        _expose(path, source, root)
    if os.path.isdir(root + "/dev/shm"):
        shm_options = "size=16m,nr_inodes=256,mode=1777"
        _mount("tmpfs", root + "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, shm_options)
    os.makedirs(root + "/proc", exist_ok=True)
    for name, data in files.items():
        fd = os.open(os.path.join(workdir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with open(fd, "wb") as f:
            f.write(data)
    _mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chroot(root)
    os.chdir("/")


def _exposed_paths(python_paths: list[str]) -> list[str]:
    """System directories plus the interpreter's, without ones nested in others."""
    wanted = [p for p in SYSTEM_PATHS if os.path.lexists(p)]
    for path in python_paths:
        wanted.append(path if os.path.isdir(path) else os.path.dirname(path))
    kept: list[str] = []
    for path in sorted(set(wanted), key=len):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def _open_source(path: str) -> str | int:
    """A symlink's target, or an O_PATH descriptor of a directory or file."""
    if os.path.islink(path):
        return os.readlink(path)
    return os.open(path, os.O_PATH | os.O_CLOEXEC)


def _expose(path: str, source: str | int, root: str) -> None:
    """Make `path` appear at the same place under `root` (symlinks copied, the rest bound)."""
    target = root + path
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    if isinstance(source, str):
        os.symlink(source, target)
        return
    if stat.S_ISDIR(os.fstat(source).st_mode):
        os.makedirs(target, mode=0o755, exist_ok=True)
        _mount(f"/proc/self/fd/{source}", target, None, MS_BIND | MS_REC)
    else:
        open(target, "w").close()
        _mount(f"/proc/self/fd/{source}", target, None, MS_BIND)
    os.close(source)


def _mountinfo() -> list[tuple[str, list[str]]]:
    rows = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" - ")[0].split()
            mountpoint = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            rows.append((mountpoint, fields[5].split(",")))
    return rows


def _fork_init(status_fd: int, mount_proc: bool, notes: list[str]) -> None:
    """Returns in the program's process, below an init (PID 1) of the new PID namespace.

    The launcher stays in the caller's namespace and exits the way the program
    did. The init (root, out of the program's reach) reaps orphans; when it
    exits after the program, the kernel kills everything left in the namespace.
    Signals behave normally for the program because it is not PID 1.
    """
    report_r, report_w = os.pipe()
    init = os.fork()
    if init:  # the launcher
        os.close(report_w)
        os.close(status_fd)
        _, status = os.waitpid(init, 0)
        reported = os.read(report_r, 64)
        _mirror_exit(int(reported) if reported else status)
    os.close(report_r)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if mount_proc:
        try:
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError as e:
            notes.append(f"host /proc stays visible ({e})")
    program = os.fork()
    if program:  # the init
        os.close(status_fd)
        while True:
            pid, status = os.waitpid(-1, 0)
            if pid == program:
                os.write(report_w, str(status).encode())
                os._exit(0)
    os.close(report_w)


def _mirror_exit(status: int) -> None:
    """Exit the way a child with wait status `status` did."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_DFL)
        with contextlib.suppress(OSError):
            os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


def _limit_and_drop(uid: int | None, limits: dict, cpu_s: int, python: str) -> None:
    mem = limits["memory_mb"] << 20
    wanted = [
        (resource.RLIMIT_CPU, cpu_s, cpu_s + 1),
        (resource.RLIMIT_AS, mem, mem),
        (resource.RLIMIT_FSIZE, limits["max_file_mb"] << 20, limits["max_file_mb"] << 20),
        (resource.RLIMIT_NOFILE, limits["max_open_files"], limits["max_open_files"]),
        (resource.RLIMIT_NPROC, limits["max_processes"], limits["max_processes"]),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_MEMLOCK, 0, 0),
    ]
    for which, soft, hard in wanted:
        _, old_hard = resource.getrlimit(which)
        if old_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, old_hard), min(hard, old_hard)
        resource.setrlimit(which, (soft, hard))
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        if os.getuid() != uid or os.geteuid() != uid or os.getgid() != uid:
            raise OSError("failed to drop privileges")
        if not os.access(python, os.X_OK):
            raise OSError(
                f"the sandbox uid {uid} cannot run {python} (without a mount namespace, use an "
                "interpreter outside private directories such as /root)"
            )
    os.umask(0o077)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    # Cleared by the uid change above, so set afterwards: die with the launcher.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == LAUNCH_FLAG:
    _launcher_main(json.loads(sys.argv[2]))
