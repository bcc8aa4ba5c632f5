"""Linux syscalls the launcher needs that `os` lacks: mount, unshare, prctl.

Standard library only: the launcher runs it in a bare interpreter.
"""

from __future__ import annotations

import ctypes
import os
import re

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

MOUNT_OPTION_FLAGS = {
    "ro": MS_RDONLY,
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
}

_libc = None


def libc_call(name: str, *args) -> None:
    """Call libc's `name`; a non-zero return raises OSError with errno."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if getattr(_libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    libc_call("mount", enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))


def prctl(option: int, value: int) -> None:
    libc_call("prctl", option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def unshare(as_root: bool, notes: list[str]) -> set[str]:
    """Enter new namespaces, as many as the kernel allows; returns their names."""
    wanted = {"net": CLONE_NEWNET, "mount": CLONE_NEWNS, "pid": CLONE_NEWPID, "ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS}
    if not as_root:
        # Unprivileged: a user namespace grants the capabilities the others need.
        uid, gid = os.getuid(), os.getgid()
        try:
            libc_call("unshare", CLONE_NEWUSER)
            for path, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{path}", "w") as f:
                    f.write(text)
        except OSError as e:
            notes.append(f"no user namespace ({e}); running without namespaces")
            return set()
    try:
        libc_call("unshare", sum(wanted.values()))
        return set(wanted)
    except OSError:
        pass
    got = set()
    for name, flag in wanted.items():
        try:
            libc_call("unshare", flag)
            got.add(name)
        except OSError as e:
            notes.append(f"no {name} namespace ({e})")
    return got


def mountinfo() -> list[tuple[str, list[str]]]:
    """(mount point, mount options) of every mount this process sees."""
    rows = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" - ")[0].split()
            mountpoint = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            rows.append((mountpoint, fields[5].split(",")))
    return rows
