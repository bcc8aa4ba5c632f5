"""The launcher: sets up one run inside the sandbox and execs the program.

The grader runs this file by path in a bare interpreter, as
`python -I -S launcher.py --e1jax-sandbox-launch CONFIG`, so it imports only
the standard library and its sibling `linux.py` (the package, and so
`e1jax`, is not importable there).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import stat
import sys

if __package__:
    from e1jax.rewards.sandbox import linux
else:
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # last, so it shadows no standard module
    import linux

LAUNCH_FLAG = "--e1jax-sandbox-launch"
LAUNCH_FAILED_EXIT = 125
MAIN_SCRIPT = "main.py"
WORKDIR = "/tmp"  # inside the sandbox's root: a fresh tmpfs per run
NEW_ROOT = "/tmp"  # where the sandbox's root is assembled (covers the host /tmp in the namespace)
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/dev")
PROGRAM_PATH = "/usr/local/bin:/usr/bin:/bin"


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
    spaces = linux.unshare(as_root=uid is not None, notes=notes)
    workdir = config["hostdir"]
    if "mount" in spaces:
        _setup_mounts(files, uid, limits, config["python_paths"], notes)
        workdir = WORKDIR
    os.chdir(workdir)
    if "pid" in spaces:
        _fork_init(status_fd, mount_proc="mount" in spaces, notes=notes)
    elif "mount" in spaces:
        try:
            linux.mount("proc", "/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
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


def _setup_mounts(files: dict[str, bytes], uid: int | None, limits: dict, python_paths: list[str], notes: list[str]):
    """Build a minimal read-only root and chroot into it.

    The new root holds the system directories, the interpreter's directories,
    /dev (with a private /dev/shm), /proc and a fresh tmpfs /tmp owned by the
    sandbox uid (the working directory). Everything else (home directories,
    /work, data sets, checkpoints, the host /tmp) is not there at all.
    """
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    failed = []
    for mountpoint, options in linux.mountinfo():
        flags = linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY
        for opt in options:
            flags |= linux.MOUNT_OPTION_FLAGS.get(opt, 0)
        try:
            linux.mount(None, mountpoint, None, flags)
        except OSError:
            failed.append(mountpoint)
    if failed:
        notes.append(f"{len(failed)} host mounts stay writable: {failed[:5]}")
    root = NEW_ROOT
    # Handles taken before the new root covers NEW_ROOT, which may lie on the way to some of them.
    sources = [(path, _open_source(path)) for path in _exposed_paths(python_paths)]
    linux.mount("tmpfs", root, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "size=1m,nr_inodes=1024,mode=0755")
    workdir = root + WORKDIR
    os.makedirs(workdir)
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    work_options = f"size={limits['disk_mb']}m,nr_inodes=4096,mode=0700{owner}"
    linux.mount("tmpfs", workdir, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, work_options)
    for path, source in sources:  # after the working directory, in case the interpreter lives under it
        _expose(path, source, root)
    if os.path.isdir(root + "/dev/shm"):
        shm_options = "size=16m,nr_inodes=256,mode=1777"
        shm_flags = linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC
        linux.mount("tmpfs", root + "/dev/shm", "tmpfs", shm_flags, shm_options)
    os.makedirs(root + "/proc", exist_ok=True)
    for name, data in files.items():
        fd = os.open(os.path.join(workdir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with open(fd, "wb") as f:
            f.write(data)
    linux.mount(None, root, None, linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_NODEV)
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
        linux.mount(f"/proc/self/fd/{source}", target, None, linux.MS_BIND | linux.MS_REC)
    else:
        open(target, "w").close()
        linux.mount(f"/proc/self/fd/{source}", target, None, linux.MS_BIND)
    os.close(source)


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
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
    if mount_proc:
        try:
            linux.mount("proc", "/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
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
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)
    # Cleared by the uid change above, so set afterwards: die with the launcher.
    linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == LAUNCH_FLAG:
    _launcher_main(json.loads(sys.argv[2]))
