"""The faults interface: what a scenario does to break and mend the lab's replicas and probes. Every
call returns what was done, in words, for the timeline. drills.localfaults makes them with processes
and a mount namespace, drills.dockerfaults through the Docker engine; the storage faults are the
same commands in both, run where the registry sees its storage, so they are written once here."""
from __future__ import annotations

import subprocess
from abc import ABC, abstractmethod
from pathlib import Path

from drills.errors import LabError
from drills.labconfig import STORAGE_SIZE_MB

FILLER = "filler"


class Faults(ABC):
    # -- where a replica's storage is, and how to run a command that sees it ----------------

    @abstractmethod
    def storage_mount(self, replica: str) -> Path:
        """The mount point of the replica's storage (a 64 MiB tmpfs), as the registry sees it."""

    @abstractmethod
    def storage_exec(self, replica: str, *argv: str) -> subprocess.CompletedProcess:
        """A command that sees the replica's storage as the registry does (as root)."""

    # -- storage faults: the registry runs unprivileged on its own tmpfs -----------------------

    def storage_unreadable(self, replica: str) -> str:
        mount = self.storage_mount(replica)
        self._chmod(replica, "000", mount)
        return f"chmod 000 {mount} (the registry runs unprivileged)"

    def storage_readable(self, replica: str) -> str:
        mount = self.storage_mount(replica)
        self._chmod(replica, "755", mount)
        return f"chmod 755 {mount}"

    def _chmod(self, replica: str, mode: str, mount: Path) -> None:
        result = self.storage_exec(replica, "chmod", mode, str(mount))
        if result.returncode != 0:
            raise LabError(f"chmod failed: {result.stderr.strip()}")

    def fill_disk(self, replica: str) -> str:
        mount = self.storage_mount(replica)
        self.storage_exec(replica, "dd", "if=/dev/zero", f"of={mount / FILLER}", "bs=1M",
                          f"count={STORAGE_SIZE_MB + 1}")
        df = self.storage_exec(replica, "df", "-k", str(mount))
        fields = df.stdout.splitlines()[-1].split() if df.stdout.strip() else []
        avail = f"{fields[3]} KiB" if len(fields) > 3 else "?"
        return f"dd filled the {STORAGE_SIZE_MB} MiB tmpfs ({avail} left)"

    def free_disk(self, replica: str) -> str:
        self.storage_exec(replica, "rm", "-f", str(self.storage_mount(replica) / FILLER))
        return "filler removed"

    # -- the registry process ----------------------------------------------------------------

    @abstractmethod
    def kill_registry(self, replica: str) -> str:
        """SIGKILL, no shutdown."""

    @abstractmethod
    def restart_registry(self, replica: str) -> str:
        """Start it again (after kill_registry); its image must be there when this returns."""

    @abstractmethod
    def freeze(self, replica: str) -> str:
        """Stop it without a word: connections hang (SIGSTOP, a cgroup freeze)."""

    @abstractmethod
    def thaw(self, replica: str) -> str:
        """Undo freeze."""

    # -- probes ------------------------------------------------------------------------------

    @abstractmethod
    def probes_instances(self) -> list[str]:
        """The probes instances this lab runs, the one the lab watches first."""

    @abstractmethod
    def stop_probes(self, instance: str | None = None) -> None:
        """Stop every probes instance (or one), gracefully."""

    @abstractmethod
    def start_probes(self, instance: str | None = None) -> None:
        """Start them again; returns once each answers /healthz."""

    @abstractmethod
    def kill_probes(self, instance: str) -> str:
        """SIGKILL one probes instance."""

    # -- between scenarios -------------------------------------------------------------------

    @abstractmethod
    def mend_all(self) -> None:
        """Undo what a failed scenario may have left: frozen or dead registries, stopped probes."""
