"""The local lab's processes, started and stopped here: the storage holder, the registries inside its
mount namespace, the probes instances and dnsd (whose log events go to the lab's Events).

Storage: every replica's storage is a 64 MiB tmpfs mounted in a private mount namespace held by one
`unshare --mount` process (the "storage holder"); registries run inside it (nsenter) as the
unprivileged `docker-registry` user, so making a storage directory unreadable really breaks it, and
filling the tmpfs really returns ENOSPC. Nothing is mounted in the host's mount namespace, and the
mounts vanish with the holder.
"""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from drills.errors import LabError
from drills.labconfig import PROBES, PROBES_PORT, REPLICAS, STORAGE_SIZE_MB, Paths
from drills.observe import Events, http_status, wait_for
from drills.proc import Child, geotm_env, run

REGISTRY_USER = "docker-registry"
HOLDER_LIFETIME = 4 * 3600  # the storage holder's sleep; it dies with the drill anyway (PDEATHSIG)


class LocalProcesses:
    def __init__(self, paths: Paths, events: Events):
        self.paths = paths
        self.events = events
        self.holder: Child | None = None
        self.registries: dict[str, Child] = {}
        self.probes: dict[str, Child] = {}  # probes instance name -> its process
        self.dnsd: Child | None = None

    def log(self, name: str) -> Path:
        return self.paths.root / "logs" / f"{name}.log"

    # -- storage -----------------------------------------------------------------------------

    def start_storage_holder(self) -> None:
        lines = ["set -e"]
        for replica in REPLICAS:
            mount = self.paths.storage(replica.name)
            mount.mkdir(parents=True, exist_ok=True)
            lines.append(f"mount -t tmpfs -o size={STORAGE_SIZE_MB}m,mode=0755 gtdrill-{replica.name} {mount}")
            lines.append(f"mkdir {self.paths.storage_root(replica.name)}")
            lines.append(f"chown {REGISTRY_USER}:{REGISTRY_USER} {mount} {self.paths.storage_root(replica.name)}")
        lines.append("echo storage-ready")
        lines.append(f"exec sleep {HOLDER_LIFETIME}")
        ready = threading.Event()

        def listener(_name, _at, _parsed, line):
            if line.strip() == "storage-ready":
                ready.set()
        self.holder = Child("storage-holder", ["unshare", "--mount", "--propagation", "private", "--",
                                               "sh", "-c", "\n".join(lines)], self.log("storage-holder"),
                            listener=listener)
        if not ready.wait(15):
            raise LabError(f"storage holder not ready; see {self.log('storage-holder')}")

    def _enter_storage(self) -> list[str]:
        assert self.holder is not None
        return ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", "--"]

    def in_storage_ns(self, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """A command that sees the replicas' storage mounts (as root)."""
        return run([*self._enter_storage(), *argv], timeout=timeout)

    # -- registries, probes, dnsd ------------------------------------------------------------

    def start_registry(self, name: str) -> None:
        argv = [*self._enter_storage(),
                "setpriv", f"--reuid={REGISTRY_USER}", f"--regid={REGISTRY_USER}", "--init-groups",
                # port 443 as an unprivileged user: only this one capability, inherited by the registry
                "--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service", "--",
                "docker-registry", "serve", str(self.paths.registry_config(name))]
        self.registries[name] = Child(name, argv, self.log(name), cwd=Path("/"),
                                      env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/nonexistent"})

    def start_probes(self, instance: str | None = None) -> None:
        """Start every probes instance (or one); each probes the replicas itself, from its own address.
        Returns once each answers /healthz."""
        for name in [instance] if instance else list(PROBES):
            argv = [sys.executable, "-m", "probes", "serve", "--config", str(self.paths.geotm_config),
                    "--log-format", "json"]
            if name != next(iter(PROBES)):  # the first one is the config's probes.listen
                argv += ["--listen", f"{PROBES[name]}:{PROBES_PORT}",
                         "--state-file", str(self.paths.probes_state(name))]
            self.probes[name] = Child(name, argv, self.log(name), cwd=self.paths.root, env=geotm_env(),
                                      listener=self.events.log_line)
        for name in [instance] if instance else list(PROBES):
            url = f"http://{PROBES[name]}:{PROBES_PORT}/healthz"
            if wait_for(lambda: http_status(url) == 200, 20, 0.2) is None:
                raise LabError(f"{name} did not come up; see {self.log(name)}")

    def start_dnsd(self) -> None:
        self.dnsd = Child("dnsd", [sys.executable, "-m", "dnsd", "serve", "--config", str(self.paths.geotm_config),
                                   "--log-format", "json"], self.log("dnsd"), cwd=self.paths.root,
                          env=geotm_env(), listener=self.events.log_line)

    def stop_all(self) -> None:
        """dnsd first, the storage holder last (the registries' mounts go with it)."""
        for child in [self.dnsd, *self.probes.values(), *self.registries.values(), self.holder]:
            if child is not None:
                try:
                    child.stop()
                except Exception:
                    pass
