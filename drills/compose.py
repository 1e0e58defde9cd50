"""The compose drill: the same scenarios, run from the `client` container of docker-compose.yml.

The stack (dnsd, probes, three registry:2 replicas) uses the same addresses as the local lab
(10.77.0.0/24, see config/compose.yaml), so the scenarios and their checks are shared; only how a
fault is made differs: `docker pause` for a freeze, `docker kill` + start, `chmod`/`dd` executed in
the registry container (which runs as an unprivileged user on a 64 MiB tmpfs), probes container
stopped and started. The client container's resolver is dnsd (`dns:` in the compose file).
"""
from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import threading
from pathlib import Path

from dnsd.config import load_config
from drills.dockerapi import Docker, DockerError
from drills.lab import Lab, LabError, http_status, wait_for
from drills.labconfig import DNS_ADDRESS, GLOBAL_NAME, PROBES_ADDRESS, PROBES_PORT, REPLICAS, Timing

CONFIG = Path(os.environ.get("GEOTM_CONFIG", "/etc/geotm/geotm.yaml"))
PKI = Path(os.environ.get("GEOTM_PKI", "/pki"))
STORAGE = Path("/var/lib/registry")


class ComposeLab(Lab):
    def __init__(self, timing: Timing, workdir: Path, say=print, docker: Docker | None = None):
        super().__init__(timing, workdir, say)
        self.config_path = CONFIG
        self.certs_dir = PKI / "client"
        self.docker = docker or Docker()
        self.containers: dict[str, str] = {}
        self._paused: set[str] = set()

    def setup(self) -> None:
        for sub in ("images", "pulls", "client"):
            (self.paths.root / sub).mkdir(parents=True, exist_ok=True)
        try:
            me = self.docker.inspect(socket.gethostname())
        except (OSError, DockerError) as err:
            raise LabError(f"cannot reach the Docker engine at /var/run/docker.sock: {err}") from None
        project = me["Config"]["Labels"].get("com.docker.compose.project")
        if not project:
            raise LabError("this container is not part of a compose project")
        for service in [r.name for r in REPLICAS] + ["probes", "dnsd"]:
            self.containers[service] = self.docker.service_container(project, service)
        self.say(f"compose project {project}: " + ", ".join(f"{k} {v[:12]}" for k, v in self.containers.items()))
        self.load_budget()
        self._ssl = ssl.create_default_context(cafile=str(self.certs_dir / "ca.crt"))
        for replica in REPLICAS:
            if wait_for(lambda r=replica: self.registry_up(r), 60, 0.5) is None:
                raise LabError(f"registry {replica.name} ({replica.address}) is not up")
        if wait_for(lambda: self.resolve(GLOBAL_NAME) is not None, 60, 0.5) is None:
            raise LabError(f"dnsd does not answer on {DNS_ADDRESS}:53")
        self._push_images()
        for name in ("probes", "dnsd"):
            thread = threading.Thread(target=self.docker.follow_logs, name=f"logs-{name}", daemon=True,
                                      args=(self.containers[name], self._line_of(name), self._stop))
            thread.start()
            self._threads.append(thread)
        self.start_observers()

    def load_budget(self) -> None:
        """Budgets and the scenario timings (blip length, fail-open floor) from the stack's config."""
        super().load_budget()
        config = load_config(str(self.config_path))
        registry = next(r for r in config.registries if r.name == "contoso")
        spec = next(r for r in registry.replicas if r.name == "eastus").probe
        self.timing = Timing("compose", interval=spec.interval, timeout=spec.timeout, fall=spec.fall, rise=spec.rise,
                             tm_ttl=config.zone.ttls.traffic_manager, poll_interval=config.health.poll_interval,
                             health_ttl=config.health.ttl, jitter=spec.jitter)

    def _line_of(self, name: str):
        def on_line(line: str, at: float) -> None:
            try:
                parsed = json.loads(line) if line.startswith("{") else None
            except ValueError:
                parsed = None
            self._geotm_listener(name, at, parsed if isinstance(parsed, dict) else None, line)
        return on_line

    def client_prefix(self) -> list[str]:
        return []  # this container's resolver already is dnsd

    # -- faults through the Docker engine ------------------------------------------------

    def storage_mount(self, name: str) -> Path:
        return STORAGE

    def storage_exec(self, name: str, *argv: str) -> subprocess.CompletedProcess:
        code, output = self.docker.exec(self.containers[name], list(argv))
        return subprocess.CompletedProcess(list(argv), code, output, output if code else "")

    def kill_registry(self, name: str) -> str:
        self.docker.kill(self.containers[name])
        return f"docker kill {name}"

    def restart_registry(self, name: str) -> str:
        """docker start; the replica's storage is a tmpfs that does not survive its container, so the
        drill's image is pushed again at once (in the local lab the storage survives a restart)."""
        self.docker.start(self.containers[name])
        replica = next(r for r in REPLICAS if r.name == name)
        if wait_for(lambda: self.registry_up(replica), 15, 0.2) is None:
            return f"docker start {name} (not answering after 15s)"
        pushed = self.push(self.paths.root / "images" / name, replica.regional)
        return f"docker start {name}, image pushed again ({'ok' if pushed.returncode == 0 else 'failed'})"

    def freeze(self, name: str) -> str:
        self.docker.pause(self.containers[name])
        self.frozen.add(name)
        return f"docker pause {name} (cgroup freezer)"

    def thaw(self, name: str) -> str:
        self.docker.unpause(self.containers[name])
        self.frozen.discard(name)
        return f"docker unpause {name}"

    def probes_instances(self) -> list[str]:
        return ["probes"]  # docker-compose.yml runs one

    def stop_probes(self, instance: str | None = None) -> None:
        self.docker.stop(self.containers["probes"])

    def start_probes(self, instance: str | None = None) -> None:
        self.docker.start(self.containers["probes"])
        url = f"http://{PROBES_ADDRESS}:{PROBES_PORT}/healthz"
        if wait_for(lambda: http_status(url) == 200, 30, 0.5) is None:
            raise LabError("probes did not come back")

    def ensure_running(self) -> None:
        for name in list(self.frozen):
            self.thaw(name)
        for service in [r.name for r in REPLICAS] + ["probes"]:
            if not self.docker.state(self.containers[service]).get("Running"):
                self.docker.start(self.containers[service])
        for replica in REPLICAS:
            self.storage_exec(replica.name, "chmod", "755", str(STORAGE))
            self.storage_exec(replica.name, "rm", "-f", str(STORAGE / "filler"))

    def teardown(self) -> None:
        self.stop_observers()
        try:
            self.ensure_running()  # leave the stack as we found it
        except (OSError, DockerError):
            pass
