"""Faults in the compose stack, made through the Docker engine: `docker pause` for a freeze, `docker
kill` + start, chmod/dd executed in the registry container (which runs as an unprivileged user on a
64 MiB tmpfs), the probes container stopped and started."""
from __future__ import annotations

import subprocess
from pathlib import Path

from drills.client import Client
from drills.dockerapi import Docker
from drills.errors import LabError
from drills.faults import FILLER, Faults
from drills.labconfig import PROBES_ADDRESS, PROBES_PORT, REPLICA, REPLICAS
from drills.observe import http_status, wait_for

STORAGE = Path("/var/lib/registry")  # the registry containers' tmpfs (docker-compose.yml)
PROBES_SERVICE = "probes"  # docker-compose.yml runs one probes instance


class DockerFaults(Faults):
    """`containers`: compose service -> container id, filled in once the stack is found. `client`
    pushes the image again after a restart (a container's tmpfs does not survive it)."""

    def __init__(self, docker: Docker, containers: dict[str, str], client: Client):
        self.docker = docker
        self.containers = containers
        self.client = client
        self.frozen: set[str] = set()

    def storage_mount(self, replica: str) -> Path:
        return STORAGE

    def storage_exec(self, replica: str, *argv: str) -> subprocess.CompletedProcess:
        code, output = self.docker.exec(self.containers[replica], list(argv))
        return subprocess.CompletedProcess(list(argv), code, output, output if code else "")

    def kill_registry(self, replica: str) -> str:
        self.docker.kill(self.containers[replica])
        return f"docker kill {replica}"

    def restart_registry(self, replica: str) -> str:
        """docker start; the replica's storage is a tmpfs that does not survive its container, so the
        drill's image is pushed again at once (in the local lab the storage survives a restart)."""
        self.docker.start(self.containers[replica])
        spec = REPLICA[replica]
        if wait_for(lambda: self.client.registry_up(spec), 15, 0.2) is None:
            return f"docker start {replica} (not answering after 15s)"
        pushed = self.client.push(self.client.layout(replica), spec.regional)
        return f"docker start {replica}, image pushed again ({'ok' if pushed.returncode == 0 else 'failed'})"

    def freeze(self, replica: str) -> str:
        self.docker.pause(self.containers[replica])
        self.frozen.add(replica)
        return f"docker pause {replica} (cgroup freezer)"

    def thaw(self, replica: str) -> str:
        self.docker.unpause(self.containers[replica])
        self.frozen.discard(replica)
        return f"docker unpause {replica}"

    def probes_instances(self) -> list[str]:
        return [PROBES_SERVICE]

    def stop_probes(self, instance: str | None = None) -> None:
        self.docker.stop(self.containers[PROBES_SERVICE])

    def start_probes(self, instance: str | None = None) -> None:
        self.docker.start(self.containers[PROBES_SERVICE])
        url = f"http://{PROBES_ADDRESS}:{PROBES_PORT}/healthz"
        if wait_for(lambda: http_status(url) == 200, 30, 0.5) is None:
            raise LabError("probes did not come back")

    def kill_probes(self, instance: str) -> str:
        self.docker.kill(self.containers[PROBES_SERVICE])
        return f"docker kill {PROBES_SERVICE}"

    def mend_all(self) -> None:
        """Also makes every storage readable and empties it of filler (a container keeps its tmpfs
        until it is recreated)."""
        for name in list(self.frozen):
            self.thaw(name)
        for service in [r.name for r in REPLICAS] + [PROBES_SERVICE]:
            if not self.docker.state(self.containers[service]).get("Running"):
                self.docker.start(self.containers[service])
        for replica in REPLICAS:
            self.storage_exec(replica.name, "chmod", "755", str(STORAGE))
            self.storage_exec(replica.name, "rm", "-f", str(STORAGE / FILLER))
