"""Multi-host start-up: one `jax.distributed.initialize` call, or none.

`initialize()` must run before any JAX computation. It resolves the cluster
from explicit arguments or the environment (see `initialize_kwargs`) and
does nothing for a plain single-process run, so every command can call it
unconditionally.

Detection order (first match wins):
  1. Explicit arguments (API or --coordinator/--num-processes/--process-id);
     missing ones are read from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
     JAX_PROCESS_ID.
  2. E1JAX_DISTRIBUTED=0 (or off/false/no): no auto-detection, single process.
  3. Generic / Kubernetes: JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES and
     JAX_PROCESS_ID (or an Indexed Job's JOB_COMPLETION_INDEX).
  4. SLURM: SLURM_NTASKS > 1 (inside `srun`).
  5. Open MPI: OMPI_COMM_WORLD_SIZE > 1 (inside `mpirun`).
  6. Cloud TPU VM (TPU chips and libtpu present) or a GKE TPU slice
     (TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES naming several hosts):
     `jax.distributed.initialize()` with no arguments; JAX reads the
     topology from the TPU metadata.
Anything else is a single-process run: nothing to initialize.

For SLURM and Open MPI we resolve the coordinator ourselves and turn JAX's
own detection off, because JAX would otherwise restrict each process to one
GPU (its local rank) even with one process per node. We keep one GPU per
process only when several processes share a node.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from e1jax.errors import E1Error

_DISABLED_VALUES = {"0", "off", "false", "no"}
_initialized = False


def _int_env(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise E1Error(f"{name}={value!r} is not an integer") from None


def _check_address(address: str, source: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise E1Error(f"{source} must be HOST:PORT, got {address!r}")
    return address


def _coordinator_port(environ: Mapping[str, str], job_id: int) -> str:
    # Same rule as JAX: a port in the top 4096 of the ephemeral range, fixed per job.
    return environ.get("JAX_COORDINATOR_PORT") or str(job_id % 4096 + 65535 - 4096 + 1)


def _first_slurm_host(node_list: str) -> str:
    """First host of a SLURM node list: 'a01', 'a[01-04],b7', 'a[03,07-09]'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", node_list.strip())
    if match is None:
        raise E1Error(f"cannot read the first host of SLURM node list {node_list!r}")
    prefix, ranges = match.groups()
    if ranges is None:
        return prefix
    return prefix + re.split(r"[,-]", ranges, maxsplit=1)[0]


def _orte_coordinator(uri: str, environ: Mapping[str, str]) -> str:
    # e.g. 1531576320.0;tcp://10.96.0.1,10.148.0.1:34911 (Open MPI 4's ORTE launcher)
    match = re.search(r"tcp://(.+?)[,:]|tcp6://\[(.+?)[,\]]", uri)
    if match is None:
        raise E1Error(f"cannot read the launcher address from OMPI_MCA_orte_hnp_uri={uri!r}")
    host = next(group for group in match.groups() if group is not None)
    job_id = int(uri.split(".", 1)[0]) // 4096
    return f"{host}:{_coordinator_port(environ, job_id)}"


def _one_device_per_process(local_rank: int | None, local_size: int | None) -> list[int] | None:
    if local_rank is None or local_size is None or local_size <= 1:
        return None
    return [local_rank]


