"""Run an untrusted Python program in a sandbox and capture what it prints.

Each run gets its own process session, a fresh working directory, resource
limits (wall and CPU time, address space, processes, file size, open files),
a scrubbed environment and, where the kernel allows it, private network,
mount, PID, IPC and UTS namespaces. As root the program runs as a dedicated
unprivileged uid (one per concurrent run, taken from a lock-file pool) so
that the limits bind (root is exempt from RLIMIT_NPROC) and every process of
that uid can be killed afterwards.

Layout of one run:

    grader ──Popen(setsid)──> launcher (launcher.py run as a script, as root)
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

Modules: `supervisor` (the grader's side), `uids` (the uid pool), `launcher`
(the child's side) and `linux` (the syscalls it needs); the last two run in a
bare interpreter and import only the standard library.
"""

from __future__ import annotations

from e1jax.rewards.sandbox.supervisor import run_sandboxed, sandbox_info
from e1jax.rewards.sandbox.types import Isolation, SandboxError, SandboxLimits, SandboxResult

__all__ = ["Isolation", "SandboxError", "SandboxLimits", "SandboxResult", "run_sandboxed", "sandbox_info"]
