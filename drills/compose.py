"""The compose drill: the same scenarios, run from the `client` container of docker-compose.yml
against the stack it belongs to, found and watched here; faults through the Docker engine
(drills.dockerfaults).

The stack (dnsd, probes, three registry:2 replicas) uses the same addresses as the local lab
(10.77.0.0/24, see config/compose.yaml), so the scenarios and their checks are shared. The timings
come from the stack's config. The client container's resolver is dnsd (`dns:` in the compose file),
so the client runs skopeo as it is. Given the socket of a docker daemon that resolves through dnsd
(scripts/compose-drill starts one), that daemon pulls too, as a second client (drills.daemon).
"""
from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

from dnsd.config import load_config
from dnsd.model import Config
from drills.client import Client
from drills.daemon import DaemonClient
from drills.dockerapi import Docker, DockerError
from drills.dockerfaults import PROBES_SERVICE, DockerFaults
from drills.errors import LabError
from drills.lab import Lab
from drills.labconfig import DNS_ADDRESS, GLOBAL_NAME, REGISTRY, REPLICAS, Timing
from drills.observe import Events, Watchers, wait_for

CONFIG = Path(os.environ.get("GEOTM_CONFIG", "/etc/geotm/geotm.yaml"))
PKI = Path(os.environ.get("GEOTM_PKI", "/pki"))
TIMING_REPLICA = "eastus"  # whose probe settings are the drill's timings


def timing_of(config: Config) -> Timing:
    """The scenario timings (blip length, fail-open floor) from the stack's config."""
    registry = next(r for r in config.registries if r.name == REGISTRY)
    spec = next(r for r in registry.replicas if r.name == TIMING_REPLICA).probe
    if spec is None:
        raise LabError(f"{TIMING_REPLICA} has no probe settings in the stack's config")
    return Timing("compose", interval=spec.interval, timeout=spec.timeout, fall=spec.fall, rise=spec.rise,
                  tm_ttl=config.zone.ttls.traffic_manager, poll_interval=config.health.poll_interval,
                  health_ttl=config.health.ttl, jitter=spec.jitter)


class ComposeLab:
    def __init__(self, workdir: Path, say: Callable[[str], None] = print, docker: Docker | None = None,
                 daemon_socket: str | None = None):
        self.workdir = workdir
        self.daemon_socket = daemon_socket
        self.say = say
        self.config_path = CONFIG
        self.docker = docker or Docker()
        self.containers: dict[str, str] = {}  # compose service -> container id
        self.watchers = Watchers(Events())
        self.client = Client(workdir, certs_dir=PKI / "client", ca_file=PKI / "client" / "ca.crt", prefix=[],
                             say=say)
        self.faults = DockerFaults(self.docker, self.containers, self.client)
        self.lab: Lab | None = None

    def setup(self) -> Lab:
        for sub in ("images", "pulls", "client"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        try:
            me = self.docker.inspect(socket.gethostname())
        except (OSError, DockerError) as err:
            raise LabError(f"cannot reach the Docker engine at /var/run/docker.sock: {err}") from None
        project = me["Config"]["Labels"].get("com.docker.compose.project")
        if not project:
            raise LabError("this container is not part of a compose project")
        for service in [r.name for r in REPLICAS] + [PROBES_SERVICE, "dnsd"]:
            self.containers[service] = self.docker.service_container(project, service)
        self.say(f"compose project {project}: " + ", ".join(f"{k} {v[:12]}" for k, v in self.containers.items()))
        config = load_config(str(self.config_path))
        for replica in REPLICAS:
            if wait_for(lambda r=replica: self.client.registry_up(r), 60, 0.5) is None:
                raise LabError(f"registry {replica.name} ({replica.address}) is not up")
        if wait_for(lambda: self.client.resolve(GLOBAL_NAME) is not None, 60, 0.5) is None:
            raise LabError(f"dnsd does not answer on {DNS_ADDRESS}:53")
        self.client.push_images()
        daemon = None
        if self.daemon_socket:
            daemon = DaemonClient(self.daemon_socket, self.client.digests)
            try:
                self.say(f"docker daemon {daemon.version()} at {self.daemon_socket} pulls too (its resolver is dnsd)")
            except (OSError, DockerError) as err:
                raise LabError(f"the docker daemon at {self.daemon_socket} does not answer: {err}") from None
        for name in (PROBES_SERVICE, "dnsd"):
            self.watchers.spawn(self.docker.follow_logs, f"logs-{name}", self.containers[name], self._log_line(name),
                                self.watchers.stopping)
        self.lab = Lab(config, self.config_path, timing_of(config), self.workdir, self.faults, self.client,
                       self.watchers, daemon)
        self.lab.start_observing()
        return self.lab

    def _log_line(self, name: str) -> Callable[[str, float], None]:
        def on_line(line: str, at: float) -> None:
            try:
                parsed = json.loads(line) if line.startswith("{") else None
            except ValueError:
                parsed = None
            self.watchers.events.log_line(name, at, parsed if isinstance(parsed, dict) else None, line)
        return on_line

    def teardown(self) -> None:
        if self.lab is not None:
            self.lab.stop_observing()
        try:
            self.faults.mend_all()  # leave the stack as we found it
        except (OSError, DockerError, KeyError):  # KeyError: setup failed before every container was found
            pass
