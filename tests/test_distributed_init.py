"""Multi-host initialization: environment detection (pure) and a real 2-process CPU run."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from e1jax import distributed
from e1jax.distributed import add_distributed_args, initialize_kwargs
from e1jax.errors import E1Error

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- detection


def test_no_cluster_environment_means_single_process():
    assert initialize_kwargs({}) is None
    assert initialize_kwargs({"HOME": "/root", "SLURM_NTASKS": "1", "OMPI_COMM_WORLD_SIZE": "1"}) is None


def test_explicit_arguments_are_passed_through_and_disable_jax_detection():
    kwargs = initialize_kwargs({}, coordinator="10.0.0.1:1234", num_processes=4, process_id=3)
    assert kwargs == {
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 4,
        "process_id": 3,
        "cluster_detection_method": "deactivate",
    }
    kwargs = initialize_kwargs({}, coordinator="h:1", num_processes=2, process_id=0, local_device_ids=5)
    assert kwargs["local_device_ids"] == [5]


def test_explicit_arguments_beat_the_environment():
    env = {"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "n1",
           "E1JAX_DISTRIBUTED": "0"}
    kwargs = initialize_kwargs(env, coordinator="c:9", num_processes=2, process_id=1)
    assert (kwargs["coordinator_address"], kwargs["num_processes"], kwargs["process_id"]) == ("c:9", 2, 1)


def test_explicit_arguments_are_completed_from_jax_env_vars():
    env = {"JAX_COORDINATOR_ADDRESS": "coord:4000", "JAX_NUM_PROCESSES": "3"}
    kwargs = initialize_kwargs(env, process_id=2)
    assert (kwargs["coordinator_address"], kwargs["num_processes"], kwargs["process_id"]) == ("coord:4000", 3, 2)


def test_explicit_single_process_needs_nothing():
    assert initialize_kwargs({}, num_processes=1) is None
    assert initialize_kwargs({}, coordinator="h:1", num_processes=1, process_id=0) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_processes": 2, "process_id": 0}, "missing --coordinator"),
        ({"coordinator": "h:1", "num_processes": 2}, "missing --process-id"),
        ({"coordinator": "h:1", "process_id": 1}, "missing --num-processes"),
        ({"coordinator": "h:1", "num_processes": 2, "process_id": 2}, "process id 2 is outside 0..1"),
        ({"coordinator": "nohostport", "num_processes": 2, "process_id": 0}, "HOST:PORT"),
        ({"coordinator": "h:1", "num_processes": 0, "process_id": 0}, "at least 1"),
    ],
)
def test_incomplete_or_invalid_explicit_arguments(kwargs, message):
    with pytest.raises(E1Error, match=message):
        initialize_kwargs({}, **kwargs)


def test_generic_env_vars_kubernetes_style():
    env = {"JAX_COORDINATOR_ADDRESS": "job-0.svc:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "1"}
    kwargs = initialize_kwargs(env)
    assert (kwargs["coordinator_address"], kwargs["num_processes"], kwargs["process_id"]) == ("job-0.svc:1234", 4, 1)
    indexed_job = {"JAX_COORDINATOR_ADDRESS": "job-0.svc:1234", "JAX_NUM_PROCESSES": "4", "JOB_COMPLETION_INDEX": "3"}
    assert initialize_kwargs(indexed_job)["process_id"] == 3
    with pytest.raises(E1Error, match="JAX_NUM_PROCESSES"):
        initialize_kwargs({"JAX_COORDINATOR_ADDRESS": "a:1", "JAX_PROCESS_ID": "0"})
    with pytest.raises(E1Error, match="not an integer"):
        initialize_kwargs({"JAX_COORDINATOR_ADDRESS": "a:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"})


def _slurm(**extra: str) -> dict[str, str]:
    env = {
        "SLURM_JOB_ID": "123456",
        "SLURM_NTASKS": "4",
        "SLURM_PROCID": "2",
        "SLURM_LOCALID": "0",
        "SLURM_STEP_NODELIST": "gpu[017-020],cpu3",
        "SLURM_STEP_NUM_NODES": "4",
    }
    env.update(extra)
    return env


def test_slurm_one_process_per_node_sees_all_local_devices():
    kwargs = initialize_kwargs(_slurm())
    # Port as JAX derives it from the job id: 123456 % 4096 + 61440.
    assert kwargs["coordinator_address"] == f"gpu017:{123456 % 4096 + 61440}"
    assert (kwargs["num_processes"], kwargs["process_id"]) == (4, 2)
    assert "local_device_ids" not in kwargs
    assert kwargs["cluster_detection_method"] == "deactivate"


def test_slurm_several_processes_per_node_get_one_device_each():
    kwargs = initialize_kwargs(_slurm(SLURM_NTASKS="16", SLURM_PROCID="9", SLURM_LOCALID="1"))
    assert kwargs["local_device_ids"] == [1]
    kwargs = initialize_kwargs(_slurm(SLURM_NTASKS="16", SLURM_NTASKS_PER_NODE="4", SLURM_LOCALID="3"))
    assert kwargs["local_device_ids"] == [3]


@pytest.mark.parametrize(
    ("node_list", "host"),
    [("node001", "node001"), ("node001,host2", "node001"), ("a[003,007-009],b1", "a003"), ("x[10-12]", "x10")],
)
def test_slurm_first_host_of_node_list(node_list, host):
    kwargs = initialize_kwargs(_slurm(SLURM_STEP_NODELIST=node_list, JAX_COORDINATOR_PORT="7777"))
    assert kwargs["coordinator_address"] == f"{host}:7777"


def test_slurm_without_srun_is_a_clear_error():
    env = _slurm()
    del env["SLURM_PROCID"]
    with pytest.raises(E1Error, match="srun"):
        initialize_kwargs(env)


def test_open_mpi():
    env = {
        "OMPI_COMM_WORLD_SIZE": "2",
        "OMPI_COMM_WORLD_RANK": "1",
        "OMPI_COMM_WORLD_LOCAL_RANK": "0",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "1",
        "OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1,10.148.0.1:34911",
    }
    kwargs = initialize_kwargs(env)
    port = 1531576320 // 4096 % 4096 + 61440
    assert kwargs["coordinator_address"] == f"10.96.0.1:{port}"
    assert (kwargs["num_processes"], kwargs["process_id"]) == (2, 1)
    assert "local_device_ids" not in kwargs
    del env["OMPI_MCA_orte_hnp_uri"]
    with pytest.raises(E1Error, match="JAX_COORDINATOR_ADDRESS"):
        initialize_kwargs(env)
    env["JAX_COORDINATOR_ADDRESS"] = "rank0:5000"
    with pytest.raises(E1Error, match="JAX_NUM_PROCESSES"):
        initialize_kwargs(env)


def test_tpu_lets_jax_autodetect():
    assert initialize_kwargs({}, on_tpu_vm=True) == {}
    assert initialize_kwargs({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}) == {}
    assert initialize_kwargs({"TPU_WORKER_HOSTNAMES": "w0"}) is None
    assert initialize_kwargs({}, on_tpu_vm=True, local_device_ids=[0, 1]) == {"local_device_ids": [0, 1]}


def test_detection_can_be_switched_off():
    for value in ("0", "off", "false", "No"):
        assert initialize_kwargs({**_slurm(), "E1JAX_DISTRIBUTED": value}, on_tpu_vm=True) is None


def test_cli_flags_round_trip():
    parser = add_distributed_args(argparse.ArgumentParser())
    args = parser.parse_args(["--coordinator", "h:1", "--num-processes", "2", "--process-id", "1"])
    assert (args.coordinator, args.num_processes, args.process_id) == ("h:1", 2, 1)
    assert parser.parse_args([]).coordinator is None


def test_single_process_initialize_is_a_no_op(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "TPU_")):
            monkeypatch.delenv(name)
    monkeypatch.setattr(distributed, "_initialized", False)
    import jax

    distributed.initialize()
    distributed.initialize_from_args(argparse.Namespace())
    assert not jax.distributed.is_initialized()
    assert distributed.is_main_process()


# ---------------------------------------------------------------- real processes

_WORKER = textwrap.dedent(
    """
    import argparse, json, sys
    from e1jax import distributed

    mode, coordinator, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "api":
        distributed.initialize(coordinator=coordinator, num_processes=2, process_id=pid)
    elif mode == "cli":
        parser = distributed.add_distributed_args(argparse.ArgumentParser())
        args = parser.parse_args(["--coordinator", coordinator, "--num-processes", "2", "--process-id", str(pid)])
        distributed.initialize_from_args(args)
    else:  # env: JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
        distributed.initialize()
    distributed.initialize()  # idempotent

    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "fsdp"))
    rows = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    local = rows[pid * 8:(pid + 1) * 8]
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P(("data", "fsdp"))), local, rows.shape)
    column_sums = jax.jit(lambda a: jnp.sum(a * a, axis=0), out_shardings=NamedSharding(mesh, P()))(x)
    print(json.dumps({
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "process_index": jax.process_index(),
        "main": distributed.is_main_process(),
        "column_sums": np.asarray(column_sums).tolist(),
    }))
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _clean_env() -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SLURM_", "OMPI_", "JAX_", "TPU_", "XLA_", "E1JAX_"))
    }
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    return env


