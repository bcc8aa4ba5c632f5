"""Multi-host runs on one machine: two CPU processes (4 simulated devices each) joined through
`jax.distributed` on 127.0.0.1 run the unchanged `train` and `eval` commands, and their results
equal one process with 8 simulated devices.

- train: the single-process run trains steps 1..3 (checkpoint every step); the two-process run
  resumes from its step-1 checkpoint (orbax restore on every host, onto the other host count)
  and trains steps 2..3 (orbax save from every host). Metrics rows and the final parameters
  match; the sampled rollouts (rewards, lengths) exactly, the update's floats up to reduction
  order (gloo sums across processes in another order than the in-process collectives).
- eval: an elastic budget sweep on mesh data=8 has no cross-device reduction, so results.json
  and samples.jsonl are identical.
Only process 0 prints, logs and shows progress bars.

The runs overlap two at a time (the single-process training, needed by the two-process one,
beside the two-process eval; then the two-process training beside the single-process eval) and
share a persistent compilation cache.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_trainer_support import TESTS_DIR, make_model_dir, tiny_overrides, write_toy_records

from e1jax.rl.metrics import deterministic_view, read_metrics

REPO = TESTS_DIR.parent
STEPS = 3
TIMEOUT_S = 400
EVAL_ARGS = ["--think-budgets", "4,8", "--solution-budget", "4", "--n", "2", "--temperature", "1.0",
             "--batch-size", "4", "--seed", "3", "--limit", "6", "--mesh", "data=8"]
# Keys decided by the sampled tokens: equal exactly. The rest (update statistics) up to float error.
EXACT_PREFIXES = ("reward/", "groups/", "response/", "data/")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(devices: int, cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "OMPI_", "TPU_"))}
    env.update({
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]),
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    })
    if devices == 8:
        env["E1JAX_DISTRIBUTED"] = "0"  # the single-process reference: never join a cluster
    return env


class Job:
    """One or more processes started together (their output goes to files under `logs`)."""

    def __init__(self, name: str, argvs: list[list[str]], env: dict, logs: Path):
        self.name = name
        self.files = [(logs / f"{name}.{i}.out", logs / f"{name}.{i}.err") for i in range(len(argvs))]
        self.started = time.perf_counter()
        self.seconds: float | None = None
        self.procs = [subprocess.Popen([sys.executable, "-m", "e1jax", *map(str, argv)], cwd=REPO, env=env,
                                       stdout=out.open("w"), stderr=err.open("w"))
                      for argv, (out, err) in zip(argvs, self.files)]

    def done(self) -> bool:
        if all(p.poll() is not None for p in self.procs):
            if self.seconds is None:
                self.seconds = round(time.perf_counter() - self.started, 1)
            return True
        return False

    def failure(self) -> str | None:
        for i, (p, (_, err)) in enumerate(zip(self.procs, self.files)):
            if p.poll() not in (None, 0):
                return f"{self.name} process {i} exited {p.returncode}:\n{err.read_text()[-4000:]}"
        return None

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def outputs(self) -> list[tuple[str, str]]:
        return [(out.read_text(), err.read_text()) for out, err in self.files]


def wait_for(targets: list[Job], running: list[Job]) -> None:
    """Poll until the targets are done; kill everything as soon as any job fails (a process
    left alone would wait for its peer's collectives) or the time is up."""
    deadline = time.perf_counter() + TIMEOUT_S
    while True:
        finished = [job.done() for job in running]  # also records the finish times
        failures = [f for f in (job.failure() for job in running) if f]
        if failures or time.perf_counter() > deadline:
            for job in running:
                job.kill()
            pytest.fail(failures[0] if failures else f"timed out after {TIMEOUT_S}s")
        if all(done for job, done in zip(running, finished) if job in targets):
            return
        time.sleep(0.2)


def two_processes(name: str, argv: list[str], env: dict, logs: Path) -> Job:
    port = free_port()
    dist = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    return Job(name, [[*argv, *dist, "--process-id", str(i)] for i in range(2)], env, logs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    pytest.importorskip("e1jax.sampling")
    root = tmp_path_factory.mktemp("multihost")
    logs = root / "logs"
    logs.mkdir()
    model = make_model_dir(root / "model")
    data = write_toy_records(root / "toy.jsonl", n=24)
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({"run": {"log_every": 1}}))
    single_env, multi_env = env_for(8, root / "jax_cache"), env_for(4, root / "jax_cache")

    def train_argv(out: Path, **extra) -> list[str]:
        values = {"run.steps": STEPS, "checkpoint.every": 1, "checkpoint.keep": STEPS, "mesh": "data=2,fsdp=-1",
                  **extra}
        return ["train", "--config", config, *tiny_overrides(model, data, out, **values)]

    def eval_argv(out: Path) -> list[str]:
        return ["eval", "--model", model, "--data", data, *EVAL_ARGS, "--out", out]

    started = time.perf_counter()
    jobs: list[Job] = []
    try:
        jobs.append(Job("single_train", [train_argv(root / "single_train")], single_env, logs))
        jobs.append(two_processes("multi_eval", eval_argv(root / "multi_eval"), multi_env, logs))
        wait_for(jobs[:1], jobs)
        # The two-process run resumes from the single-process run's step-1 checkpoint.
        multi_out = root / "multi_train"
        shutil.copytree(root / "single_train" / "checkpoints" / "1", multi_out / "checkpoints" / "1")
        jobs.append(two_processes("multi_train", train_argv(multi_out, **{"run.progress": True}), multi_env, logs))
        jobs.append(Job("single_eval", [eval_argv(root / "single_eval")], single_env, logs))
        wait_for(jobs, jobs)
    finally:
        for job in jobs:
            job.kill()
    print(f"multihost runs: { {job.name: job.seconds for job in jobs} }, all {time.perf_counter() - started:.1f}s")
    return root, {job.name: job.outputs() for job in jobs}


def restore_params(checkpoint_dir: Path, step: int):
    """A checkpoint's parameters as host arrays (restored in this single process)."""
    import jax

    from e1jax.models.params import abstract_params
    from e1jax.checkpoints import CheckpointStore, model_config_from_meta

    with CheckpointStore(checkpoint_dir, read_only=True) as store:
        config = model_config_from_meta(store.restore_meta(step))
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                                abstract_params(config))
        return jax.tree.map(np.asarray, store.restore(step, params=abstract)["params"])


