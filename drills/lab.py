"""The drill lab as a scenario sees it, however it was built (drills.local, drills.compose): the faults
to inject, the client that measures (and a docker daemon as a second one, when the lab has it), the
events observed, the timings and budget of its config, and dnsd's admin command line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dnsd.model import Config
from dnsd.routing.budget import Budget, budgets, fail_open_after
from drills.client import Client
from drills.daemon import DaemonClient
from drills.faults import Faults
from drills.labconfig import Timing
from drills.observe import Events, Watchers
from drills.proc import geotm_env, run


class Lab:
    def __init__(self, config: Config, config_path: Path, timing: Timing, workdir: Path, faults: Faults,
                 client: Client, watchers: Watchers, daemon: DaemonClient | None = None):
        self.config = config
        self.config_path = config_path
        self.timing = timing
        self.workdir = workdir
        self.faults = faults
        self.client = client
        self.daemon = daemon
        self.watchers = watchers
        self.budget: dict[str, Budget] = {b.replica: b for b in budgets(config)}
        self.fail_open_after = fail_open_after(config)

    @property
    def events(self) -> Events:
        return self.watchers.events

    def start_observing(self) -> None:
        """Watch dnsd's answer and the probes' verdicts; run the pull loop (pulls start with pulling(True))."""
        self.watchers.spawn(self.watchers.watch_dns, "watch_dns", self.client.resolve)
        self.watchers.spawn(self.watchers.watch_probes, "watch_probes")
        self.watchers.spawn(self.client.pull_loop, "pull_loop", self.watchers.stopping)
        if self.daemon is not None:
            self.watchers.spawn(self.daemon.pull_loop, "pull_loop_dockerd", self.watchers.stopping)

    def stop_observing(self) -> None:
        self.client.pulling(False)
        if self.daemon is not None:
            self.daemon.pulling(False)
        self.watchers.stop()
        self.client.settle_pulls()
        if self.daemon is not None:
            self.daemon.settle_pulls()

    def admin(self, *args: str) -> subprocess.CompletedProcess:
        """`dnsd ARGS --config CONFIG` as the operator would run it (drain, undrain, ...)."""
        argv = [sys.executable, "-m", "dnsd", *args, "--config", str(self.config_path)]
        return run(argv, timeout=20, env=geotm_env(), cwd=self.workdir)