def _run_two_processes(modes: tuple[str, str], env_for=None) -> list[dict]:
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = []
    for pid, mode in enumerate(modes):
        env = _clean_env()
        if env_for is not None:
            env.update(env_for(coordinator, pid))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _WORKER, mode, coordinator, str(pid)],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return results


def _check_global_run(results: list[dict]) -> None:
    rows = [[3.0 * r + c for c in range(3)] for r in range(16)]
    expected = [sum(row[c] ** 2 for row in rows) for c in range(3)]
    assert [r["process_index"] for r in results] == [0, 1]
    assert [r["main"] for r in results] == [True, False]
    for r in results:
        assert (r["device_count"], r["local_device_count"], r["process_count"]) == (8, 4, 2)
        assert r["column_sums"] == pytest.approx(expected)


def test_two_processes_explicit_arguments_and_cli_flags():
    _check_global_run(_run_two_processes(("api", "cli")))


def test_two_processes_from_environment_variables():
    def env_for(coordinator: str, pid: int) -> dict[str, str]:
        return {"JAX_COORDINATOR_ADDRESS": coordinator, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(pid)}

    _check_global_run(_run_two_processes(("env", "env"), env_for))


def test_initialize_after_a_computation_is_a_clear_error():
    code = textwrap.dedent(
        """
        import jax.numpy as jnp
        from e1jax import distributed
        from e1jax.errors import E1Error
        jnp.ones(2).block_until_ready()
        try:
            distributed.initialize(coordinator="127.0.0.1:1", num_processes=2, process_id=0)
        except E1Error as err:
            print("E1Error:", err)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=_clean_env(), cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "E1Error: multi-process initialization must happen before any JAX computation" in out.stdout
