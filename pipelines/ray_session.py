"""Where the jobs' Ray comes from: a cluster given by address, or an embedded local instance.

``ray job submit`` runs the entry point with ``RAY_ADDRESS`` set, and ``ray.init()`` joins that
cluster. Without an address a local instance is started with more logical CPUs than cores, so
fractional-CPU training workers and concurrent folds fit on a small machine.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from typing import Literal

import ray

from fmgnn.config import OptionalLocalPath

log = logging.getLogger(__name__)


@dataclass
class RayConfig:
    """Args:
        address: Cluster address (``auto``, ``ray://host:10001``...); None: the job's cluster when
            submitted with ``ray job submit``, else an embedded local instance.
        num_cpus: Logical CPUs of an embedded instance; None: 4 per core, at least 8.
        num_workers: Ray Train workers per training run (0: the training loop, and the logistic baseline, run in
            the job's own process, without Ray; checkpoints under the storage path all the same).
        use_gpu: Give each training worker a GPU.
        cpus_per_worker: CPUs each training worker reserves.
        max_failures: Restarts a training run allows after a worker or node dies.
        max_concurrent_runs: Training runs (folds) in flight at once.
        train_poll_interval_s: How often Ray Train's controller collects reports. Ray's default
            (2 s) caps a run at one epoch per 2 s because each report waits to be collected;
            the small epochs of brain-network cohorts take milliseconds.
        train_log_level: Level of Ray Train's own logs (it logs every report at INFO).
        precision: ``fp32``, or ``bf16``: training forward passes under bf16 autocast (validation, test and
            exports stay fp32). It changes results, so unlike the rest of ``ray`` it is not free to change
            when a run folder is rerun.
        temp_dir: Session directory of an embedded instance; None: one per process
            (``/tmp/fmgnn-ray-<pid>``): two jobs started at once on one machine each run their own
            instance, and each instance's processes are pointed at their own dashboard.
        node_resource: A custom resource that the nodes running the fmgnn image advertise (``fmgnn_node``
            in cluster/); every Ray Train worker, sweep trial, teacher and Ray Data task of the job asks
            for a sliver of it, so that none lands on a node of another image (the vLLM nodes). None:
            anywhere (one machine, or one image on every node).
    """

    address: str | None = None
    num_cpus: int | None = None
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 2
    max_concurrent_runs: int = 2
    train_poll_interval_s: float = 0.1
    train_log_level: str = "WARNING"
    precision: Literal["fp32", "bf16"] = "fp32"
    temp_dir: OptionalLocalPath = None
    node_resource: str | None = None


NODE_RESOURCE_SHARE = 0.001  # what one process asks of a node resource: a node advertises thousands


def node_resources(name: str | None) -> dict[str, float]:
    """The Ray resources that place a process on the nodes that advertise ``name``; none without one."""
    return {name: NODE_RESOURCE_SHARE} if name else {}


def job_env_vars(config: RayConfig) -> dict[str, str]:
    """Environment that Ray's own processes of this job read (also in cluster/runtime_env.yaml)."""
    return {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(config.train_poll_interval_s)}


def start_ray(config: RayConfig) -> None:
    """Connect to or start Ray once per process."""
    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS")  # set by `ray job submit`
    if address:
        # A submitted job already carries its runtime env (cluster/runtime_env.yaml).
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address)
        return
    num_cpus = config.num_cpus or max(8, 4 * (os.cpu_count() or 1))
    log.info("starting an embedded Ray instance with %d logical CPUs", num_cpus)
    # The dashboard stays on: Tune trials that run trainers need its state API (ENVIRONMENT.md).
    temp_dir = config.temp_dir or os.path.join(tempfile.gettempdir(), f"fmgnn-ray-{os.getpid()}")
    # Ray's own actors (Ray Train's placement-group cleaner) find "their" cluster through the state API,
    # which, given no address, looks for any Ray on the machine and fails when another job runs one:
    # every process of this instance is told its own dashboard's address.
    port = free_port()
    env_vars = {**job_env_vars(config), "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}
    ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
             _temp_dir=temp_dir, configure_logging=False, runtime_env={"env_vars": env_vars})
    global EMBEDDED_DASHBOARD
    EMBEDDED_DASHBOARD = env_vars["RAY_API_SERVER_ADDRESS"]


EMBEDDED_DASHBOARD: str | None = None  # this process's embedded instance: the address its state API calls need


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
