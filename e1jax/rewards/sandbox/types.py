"""What a sandboxed run is given and what it reports back."""

from __future__ import annotations

import dataclasses
import math


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