def test_two_process_training_resumes_and_matches_one_process(runs):
    root, results = runs
    single = [deterministic_view(r) for r in read_metrics(root / "single_train")]
    multi = [deterministic_view(r) for r in read_metrics(root / "multi_train")]
    assert [r["step"] for r in single] == [1, 2, 3]
    assert [r["step"] for r in multi] == [2, 3]  # resumed after step 1
    for want, got in zip(single[1:], multi):
        assert sorted(got) == sorted(want)
        exact = {k: v for k, v in want.items() if k.startswith(EXACT_PREFIXES)}
        assert {k: got[k] for k in exact} == exact
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)

    # Both hosts saved steps 2 and 3 into one checkpoint per step, holding the same parameters.
    steps = sorted(int(p.name) for p in (root / "multi_train" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [1, 2, 3]
    want = restore_params(root / "single_train" / "checkpoints", STEPS)
    got = restore_params(root / "multi_train" / "checkpoints", STEPS)
    initial = restore_params(root / "single_train" / "checkpoints", 1)
    import jax

    for w, g, i in zip(jax.tree.leaves(want), jax.tree.leaves(got), jax.tree.leaves(initial)):
        assert not np.array_equal(w, i)  # the steps changed every parameter
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)

    # The console lines (tqdm.write: stdout), the progress bar and the closing message come from
    # process 0 only. (Both print gloo's "connected" lines, from C++: hence no `out1 == ""`.)
    (out0, err0), (out1, err1) = results["multi_train"]
    assert "step 3 " in out0 and "train:" in err0 and "trained steps 2..3" in err0
    assert "step " not in out1 and "train:" not in err1 and "trained steps" not in err1


def test_two_process_eval_equals_one_process(runs):
    root, results = runs
    single = json.loads((root / "single_eval" / "results.json").read_text())
    multi = json.loads((root / "multi_eval" / "results.json").read_text())
    assert multi == single
    assert single["datasets"]["toy"]["num_problems"] == 6
    samples = (root / "single_eval" / "samples.jsonl").read_text()
    assert len(samples.splitlines()) == 6 * 2 * 2  # problems x n x budgets
    assert (root / "multi_eval" / "samples.jsonl").read_text() == samples
    for name in ("results.md", "accuracy_vs_tokens.png", "state.json"):
        assert (root / "multi_eval" / name).is_file()

    (out0, err0), (out1, err1) = results["multi_eval"]
    (single_out, _), = results["single_eval"]
    assert "| t=4 Tokens |" in single_out and single_out.strip() in out0  # the table, printed once
    assert "|" not in out1
    assert "eval:" in err0 and "wrote" in err0 and "eval:" not in err1 and "wrote" not in err1
