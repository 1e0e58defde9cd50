"""Pulls a measuring client records: the Pull record, the background pull loop, and what a scenario
asks of them. Shared by the skopeo client (drills.client) and the docker daemon (drills.daemon)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from drills.labconfig import GLOBAL_NAME
from drills.observe import wait_for

PULL_TIMEOUT = 8.0  # a client's own bound: a hung replica costs a pull at most this, never the drill


@dataclass(slots=True)
class Pull:
    started: float
    host: str
    ended: float | None = None
    ok: bool | None = None
    replica: str | None = None  # which replica served it (the manifest says)
    error: str = ""


class Puller:
    """`pull(host, record)` is the client's own; the rest is shared. The loop starts a pull every
    `period` seconds, at most `max_inflight` at once (so one hung pull never hides when the next one
    succeeds)."""
    name = "client"
    period = 0.75
    max_inflight = int(PULL_TIMEOUT / period) + 3

    def __init__(self) -> None:
        self.pulls: list[Pull] = []
        self._pulls_lock = threading.Lock()
        self._pulling = threading.Event()

    def pull(self, host: str = GLOBAL_NAME, record: bool = True) -> Pull:
        raise NotImplementedError

    def _recorded(self, host: str, record: bool) -> Pull:
        item = Pull(started=time.time(), host=host)
        if record:
            with self._pulls_lock:
                self.pulls.append(item)
        return item

    def pull_loop(self, stopping: threading.Event) -> None:
        """While pulling is on, pull the global name in the background until `stopping`."""
        slots = threading.BoundedSemaphore(self.max_inflight)

        def one() -> None:
            try:
                self.pull()
            finally:
                slots.release()
        while not stopping.is_set():
            if self._pulling.is_set() and slots.acquire(timeout=self.period):
                threading.Thread(target=one, name=f"pull-{self.name}", daemon=True).start()
            stopping.wait(self.period)

    def pulling(self, on: bool) -> None:
        (self._pulling.set if on else self._pulling.clear)()

    def pulls_between(self, start: float, end: float) -> list[Pull]:
        with self._pulls_lock:
            return [p for p in self.pulls if p.started >= start and p.started <= end]

    def first_pull_from(self, replica: str, after: float) -> Pull | None:
        with self._pulls_lock:
            done = [p for p in self.pulls if p.ok and p.replica == replica and p.started >= after and p.ended]
        return min(done, key=lambda p: p.ended) if done else None

    def settle_pulls(self, limit: float = PULL_TIMEOUT + 4) -> None:
        """Wait until every recorded pull has finished (each is bounded by PULL_TIMEOUT)."""
        def done() -> bool:
            with self._pulls_lock:
                return all(p.ended is not None for p in self.pulls)
        wait_for(done, limit)


def last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[-300:]
