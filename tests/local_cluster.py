"""A real multi-node Ray cluster on one machine: a head and worker nodes started with ``ray start``.

Every node gets its own ports (free ones, on loopback) so that it coexists with the test suite's own
embedded Ray instance; the cluster gets its own temp dir. A worker node is killed the way a machine
dies: SIGKILL to its raylet and everything under it, with no goodbye to the head.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

LOOPBACK = "127.0.0.1"


_HANDED_OUT: set[int] = set()  # every port given to a node: a node's worker ports are bound only when its workers start


def free_ports(n: int) -> list[int]:
    """``n`` free loopback ports, none handed out before in this process (the OS may offer a port again once
    its probing socket is closed: two components given one port made ``ray start`` fail in CI)."""
    sockets, ports = [], []
    while len(ports) < n:
        s = socket.socket()
        s.bind((LOOPBACK, 0))
        sockets.append(s)  # held open until all are chosen, so the OS offers each once
        port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            ports.append(port)
            _HANDED_OUT.add(port)
    for s in sockets:
        s.close()
    return ports


def node_port_flags() -> tuple[list[str], int]:
    """``ray start`` flags that give a node ports of its own; returns them and the node manager port."""
    node_manager, object_manager, agent_http, agent_grpc, metrics, runtime_env, *workers = free_ports(6 + 16)
    flags = [f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
             f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
             f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
             # A worker-port list, not a range: ranges of two nodes could overlap.
             f"--worker-port-list={','.join(map(str, workers))}"]
    return flags, node_manager


def ensure_auth_token() -> None:
    """``ray get-auth-token --generate``: token authentication needs a token, and unlike ``ray.init``,
    ``ray start`` does not make one (a clean machine has none)."""
    from ray._private.authentication.authentication_token_setup import generate_and_save_token
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):
        generate_and_save_token()
        loader.reset_cache()


@dataclass
class Node:
    node_manager_port: int
    num_cpus: int

    def raylet(self) -> psutil.Process | None:
        for proc in psutil.process_iter(["name", "cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if "raylet" in (proc.info["name"] or "") and f"--node_manager_port={self.node_manager_port}" in cmdline:
                return proc
        return None

    def kill(self) -> None:
        """SIGKILL the raylet and every process under it (workers, agents), children first."""
        raylet = self.raylet()
        if raylet is None:
            raise RuntimeError(f"no raylet with node manager port {self.node_manager_port}")
        for proc in [*raylet.children(recursive=True), raylet]:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass


@dataclass
class LocalCluster:
    """``with LocalCluster(head_cpus=0) as cluster: cluster.add_node(4)``; ``cluster.dashboard`` for jobs."""

    head_cpus: int = 0
    head_resources: dict[str, float] | None = None
    system_config: dict | None = None
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fmgnn-mn-", dir="/tmp")))
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gcs_port, self.dashboard_port, self.client_port = free_ports(3)
        # `ray` and the jobs' `python` come from the interpreter running the tests.
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
                    "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    def _ray_start(self, flags: list[str]) -> None:
        ray = str(Path(sys.executable).parent / "ray")
        done = subprocess.run([ray, "start", f"--node-ip-address={LOOPBACK}", "--disable-usage-stats", *flags],
                              env=self.env, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"ray start failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def start(self) -> LocalCluster:
        ensure_auth_token()
        flags, port = node_port_flags()
        head = ["--head", f"--port={self.gcs_port}", f"--num-cpus={self.head_cpus}", f"--temp-dir={self.temp_dir}",
                "--include-dashboard=true", f"--dashboard-host={LOOPBACK}", f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={self.client_port}", *flags]
        if self.head_resources:
            head.append(f"--resources={json.dumps(self.head_resources)}")
        if self.system_config:
            head.append(f"--system-config={json.dumps(self.system_config)}")
        self._ray_start(head)
        self.nodes.append(Node(port, self.head_cpus))
        return self

    def add_node(self, num_cpus: int, resources: dict[str, float] | None = None) -> Node:
        flags, port = node_port_flags()
        if resources:
            flags.append(f"--resources={json.dumps(resources)}")
        self._ray_start([f"--address={self.address}", f"--num-cpus={num_cpus}", *flags])
        node = Node(port, num_cpus)
        self.nodes.append(node)
        return node

    def wait_for_nodes(self, count: int, timeout_s: float = 60) -> None:
        """Until the head's state API lists ``count`` live nodes."""
        from ray.util.state import list_nodes

        from pipelines.submit import use_token_if_present

        use_token_if_present()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                alive = [n for n in list_nodes(address=self.dashboard) if n.state == "ALIVE"]
                if len(alive) >= count:
                    return
            except Exception:  # the dashboard may still be starting
                pass
            time.sleep(1)
        raise TimeoutError(f"fewer than {count} live nodes after {timeout_s} s")

    def shutdown(self) -> None:
        """Kill every process of this cluster only (``ray stop`` would stop every Ray on the machine)."""
        session_procs = []
        for proc in psutil.process_iter(["cmdline"]):
            if any(str(self.temp_dir) in part for part in proc.info["cmdline"] or []):
                session_procs.append(proc)
        for node in self.nodes:
            raylet = node.raylet()
            if raylet is not None:
                session_procs += [*raylet.children(recursive=True), raylet]
        for proc in session_procs:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(session_procs, timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
