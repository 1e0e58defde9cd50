"""A real etcd for tests: one member (or a few) on loopback ports picked here, its data in a folder
the test owns, started as a Child and stopped by PID. Skips (fails under GEOTM_REQUIRE_TOOLS=1) when
etcd is not installed."""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from dnsd.common.children import Child, free_port
from tests.tools import require_tool


def etcd_binary() -> str:
    return require_tool("etcd", "as the cluster store of many dnsd and probes instances", "etcd-server")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=0.5) as response:
            return json.loads(response.read()).get("health") == "true"
    except (OSError, ValueError):
        return False


class Etcd:
    """Members named m0..m{n-1}, each with its client URL in `urls`. start() waits until every member
    reports healthy (a leader elected); stop()/kill() end one member or all of them, by PID."""

    def __init__(self, data_dir: Path, members: int = 1):
        binary = etcd_binary()
        self.client_ports = [free_port() for _ in range(members)]
        self.peer_ports = [free_port() for _ in range(members)]
        cluster = ",".join(f"m{i}=http://127.0.0.1:{port}" for i, port in enumerate(self.peer_ports))
        self.urls = [f"http://127.0.0.1:{port}" for port in self.client_ports]
        self.members: list[Child] = []
        for i in range(members):
            argv = [binary, "--name", f"m{i}", "--data-dir", str(data_dir / f"m{i}"),
                    "--listen-client-urls", self.urls[i], "--advertise-client-urls", self.urls[i],
                    "--listen-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                    "--initial-cluster", cluster, "--initial-cluster-state", "new",
                    "--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "warn"]
            self.members.append(Child(argv, data_dir / f"m{i}.log", name=f"etcd m{i}"))

    def start(self, only: int | None = None) -> Etcd:
        chosen = range(len(self.members)) if only is None else [only]
        for i in chosen:
            if self.members[i].pid:  # started before (a restart): forget that run first
                self.members[i].reset()
            self.members[i].start()
        for i in chosen:
            self.members[i].wait_ready(lambda i=i: _healthy(self.urls[i]), timeout=20)
        return self

    def stop(self, only: int | None = None) -> None:
        for i in range(len(self.members)) if only is None else [only]:
            self.members[i].stop()

    def __enter__(self) -> Etcd:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
