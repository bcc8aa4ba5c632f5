"""The sandbox uids: one per concurrent run, and killing whatever runs as one."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import stat
import tempfile
import time

from e1jax.rewards.sandbox.types import SandboxError

# The sandbox uids: UID_SLOTS consecutive ids from the first base that the
# current user namespace maps (override with E1JAX_SANDBOX_UID_BASE). Any
# process with such a uid is killed, so the range must belong to nobody: the
# first lies in systemd's unused 0x70000000-0x7FFFFFFF block (below 2**31, which
# some tools treat as signed), far above LDAP/SSSD ranges; the second is for
# user namespaces that map only 65536 ids.
UID_SLOTS = 256
UID_BASE_CANDIDATES = (0x7E1A0000, 60_600)


class UidPool:
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
                    kill_uid(uid)  # leftovers of a grader that crashed mid-run
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


UID_POOL = UidPool()


def kill_uid(uid: int) -> None:
    """SIGKILL every live process whose real, effective or saved uid is `uid`, until none is left."""
    for attempt in range(200):
        pids = live_pids_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(min(0.001 * (attempt + 1), 0.02))
    raise SandboxError(f"processes of sandbox uid {uid} survive SIGKILL: {live_pids_of_uid(uid)[:10]}")


def live_pids_of_uid(uid: int) -> list[int]:
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
