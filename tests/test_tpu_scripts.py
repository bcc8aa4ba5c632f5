"""tpu_scripts/: help, dry-run command lines, input errors, the worker-side runner, shellcheck."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tpu_scripts"
ENTRY_POINTS = sorted(p.name for p in SCRIPTS.glob("*.sh") if p.name != "common.sh")
GCLOUD_SCRIPTS = [name for name in ENTRY_POINTS if name != "remote_run.sh"]
BASH = shutil.which("bash") or "/bin/bash"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("E1JAX_")}
    env.update(extra or {})
    return env


def run(script: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [BASH, str(SCRIPTS / script), *args],
        env=_env(env),
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def dry(script: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> list[list[str]]:
    """The commands a dry run prints, each parsed back into its argv."""
    result = run(script, "--dry-run", *args, env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def flag(argv: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def remote(argv: list[str]) -> list[str]:
    """The --command of a `gcloud ... ssh` as an argv (it is one shell command line)."""
    assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], argv
    return shlex.split(flag(argv, "--command"))


NAME = {"E1JAX_TPU_NAME": "e1-v4"}

# ---------------------------------------------------------------- every script


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_help(script):
    for option in ("--help", "-h"):
        result = run(script, option)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"Usage: {script}")
        assert "--dry-run" in result.stdout
    if script in GCLOUD_SCRIPTS:
        assert "E1JAX_TPU_NAME" in result.stdout and "E1JAX_ACCELERATOR" in result.stdout


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_unknown_flag_is_rejected(script):
    result = run(script, "--dry-run", "--no-such-flag", env=NAME)
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{script}: error: unknown flag --no-such-flag" in result.stderr


@pytest.mark.parametrize("script", ["create.sh", "setup.sh", "delete.sh", "stop.sh", "status.sh"])
def test_missing_tpu_name(script):
    result = run(script, "--dry-run")
    assert result.returncode == 2
    assert "missing TPU name: pass --tpu-name NAME or set E1JAX_TPU_NAME" in result.stderr
    assert result.stdout == ""


def test_flag_without_value_and_bad_settings():
    assert "--zone needs a value" in run("create.sh", "--dry-run", "--zone", env=NAME).stderr
    bad = run("create.sh", "--dry-run", "--accelerator", "tpu-32", env=NAME)
    assert bad.returncode == 2 and "accelerator type 'tpu-32' is not like v4-32" in bad.stderr
    bad = run("create.sh", "--dry-run", "--tpu-name", "Bad_Name")
    assert bad.returncode == 2 and "TPU name 'Bad_Name'" in bad.stderr
    bad = run("launch.sh", "--dry-run", "--worker", "w1", "--", "train", env=NAME)
    assert bad.returncode == 2 and "worker 'w1'" in bad.stderr
    bad = run("create.sh", env={**NAME, "E1JAX_DRY_RUN": "yes"})
    assert bad.returncode == 2 and "E1JAX_DRY_RUN must be 0 or 1" in bad.stderr


def test_real_run_without_gcloud_is_a_clear_error(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "basename"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    result = run("create.sh", env={**NAME, "PATH": str(bin_dir)})
    assert result.returncode == 2
    assert "gcloud not found: install the Google Cloud CLI" in result.stderr


# ---------------------------------------------------------------- create


def test_create_plain_defaults():
    [cmd] = dry("create.sh", env=NAME)
    assert cmd == [
        "gcloud", "compute", "tpus", "tpu-vm", "create", "e1-v4",
        "--zone=us-central2-b", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("accelerator", "zone", "runtime"),
    [
        ("v4-32", "us-central2-b", "tpu-ubuntu2204-base"),
        ("v5p-64", "us-east5-a", "v2-alpha-tpuv5"),
        ("v5litepod-16", "us-west4-a", "v2-alpha-tpuv5-lite"),
        ("v6e-8", "us-east5-b", "v2-alpha-tpuv6e"),
    ],
)
def test_create_zone_and_runtime_follow_the_accelerator(accelerator, zone, runtime):
    [cmd] = dry("create.sh", env={**NAME, "E1JAX_ACCELERATOR": accelerator})
    assert flag(cmd, "--accelerator-type") == accelerator
    assert flag(cmd, "--zone") == zone
    assert flag(cmd, "--version") == runtime


def test_flags_override_environment_and_equals_form_works():
    env = {"E1JAX_TPU_NAME": "from-env", "E1JAX_ZONE": "europe-west4-a", "E1JAX_PROJECT": "p-env",
           "E1JAX_ACCELERATOR": "v4-8", "E1JAX_RUNTIME": "rt-env"}  # fmt: skip
    [cmd] = dry("create.sh", env=env)
    assert cmd[5] == "from-env"
    assert (flag(cmd, "--zone"), flag(cmd, "--project"), flag(cmd, "--version")) == ("europe-west4-a", "p-env", "rt-env")
    [cmd] = dry("create.sh", "--tpu-name=from-flag", "--zone", "us-east1-d", "--accelerator=v5p-128",
                "--project", "p-flag", "--runtime", "rt-flag", env=env)  # fmt: skip
    assert cmd[5] == "from-flag"
    assert flag(cmd, "--zone") == "us-east1-d"
    assert flag(cmd, "--accelerator-type") == "v5p-128"
    assert (flag(cmd, "--project"), flag(cmd, "--version")) == ("p-flag", "rt-flag")
    # E1JAX_DRY_RUN=1 is the same as --dry-run.
    env_dry = run("create.sh", env={**NAME, "E1JAX_DRY_RUN": "1"})
    assert env_dry.returncode == 0 and env_dry.stdout.startswith("gcloud compute tpus tpu-vm create e1-v4 ")


def test_create_queued_resource():
    cmds = dry("create.sh", "--queued", "--spot", "--accelerator", "v5p-256", "--valid-until", "6h", "--wait",
               "--", "--network=research", "--internal-ips", env=NAME)  # fmt: skip
    create, describe = cmds
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "e1-v4"]
    assert flag(create, "--node-id") == "e1-v4"
    assert flag(create, "--accelerator-type") == "v5p-256"
    assert flag(create, "--runtime-version") == "v2-alpha-tpuv5"
    assert flag(create, "--valid-until-duration") == "6h"
    assert "--spot" in create and create[-2:] == ["--network=research", "--internal-ips"]
    assert not any(a.startswith("--version=") for a in create)
    assert describe[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "e1-v4"]
    assert flag(describe, "--format") == "value(state.state)"
    # E1JAX_QUEUED=1 selects the queued variant as well.
    [cmd] = dry("create.sh", "--reserved", env={**NAME, "E1JAX_QUEUED": "1"})
    assert cmd[3:5] == ["queued-resources", "create"] and "--reserved" in cmd


def test_create_rejects_inconsistent_options():
    for args, message in [
        (["--guaranteed"], "--guaranteed needs --queued"),
        (["--wait"], "--wait needs --queued"),
        (["--valid-until", "1h"], "--valid-until needs --queued"),
        (["--queued", "--spot", "--reserved"], "at most one of --spot, --reserved, --guaranteed"),
        (["stray"], "unexpected argument 'stray'"),
    ]:
        result = run("create.sh", "--dry-run", *args, env=NAME)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    hint = run("create.sh", "--dry-run", "--spot", env=NAME)
    assert hint.returncode == 0 and "--queued is recommended" in hint.stderr


# ---------------------------------------------------------------- setup


def test_setup_copies_this_checkout_to_all_workers(tmp_path):
    pack, scp, cleanup, ssh = dry("setup.sh", env={**NAME, "TMPDIR": str(tmp_path)})
    tarball = str(tmp_path / "e1jax-src-e1-v4.tar.gz")
    assert pack[:2] == ["bash", "-c"]
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, "e1-v4:e1jax-src.tar.gz",
                   "--zone=us-central2-b", "--worker=all"]  # fmt: skip
    assert cleanup == ["rm", "-f", tarball]
    assert flag(ssh, "--worker") == "all"
    command = flag(ssh, "--command")
    assert "tar -xzf e1jax-src.tar.gz -C e1jax" in command
    assert "uv venv -q --python 3.11 e1jax-venv" in command
    assert "uv pip install -q --python e1jax-venv/bin/python -e './e1jax[tpu]'" in command
    # The packing command really packs the checkout (no .git, no ignored files).
    subprocess.run(pack, check=True, timeout=60)
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
    assert {"pyproject.toml", "tpu_scripts/common.sh", "e1jax/distributed.py"} <= names
    assert not any(n.startswith(".git/") or "__pycache__" in n or ".egg-info" in n for n in names)


def test_setup_from_git():
    [ssh] = dry("setup.sh", "--repo", "https://github.com/someone/e1jax.git", "--ref", "v0.1",
                "--python", "3.12", "--worker", "0", env=NAME)  # fmt: skip
    assert flag(ssh, "--worker") == "0"
    command = flag(ssh, "--command")
    assert command.startswith("rm -rf e1jax && git clone -q https://github.com/someone/e1jax.git e1jax && "
                              "git -C e1jax checkout -q v0.1 && ")  # fmt: skip
    assert "--python 3.12" in command
    for args, message in [(["--ref", "main"], "--ref needs --repo"), (["--python", "3.10"], "3.11 or newer")]:
        result = run("setup.sh", "--dry-run", *args, env=NAME)
        assert result.returncode == 2 and message in result.stderr


# ---------------------------------------------------------------- data


def test_data_moves(tmp_path):
    folder = tmp_path / "math"
    folder.mkdir()
    (folder / "aime.json").write_text("[]")
    env = {**NAME, "E1JAX_BUCKET": "gs://e1-bucket/"}
    assert dry("data.sh", "upload", str(folder), env=env) == [
        ["gcloud", "storage", "rsync", "--recursive", str(folder), "gs://e1-bucket/data/math"]
    ]
    assert dry("data.sh", "upload", str(folder / "aime.json"), "eval/aime.json", env=env) == [
        ["gcloud", "storage", "cp", str(folder / "aime.json"), "gs://e1-bucket/eval/aime.json"]
    ]
    assert dry("data.sh", "download", "runs/e1-math", str(tmp_path / "ckpt"), "--bucket", "other-bucket") == [
        ["mkdir", "-p", str(tmp_path / "ckpt")],
        ["gcloud", "storage", "rsync", "--recursive", "gs://other-bucket/runs/e1-math", str(tmp_path / "ckpt")],
    ]
    [ssh] = dry("data.sh", "to-workers", "gs://x-bucket/models/r1-1.5b", "models/r1-1.5b", env=env)
    assert flag(ssh, "--worker") == "all"
    assert remote(ssh) == ["mkdir", "-p", "models/r1-1.5b", "&&", "gcloud", "storage", "rsync", "--recursive",
                           "gs://x-bucket/models/r1-1.5b", "models/r1-1.5b"]  # fmt: skip
    [mb] = dry("data.sh", "make-bucket", "--project", "proj", "--accelerator", "v5p-8", env=env)
    assert mb == ["gcloud", "storage", "buckets", "create", "gs://e1-bucket", "--location=us-east5",
                  "--uniform-bucket-level-access", "--project=proj"]  # fmt: skip
    url = run("data.sh", "url", "runs/e1-math/", env=env)
    assert url.returncode == 0 and url.stdout == "gs://e1-bucket/runs/e1-math\n"


def test_data_errors(tmp_path):
    cases = [
        ((["upload", str(tmp_path)], {}), "missing bucket: pass --bucket gs://NAME or set E1JAX_BUCKET"),
        ((["--bucket", "e1-bucket"], {}), "missing action"),
        ((["--bucket", "e1-bucket", "push", "x"], {}), "unknown action 'push'"),
        ((["--bucket", "e1-bucket", "upload", str(tmp_path / "absent")], {}), "no such file or folder"),
        ((["--bucket", "e1-bucket", "download", "x"], {}), "download takes PATH LOCAL"),
        ((["--bucket", "e1-bucket", "to-workers", "a", "b"], {}), "missing TPU name"),
        ((["--bucket", "Bad Bucket", "url"], {}), "not a valid gs:// bucket name"),
    ]
    for (args, env), message in cases:
        result = run("data.sh", "--dry-run", *args, env=env)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


# ---------------------------------------------------------------- launch, logs, status, stop, delete

TRAIN = ["train", "--config", "configs/e1_math_1.5b_1k_1k.yaml", "run.out=gs://e1-bucket/runs/e1 math",
         "note=it's \"quoted\" $HOME"]  # fmt: skip


def _e1jax_args(remote_argv: list[str]) -> tuple[list[str], list[str]]:
    assert remote_argv[:2] == ["bash", "e1jax/tpu_scripts/remote_run.sh"]
    split = remote_argv.index("--")
    return remote_argv[2:split], remote_argv[split + 1:]


def test_launch_foreground_on_all_workers(tmp_path):
    logs = tmp_path / "logs" / "r1"
    env = {**NAME, "E1JAX_BUCKET": "e1-bucket", "E1JAX_LOG_DIR": str(tmp_path / "logs")}
    mkdir, ssh, split = dry("launch.sh", "--run-name", "r1", "--env", "HF_HOME=/tmp/hf cache", "--", *TRAIN, env=env)
    assert mkdir == ["mkdir", "-p", str(logs)]
    assert ssh[-5:] == ["2>&1", "|", "tee", "-a", str(logs / "launch.log")]
    ssh = ssh[:-5]
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "e1-v4"]
    assert flag(ssh, "--worker") == "all"
    assert flag(ssh, "--zone") == "us-central2-b"
    assert split[:3] == ["awk", "-v", f"dir={logs}"] and split[-1] == str(logs / "launch.log")
    options, e1jax_args = _e1jax_args(remote(ssh))
    assert e1jax_args == TRAIN
    assert options == ["--log-dir", "e1jax-runs", "--run-name", "r1", "--repo-dir", "e1jax", "--venv", "e1jax-venv",
                       "--sync-every", "300", "--gcs-logs", "gs://e1-bucket/logs", "--env", "HF_HOME=/tmp/hf cache"]  # fmt: skip


def test_launch_detached_eval_on_a_v5p():
    eval_args = ["eval", "--model", "gs://e1-bucket/ckpt", "--data", "aime,amc,math,minerva,olympiad_bench",
                 "--think-budgets", "512,1024,2048,3072", "--solution-budget", "1024", "--n", "16"]  # fmt: skip
    result = run("launch.sh", "--dry-run", "--detach", "--accelerator", "v5p-64", "--", *eval_args, env=NAME)
    assert result.returncode == 0, result.stderr
    [ssh] = [shlex.split(line) for line in result.stdout.splitlines()]
    assert flag(ssh, "--zone") == "us-east5-a"
    assert flag(ssh, "--worker") == "all"
    assert "|" not in ssh
    options, e1jax_args = _e1jax_args(remote(ssh))
    assert e1jax_args == eval_args
    assert "--detach" in options and "--gcs-logs" not in options
    run_name = options[options.index("--run-name") + 1]
    assert run_name.startswith("e1jax-") and f"logs.sh --run-name {run_name}" in result.stderr


def test_launch_input_errors():
    for args, message in [
        ([], "missing e1jax command"),
        (["--"], "missing e1jax command"),
        (["--run-name", "a b", "--", "train"], "run name 'a b'"),
        (["--env", "1X=2", "--", "train"], "--env needs NAME=VALUE"),
    ]:
        result = run("launch.sh", "--dry-run", *args, env=NAME)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    result = run("launch.sh", "--dry-run", "--", "train")
    assert result.returncode == 2 and "missing TPU name" in result.stderr


def test_launch_e1jax_command_may_follow_the_flags_without_separator():
    # Everything from the first word on belongs to e1jax, even flags launch.sh also knows.
    [ssh] = dry("launch.sh", "--detach", "--run-name", "r", "train", "--config", "c.yaml", "--dry-run", "--zone", "z",
                env=NAME)  # fmt: skip
    assert flag(ssh, "--zone") == "us-central2-b"
    assert _e1jax_args(remote(ssh))[1] == ["train", "--config", "c.yaml", "--dry-run", "--zone", "z"]


def test_logs_status_stop_delete(tmp_path):
    env = {**NAME, "E1JAX_LOG_DIR": str(tmp_path)}
    mkdir, rsync = dry("logs.sh", "--run-name", "r1", "--bucket", "e1-bucket", env=env)
    assert rsync == ["gcloud", "storage", "rsync", "--recursive", "gs://e1-bucket/logs/r1", str(tmp_path / "r1")]
    mkdir, ssh, split = dry("logs.sh", "--run-name", "r1", env=env)
    assert ssh[-2:] == [">", str(tmp_path / "r1" / "fetched.log")]
    assert remote(ssh[:-2]) == ["bash", "e1jax/tpu_scripts/remote_run.sh", "--log-dir", "e1jax-runs", "--print-log",
                                "--run-name", "r1"]  # fmt: skip
    assert flag(ssh[:-2], "--worker") == "all"
    assert split[0] == "awk" and split[-1] == str(tmp_path / "r1" / "fetched.log")
    [ssh] = dry("logs.sh", "--run-name", "r1", "--tail", "30", env=env)
    assert remote(ssh)[-5:] == ["--print-log", "--run-name", "r1", "--tail", "30"]
    assert "missing run name" in run("logs.sh", "--dry-run", env=env).stderr

    [describe] = dry("status.sh", env=NAME)
    assert describe[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "e1-v4"]
    [describe, runs] = dry("status.sh", "--queued", "--runs", "--run-name", "r1", env=NAME)
    assert describe[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "e1-v4"]
    assert remote(runs) == ["bash", "e1jax/tpu_scripts/remote_run.sh", "--log-dir", "e1jax-runs", "--status",
                            "--run-name", "r1"]  # fmt: skip
    assert [c[3:5] for c in dry("status.sh", "--list", "--queued")] == [["tpu-vm", "list"], ["queued-resources", "list"]]

    [stop] = dry("stop.sh", env=NAME)
    assert flag(stop, "--worker") == "all"
    assert remote(stop) == ["bash", "e1jax/tpu_scripts/remote_run.sh", "--log-dir", "e1jax-runs", "--stop"]
    stop, vm = dry("stop.sh", "--run-name", "r1", "--vm", env=NAME)
    assert remote(stop)[-2:] == ["--run-name", "r1"]
    assert vm == ["gcloud", "compute", "tpus", "tpu-vm", "stop", "e1-v4", "--zone=us-central2-b"]

    assert dry("delete.sh", "--yes", env=NAME) == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "e1-v4", "--zone=us-central2-b", "--quiet"]
    ]
    assert dry("delete.sh", "--queued", "--async", "--project", "p", env=NAME) == [
        ["gcloud", "compute", "tpus", "queued-resources", "delete", "e1-v4", "--zone=us-central2-b", "--project=p",
         "--force", "--async"]
    ]  # fmt: skip


# ---------------------------------------------------------------- the worker side, run for real

FAKE_PYTHON = """#!/usr/bin/env bash
echo "fake python $* GREETING=${GREETING:-}"
if [[ $3 == sleep ]]; then exec sleep "$4"; fi
if [[ $3 == fail ]]; then echo "failing" >&2; exit 3; fi
"""


@pytest.fixture
def worker_home(tmp_path):
    home = tmp_path / "home"
    (home / "e1jax-venv" / "bin").mkdir(parents=True)
    (home / "e1jax").mkdir()
    python = home / "e1jax-venv" / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return home


def _worker(home: Path, *args: str, worker: str = "2"):
    return run("remote_run.sh", *args, env={"HOME": str(home), "E1JAX_WORKER_ID": worker}, cwd=home)


def test_remote_run_foreground_logs_and_exit_status(worker_home):
    ok = _worker(worker_home, "--run-name", "r1", "--env", "GREETING=hi there", "--env", "E1JAX_DATA_DIR=~/data",
                 "--", "train", "--config", "a b.yaml")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "fake python -m e1jax train --config a b.yaml GREETING=hi there" in ok.stdout
    run_dir = worker_home / "e1jax-runs" / "r1"
    log = (run_dir / "worker-2.log").read_text()
    assert "fake python -m e1jax train --config a b.yaml GREETING=hi there" in log
    assert log.rstrip().endswith("== exit status 0")
    assert f"E1JAX_DATA_DIR={worker_home}/data " in log  # ~/ is the worker's home
    assert (run_dir / "worker-2.exit").read_text().strip() == "0"
    assert not (run_dir / "worker-2.pid").exists()

    failed = _worker(worker_home, "--run-name", "r2", "--", "fail", worker="5")
    assert failed.returncode == 3
    assert "failing" in (worker_home / "e1jax-runs" / "r2" / "worker-5.log").read_text()
    assert (worker_home / "e1jax-runs" / "r2" / "worker-5.exit").read_text().strip() == "3"

    status = _worker(worker_home, "--status")
    assert status.returncode == 0
    assert "r1 worker 2 on" in status.stdout and ": exited 0 | fake python" in status.stdout
    assert "r2 worker 5 on" in status.stdout and ": exited 3 | failing" in status.stdout

    missing = _worker(worker_home, "--run-name", "r3")
    assert missing.returncode == 2 and "missing e1jax command" in missing.stderr
    [mkdir, cd, command] = [shlex.split(line) for line in _worker(worker_home, "--dry-run", "--run-name", "r4", "--",
                                                                   "eval", "--n", "16").stdout.splitlines()]  # fmt: skip
    assert mkdir == ["mkdir", "-p", str(worker_home / "e1jax-runs" / "r4")]
    assert cd == ["cd", str(worker_home / "e1jax")]
    assert command == ["env", "PYTHONUNBUFFERED=1", str(worker_home / "e1jax-venv/bin/python"), "-m", "e1jax",
                       "eval", "--n", "16"]  # fmt: skip


def test_remote_run_detach_status_and_stop(worker_home):
    started = _worker(worker_home, "--run-name", "bg", "--detach", "--", "sleep", "60")
    assert started.returncode == 0, started.stderr
    assert "started run bg on worker 2" in started.stdout
    run_dir = worker_home / "e1jax-runs" / "bg"
    deadline = time.monotonic() + 20
    while not (run_dir / "worker-2.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int((run_dir / "worker-2.pid").read_text())
    try:
        status = _worker(worker_home, "--status", "--run-name", "bg")
        assert "bg worker 2 on" in status.stdout and f"running (pid {pid})" in status.stdout
        stopped = _worker(worker_home, "--stop", "--run-name", "bg")
        assert stopped.returncode == 0 and "stopped 1 e1jax process(es)" in stopped.stdout
        deadline = time.monotonic() + 20
        while not (run_dir / "worker-2.exit").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (run_dir / "worker-2.exit").read_text().strip() == "143"  # SIGTERM
        assert "exited 143" in _worker(worker_home, "--status").stdout
        assert "no running e1jax runs" in _worker(worker_home, "--stop").stdout
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


FAKE_GCLOUD = """#!/usr/bin/env bash
# Stands in for `gcloud compute tpus tpu-vm ssh NAME ... --worker=all --command=CMD`:
# runs CMD in each fake worker's home ($FAKE_TPU/w0, w1, ...) at once, like gcloud.
set -u
[[ "$1 $2 $3 $4" == "compute tpus tpu-vm ssh" ]] || { echo "fake gcloud: unsupported: $*" >&2; exit 64; }
for arg in "$@"; do
  case $arg in --command=*) command=${arg#--command=} ;; esac
done
echo "Using ssh batch size of 2." >&2
pids=()
for home in "$FAKE_TPU"/w*; do
  worker=${home##*/w}
  (cd "$home" && HOME=$home E1JAX_WORKER_ID=$worker bash -c "$command") &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""


@pytest.fixture
def fake_tpu(tmp_path, worker_home):
    """Two fake workers (homes with the e1jax checkout and a fake venv) and a fake gcloud on PATH."""
    root = tmp_path / "tpu"
    for worker in range(2):
        home = root / f"w{worker}"
        (home / "e1jax").mkdir(parents=True)
        (home / "e1jax" / "tpu_scripts").symlink_to(SCRIPTS)
        (home / "e1jax-venv").symlink_to(worker_home / "e1jax-venv")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    return {"FAKE_TPU": str(root), "PATH": f"{bin_dir}:{os.environ['PATH']}", "E1JAX_LOG_DIR": str(tmp_path / "logs"),
            **NAME}  # fmt: skip


def test_launch_and_fetch_logs_end_to_end_with_a_fake_gcloud(tmp_path, fake_tpu):
    result = run("launch.sh", "--run-name", "e2e", "--env", "GREETING=hello", "--", "train", "--config", "c.yaml",
                 env=fake_tpu)  # fmt: skip
    assert result.returncode == 0, result.stderr
    logs = tmp_path / "logs" / "e2e"
    for worker in ("0", "1"):
        assert f"[w{worker}] fake python -m e1jax train --config c.yaml GREETING=hello" in result.stdout
        text = (logs / f"worker-{worker}.log").read_text()
        assert text == "fake python -m e1jax train --config c.yaml GREETING=hello\n"
    assert "Using ssh batch size" in (logs / "launch.log").read_text()
    for worker in ("0", "1"):  # each worker kept its own log and exit status
        run_dir = tmp_path / "tpu" / f"w{worker}" / "e1jax-runs" / "e2e"
        assert (run_dir / f"worker-{worker}.exit").read_text() == "0\n"

    # A failing worker makes the launch fail.
    failed = run("launch.sh", "--run-name", "bad", "--", "fail", env=fake_tpu)
    assert failed.returncode == 3
    assert (tmp_path / "logs" / "bad" / "worker-1.log").read_text() == "fake python -m e1jax fail GREETING=\nfailing\n"

    # Fetch the logs again from the workers, and tail them.
    shutil.rmtree(logs)
    fetched = run("logs.sh", "--run-name", "e2e", "--from", "workers", env=fake_tpu)
    assert fetched.returncode == 0, fetched.stderr
    for worker in ("0", "1"):
        text = (logs / f"worker-{worker}.log").read_text()
        assert text.startswith("== e1jax run e2e, worker " + worker)
        assert "fake python -m e1jax train --config c.yaml GREETING=hello\n" in text
        assert text.endswith("== exit status 0\n")
    tail = run("logs.sh", "--run-name", "e2e", "--tail", "1", env=fake_tpu)
    assert sorted(tail.stdout.splitlines()) == ["[w0] == exit status 0", "[w1] == exit status 0"]
    status = run("status.sh", "--runs", "--list", env=fake_tpu)  # --list is not emulated: fails cleanly
    assert status.returncode == 64


# ---------------------------------------------------------------- shellcheck


def test_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    scripts = sorted(str(p) for p in SCRIPTS.glob("*.sh"))
    result = subprocess.run([shellcheck, "-x", *scripts], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_are_executable_and_strict():
    for name in ENTRY_POINTS:
        path = SCRIPTS / name
        assert os.access(path, os.X_OK), name
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env bash\n")
        assert "set -euo pipefail" in text