def _finish(
    coordinator: str,
    num_processes: int,
    process_id: int,
    local_device_ids: Sequence[int] | int | None,
) -> dict[str, Any] | None:
    if num_processes < 1:
        raise E1Error(f"number of processes must be at least 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise E1Error(f"process id {process_id} is outside 0..{num_processes - 1}")
    if num_processes == 1:
        return None
    kwargs: dict[str, Any] = {
        "coordinator_address": coordinator,
        "num_processes": num_processes,
        "process_id": process_id,
        # Our detection is authoritative: stop JAX from re-detecting a cluster.
        "cluster_detection_method": "deactivate",
    }
    if local_device_ids is not None:
        ids = [local_device_ids] if isinstance(local_device_ids, int) else list(local_device_ids)
        kwargs["local_device_ids"] = ids
    return kwargs


def initialize_kwargs(
    environ: Mapping[str, str],
    *,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | int | None = None,
    on_tpu_vm: bool = False,
) -> dict[str, Any] | None:
    """Keyword arguments for `jax.distributed.initialize`, or None for a single process.

    Pure: reads only `environ` and `on_tpu_vm` (whether this host has TPU
    chips and libtpu). An empty dict means "let JAX auto-detect" (TPU).
    """
    if coordinator is not None or num_processes is not None or process_id is not None:
        coordinator = coordinator or environ.get("JAX_COORDINATOR_ADDRESS") or None
        if num_processes is None:
            num_processes = _int_env(environ, "JAX_NUM_PROCESSES")
        if process_id is None:
            process_id = _int_env(environ, "JAX_PROCESS_ID")
        missing = [
            flag
            for flag, value in (
                ("--coordinator", coordinator),
                ("--num-processes", num_processes),
                ("--process-id", process_id),
            )
            if value is None
        ]
        if num_processes == 1 and process_id in (None, 0):
            return None
        if missing:
            raise E1Error(
                "multi-process run needs --coordinator HOST:PORT, --num-processes N and "
                f"--process-id I; missing {', '.join(missing)}"
            )
        assert coordinator is not None and num_processes is not None and process_id is not None
        return _finish(_check_address(coordinator, "--coordinator"), num_processes, process_id, local_device_ids)

    if environ.get("E1JAX_DISTRIBUTED", "").strip().lower() in _DISABLED_VALUES:
        return None

    if environ.get("JAX_COORDINATOR_ADDRESS"):
        coordinator = _check_address(environ["JAX_COORDINATOR_ADDRESS"], "JAX_COORDINATOR_ADDRESS")
        num_processes = _int_env(environ, "JAX_NUM_PROCESSES")
        process_id = _int_env(environ, "JAX_PROCESS_ID")
        if process_id is None:
            process_id = _int_env(environ, "JOB_COMPLETION_INDEX")
        if num_processes is None or process_id is None:
            raise E1Error(
                "JAX_COORDINATOR_ADDRESS is set: also set JAX_NUM_PROCESSES and JAX_PROCESS_ID "
                "(or run as an Indexed Job, which sets JOB_COMPLETION_INDEX)"
            )
        return _finish(coordinator, num_processes, process_id, local_device_ids)

    slurm_tasks = _int_env(environ, "SLURM_NTASKS")
    if slurm_tasks is not None and slurm_tasks > 1:
        process_id = _int_env(environ, "SLURM_PROCID")
        node_list = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
        job_id = _int_env(environ, "SLURM_JOB_ID")
        if process_id is None or not node_list or job_id is None:
            raise E1Error(
                f"SLURM_NTASKS={slurm_tasks} but SLURM_PROCID, SLURM_JOB_ID or the node list is "
                "missing: start each process with srun"
            )
        coordinator = f"{_first_slurm_host(node_list)}:{_coordinator_port(environ, job_id)}"
        if local_device_ids is None:
            tasks_per_node = _int_env(environ, "SLURM_NTASKS_PER_NODE")
            nodes = _int_env(environ, "SLURM_STEP_NUM_NODES") or _int_env(environ, "SLURM_NNODES")
            if tasks_per_node is None and nodes:
                tasks_per_node = -(-slurm_tasks // nodes)
            local_device_ids = _one_device_per_process(_int_env(environ, "SLURM_LOCALID"), tasks_per_node)
        return _finish(coordinator, slurm_tasks, process_id, local_device_ids)

    ompi_size = _int_env(environ, "OMPI_COMM_WORLD_SIZE")
    if ompi_size is not None and ompi_size > 1:
        process_id = _int_env(environ, "OMPI_COMM_WORLD_RANK")
        uri = environ.get("OMPI_MCA_orte_hnp_uri")
        if process_id is None:
            raise E1Error("OMPI_COMM_WORLD_SIZE is set but OMPI_COMM_WORLD_RANK is missing")
        if not uri:
            raise E1Error(
                "Open MPI without OMPI_MCA_orte_hnp_uri (Open MPI 5 or later): set "
                "JAX_COORDINATOR_ADDRESS=HOST:PORT (a port on rank 0's host) for every rank"
            )
        if local_device_ids is None:
            local_device_ids = _one_device_per_process(
                _int_env(environ, "OMPI_COMM_WORLD_LOCAL_RANK"), _int_env(environ, "OMPI_COMM_WORLD_LOCAL_SIZE")
            )
        return _finish(_orte_coordinator(uri, environ), ompi_size, process_id, local_device_ids)

    gke_hosts = environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES") or ""
    if on_tpu_vm or len([host for host in gke_hosts.split(",") if host.strip()]) > 1:
        return {} if local_device_ids is None else {"local_device_ids": local_device_ids}

    return None


def _on_cloud_tpu_vm() -> bool:
    # Set by `import jax` from the PCI bus and libtpu; no network access.
    try:
        from jax._src import cloud_tpu_init
    except ImportError:
        return False
    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | int | None = None,
) -> None:
    """Start JAX's multi-process runtime if this is a multi-process run; idempotent."""
    global _initialized
    import jax

    if _initialized or jax.distributed.is_initialized():
        _initialized = True
        return
    kwargs = initialize_kwargs(
        os.environ,
        coordinator=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
        on_tpu_vm=_on_cloud_tpu_vm(),
    )
    if kwargs is not None:
        try:
            jax.distributed.initialize(**kwargs)
        except RuntimeError as err:
            if "must be called before" in str(err):
                raise E1Error(
                    "multi-process initialization must happen before any JAX computation in this process"
                ) from err
            raise
    _initialized = True


def add_distributed_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add --coordinator, --num-processes and --process-id (all optional: auto-detected)."""
    group = parser.add_argument_group(
        "multi-host",
        "Usually auto-detected (TPU pod, SLURM, Open MPI, JAX_COORDINATOR_ADDRESS/"
        "JAX_NUM_PROCESSES/JAX_PROCESS_ID); give all three to set them by hand.",
    )
    group.add_argument("--coordinator", metavar="HOST:PORT", default=None, help="address of process 0's coordinator")
    group.add_argument("--num-processes", type=int, metavar="N", default=None, help="total number of processes")
    group.add_argument("--process-id", type=int, metavar="I", default=None, help="this process's index, 0..N-1")
    return parser


def initialize_from_args(args: argparse.Namespace) -> None:
    """`initialize` with the values of `add_distributed_args`' flags (absent flags count as unset)."""
    initialize(
        coordinator=getattr(args, "coordinator", None),
        num_processes=getattr(args, "num_processes", None),
        process_id=getattr(args, "process_id", None),
    )


def is_main_process() -> bool:
    """True on process 0 (the one that logs, writes files and prints tables)."""
    import jax

    return jax.process_index() == 0
