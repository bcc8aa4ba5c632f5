"""The sandbox contains hostile programs while the grading process survives."""

from __future__ import annotations

import ast
import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from e1jax.rewards import sandbox
from e1jax.rewards.sandbox import SandboxLimits, launcher, linux, run_sandboxed, sandbox_info, uids

IS_ROOT = os.geteuid() == 0
FAST = SandboxLimits(time_s=2.0)


@pytest.fixture(scope="module")
def isolation() -> sandbox.Isolation:
    return sandbox_info()


def _require(isolation: sandbox.Isolation, *spaces: str) -> None:
    """Skip when the kernel refused a namespace (the sandbox says why); fail if it lost one silently."""
    missing = [name for name in spaces if not getattr(isolation, name)]
    if missing:
        assert isolation.notes, f"{missing} missing without a reason"
        pytest.skip(f"the kernel refused {missing}: {isolation.notes}")


def _processes_with(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(name))
    return found


def _imported_modules(path: str) -> set[str]:
    imported = set()
    for node in ast.walk(ast.parse(Path(path).read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            prefix = "." * node.level + (node.module + "." if node.module else "")
            imported |= {prefix + alias.name for alias in node.names}
    return imported


@pytest.mark.parametrize("module", [launcher, linux], ids=lambda m: m.__name__)
def test_child_side_imports_only_the_standard_library(module):
    siblings = {"linux", "e1jax.rewards.sandbox.linux"} if module is launcher else set()
    imported = _imported_modules(module.__file__) - siblings
    outside = {name for name in imported if name.split(".")[0] not in sys.stdlib_module_names}
    assert outside == set(), f"{module.__name__} runs in a bare interpreter but imports {sorted(outside)}"


def test_launcher_loads_by_path_in_a_bare_interpreter():
    check = (
        "import runpy, sys\n"
        f"runpy.run_path({launcher.__file__!r})\n"
        "print(sorted({m for m in sys.modules if m.split('.')[0] not in sys.stdlib_module_names} - {'__main__'}))"
    )
    done = subprocess.run([sys.executable, "-I", "-S", "-c", check], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['linux']"


def test_runs_a_program_with_stdin_and_argv():
    result = run_sandboxed(
        "import sys\nprint(sys.stdin.read().upper(), sys.argv[1:])\nprint(open('data.txt').read())",
        "hello",
        FAST,
        files={"data.txt": "side file"},
        argv=["a", "b"],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "HELLO ['a', 'b']\nside file\n"
    assert not result.timed_out and not result.output_limited
    assert result.wall_s < 2.0


def test_runs_unprivileged_in_namespaces_as_root(isolation):
    if not IS_ROOT:
        pytest.skip("uid separation applies when grading as root")
    assert isolation.uid is not None and isolation.uid != 0
    result = run_sandboxed(
        "import os\nprint(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())\n"
        "try:\n    os.setuid(0)\n    print('BECAME ROOT')\nexcept PermissionError:\n    print('denied')",
        "",
        FAST,
    )
    uid, euid, gid, groups, verdict = result.stdout.split(maxsplit=4)
    assert int(uid) == int(euid) == int(gid) == result.isolation.uid != 0
    assert groups == "[]" and verdict.strip() == "denied"


def test_gets_all_namespaces_where_the_kernel_allows(isolation):
    _require(isolation, "netns", "mountns", "pidns")
    assert isolation.notes == ()


def test_environment_is_scrubbed(monkeypatch):
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    monkeypatch.setenv("E1JAX_TEST_SECRET", secret)
    program = f"""
import glob, os
print(sorted(os.environ))
print("ENV-LEAK" if {secret!r} in repr(dict(os.environ)) else "env clean")
for path in glob.glob("/proc/*/environ"):
    try:
        if {secret!r}.encode() in open(path, "rb").read():
            print("PROC-LEAK", path)
    except OSError:
        pass
"""
    result = run_sandboxed(program, "", FAST)
    assert result.returncode == 0, result.stderr
    assert "E1JAX_TEST_SECRET" not in result.stdout
    assert "env clean" in result.stdout and "LEAK" not in result.stdout
    names = ast.literal_eval(result.stdout.splitlines()[0])
    assert {"PATH", "LANG", "HOME"} <= set(names)
    assert not any(name.startswith(("PYTHON", "E1JAX", "XLA", "JAX")) for name in names)


def test_infinite_loop_is_killed_at_the_time_limit():
    start = time.monotonic()
    result = run_sandboxed("while True:\n    pass", "", SandboxLimits(time_s=1.0))
    assert result.timed_out and result.returncode == -signal.SIGKILL and not result.cpu_limited
    assert 1.0 <= result.wall_s < 2.5
    assert time.monotonic() - start < 5.0


def test_cpu_limit_binds_when_wall_time_is_generous():
    result = run_sandboxed("while True:\n    pass", "", SandboxLimits(time_s=10.0, cpu_s=1.0))
    assert not result.timed_out and result.cpu_limited
    assert result.wall_s < 9.0  # well before the wall-clock limit


def test_fork_bomb_is_bounded_and_cleaned_up():
    program = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
    start = time.monotonic()
    result = run_sandboxed(program, "", SandboxLimits(time_s=1.5, max_processes=16))
    assert result.timed_out
    assert time.monotonic() - start < 5.0
    if result.isolation.uid is not None:
        assert uids.live_pids_of_uid(result.isolation.uid) == []


def test_process_limit_binds_as_root():
    program = """
import os, time
children = 0
for _ in range(100):
    try:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        children += 1
    except OSError:
        break
print(children)
"""
    limits = SandboxLimits(time_s=5.0, max_processes=8)
    result = run_sandboxed(program, "", limits)
    assert result.returncode == 0, result.stderr
    assert 1 <= int(result.stdout) < limits.max_processes
    assert result.wall_s < 4.0  # the sleeping children did not keep the run alive
    if result.isolation.uid is not None:
        assert uids.live_pids_of_uid(result.isolation.uid) == []


def test_memory_hog_gets_memory_error():
    result = run_sandboxed("x = bytearray(8 << 30)", "", SandboxLimits(time_s=10.0, memory_mb=256))
    assert result.returncode == 1 and "MemoryError" in result.stderr, result
    # The program reports how much it got before the limit bit (ru_maxrss cannot tell: a child
    # forked from a large test process inherits that process's resident size).
    hog = ("import sys\nkeep = []\ntry:\n    while True:\n        keep.append(bytearray(10**7))\n"
           "except MemoryError:\n    sys.stdout.write(str(len(keep) * 10))\n    raise\n")
    result = run_sandboxed(hog, "", SandboxLimits(time_s=10.0, memory_mb=256))
    assert result.returncode == 1 and "MemoryError" in result.stderr, result
    assert 0 < int(result.stdout) < 256


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_flood_is_capped_and_killed(stream):
    program = f"import sys\nchunk = 'x' * (1 << 20)\nwhile True:\n    sys.{stream}.write(chunk)"
    limits = SandboxLimits(time_s=10.0)
    start = time.monotonic()
    result = run_sandboxed(program, "", limits)
    assert result.output_limited and result.returncode == -signal.SIGKILL
    assert len(result.stdout.encode()) <= limits.max_output_bytes
    assert len(result.stderr.encode()) <= limits.max_stderr_bytes
    assert time.monotonic() - start < 5.0


def test_cannot_write_outside_its_directory(tmp_path, monkeypatch, isolation):
    _require(isolation, "mountns")  # without one, world-writable /tmp stays writable
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the run's host directory goes here
    tag = uuid.uuid4().hex
    targets = [
        f"/tmp/pwned-{tag}",
        f"/var/tmp/pwned-{tag}",
        f"/dev/shm/pwned-{tag}",
        f"/root/pwned-{tag}",
        f"{Path.home()}/pwned-{tag}",
        f"{Path(__file__).parent}/pwned-{tag}",
        f"{tmp_path}/pwned-{tag}",
        f"../pwned-{tag}",
    ]
    program = f"""
import os
for path in {targets!r}:
    try:
        with open(path, "w") as f:
            f.write("x")
    except OSError:
        pass
with open("mine.txt", "w") as f:
    f.write("allowed")
print(open("mine.txt").read(), os.getcwd() == os.environ["HOME"])
"""
    result = run_sandboxed(program, "", FAST)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["allowed", "True"]
    for target in targets:
        assert not Path(target).exists(), target
    assert list(tmp_path.iterdir()) == []  # the run's temporary directory is removed


def test_network_is_unreachable(isolation):
    _require(isolation, "netns")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        program = f"""
import socket
s = socket.socket()
s.settimeout(1.0)
try:
    s.connect(("127.0.0.1", {port}))
    print("CONNECTED")
except OSError as e:
    print("refused", e)
"""
        result = run_sandboxed(program, "", FAST)
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused")


def test_daemonised_child_does_not_survive():
    marker = f"E1JAX-DAEMON-{uuid.uuid4().hex}"
    program = f"""
import os, sys
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", {marker!r}])
    os._exit(0)
print("parent exits")
"""
    result = run_sandboxed(program, "", FAST)
    assert result.stdout == "parent exits\n"
    assert not result.timed_out  # the sleeping grandchild did not keep the run alive
    assert _processes_with(marker) == []


def test_kill_all_only_hits_the_sandbox():
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as bystander:
        try:
            program = (
                "import os, signal, time\n"
                "child = os.fork()\n"
                "if child == 0:\n    time.sleep(30)\n    os._exit(0)\n"
                "os.kill(-1, signal.SIGKILL)\n"
                "print('alive', os.waitpid(child, 0)[1] == signal.SIGKILL)"
            )
            result = run_sandboxed(program, "", FAST)
            assert bystander.poll() is None
        finally:
            bystander.kill()
    assert result.stdout == "alive True\n", result.stderr


def test_parallel_runs_use_separate_uids():
    program = "import os, sys, time\ntime.sleep(0.3)\nprint(sys.stdin.read(), os.getuid())"
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: run_sandboxed(program, str(i), FAST), range(4)))
    assert [r.stdout.split()[0] for r in results] == ["0", "1", "2", "3"]
    uids = {int(r.stdout.split()[1]) for r in results}
    if IS_ROOT:
        assert len(uids) == 4 and 0 not in uids


def test_host_files_are_not_visible(isolation):
    _require(isolation, "mountns")
    private = [str(Path(__file__).resolve()), "/etc/hostname"]
    program = f"""
import os
for path in {private!r}:
    print(path, os.path.exists(path))
"""
    result = run_sandboxed(program, "", FAST)
    seen = dict(line.rsplit(" ", 1) for line in result.stdout.splitlines())
    assert seen[private[0]] == "False"  # the repository (and /work, /home, data sets) is not there
    assert seen[private[1]] == str(os.path.exists("/etc/hostname"))  # system directories are
