"""Faults in the local lab, made on its processes: signals to a registry (SIGKILL, SIGSTOP/SIGCONT),
chmod and dd inside the storage holder's mount namespace, probes instances stopped, killed and
started again."""
from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from drills.faults import Faults
from drills.labconfig import PROBES, REPLICAS
from drills.localprocs import LocalProcesses


class LocalFaults(Faults):
    def __init__(self, processes: LocalProcesses):
        self.processes = processes
        self.frozen: set[str] = set()

    def storage_mount(self, replica: str) -> Path:
        return self.processes.paths.storage(replica)

    def storage_exec(self, replica: str, *argv: str) -> subprocess.CompletedProcess:
        return self.processes.in_storage_ns(*argv)  # one mount namespace holds every replica's storage

    def kill_registry(self, replica: str) -> str:
        child = self.processes.registries[replica]
        child.kill()
        return f"SIGKILL pid {child.pid}"

    def restart_registry(self, replica: str) -> str:
        """Stopped and started again; its storage (and the image on it) survives in the holder's tmpfs."""
        self.processes.registries[replica].stop()
        self.processes.start_registry(replica)
        self.frozen.discard(replica)
        return f"restarted, pid {self.processes.registries[replica].pid}"

    def freeze(self, replica: str) -> str:
        child = self.processes.registries[replica]
        child.signal(signal.SIGSTOP)
        self.frozen.add(replica)
        return f"SIGSTOP pid {child.pid}"

    def thaw(self, replica: str) -> str:
        child = self.processes.registries[replica]
        child.signal(signal.SIGCONT)
        self.frozen.discard(replica)
        return f"SIGCONT pid {child.pid}"

    def probes_instances(self) -> list[str]:
        return list(PROBES)

    def stop_probes(self, instance: str | None = None) -> None:
        for name, child in self.processes.probes.items():
            if instance in (None, name):
                child.stop()

    def start_probes(self, instance: str | None = None) -> None:
        self.processes.start_probes(instance)

    def kill_probes(self, instance: str) -> str:
        child = self.processes.probes[instance]
        child.kill()
        return f"SIGKILL {instance} pid {child.pid}"

    def mend_all(self) -> None:
        for name in list(self.frozen):
            self.thaw(name)
        for replica in REPLICAS:
            if not self.processes.registries[replica.name].alive():
                self.processes.start_registry(replica.name)
        for name in self.probes_instances():
            if name not in self.processes.probes or not self.processes.probes[name].alive():
                self.processes.start_probes(name)
