"""What the drill observes, timestamped: changes of dnsd's answer and of the probes' verdicts (watched
from threads), dnsd's and probes' own log events, and the direct looks a scenario takes (a URL's
status, the probes' current statuses)."""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from dnsd.common import children
from drills.labconfig import BY_ADDRESS, GLOBAL_NAME, PROBES, PROBES_ADDRESS, PROBES_PORT
from drills.proc import parse_timestamp

WATCH_STEP = 0.1
LOG_EVENTS = ("status_changed", "routing_changed", "routing", "health_expired", "audit")


@dataclass(frozen=True, slots=True)
class Event:
    at: float
    source: str  # dns | probes-view | probes | dnsd | lab
    kind: str
    fields: dict = field(default_factory=dict)


class Events:
    """Everything observed, in arrival order (thread-safe, bounded)."""
    LIMIT = 100_000

    def __init__(self) -> None:
        self._items: list[Event] = []
        self._lock = threading.Lock()

    def add(self, at: float, source: str, kind: str, /, **fields) -> None:  # fields may hold "kind"
        with self._lock:
            if len(self._items) < self.LIMIT:
                self._items.append(Event(at, source, kind, fields))

    def select(self, after: float, before: float | None = None,
               match: Callable[[Event], bool] = lambda e: True) -> list[Event]:
        with self._lock:
            items = list(self._items)
        return sorted((e for e in items if e.at >= after and (before is None or e.at <= before) and match(e)),
                      key=lambda e: e.at)

    def first(self, after: float, match: Callable[[Event], bool], before: float | None = None) -> Event | None:
        found = self.select(after, before, match)
        return found[0] if found else None

    def log_line(self, name: str, received: float, parsed: dict | None, _line: str) -> None:
        """A line of dnsd's or a probes instance's JSON log: the events a timeline shows are kept,
        at the time the process logged them (a drills.proc LineListener)."""
        if not parsed or "event" not in parsed:
            return
        event = parsed["event"]
        if event in LOG_EVENTS:
            at = parse_timestamp(parsed.get("timestamp")) or received
            fields = {k: v for k, v in parsed.items() if k not in ("event", "timestamp", "level")}
            self.add(at, name, event, **fields)


def wait_for(predicate: Callable[[], object], limit: float, step: float = WATCH_STEP) -> float | None:
    """time.time() when predicate() first holds (an exception counts as "not yet"), or None after
    `limit` seconds."""
    if children.poll_until(predicate, limit, step, ignore=(Exception,)) is None:
        return None
    return time.time()


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def probe_statuses(instance: str | None = None) -> dict[str, str]:
    """replica -> status, as a probes instance (default: the first) reports it now; {} if it does not answer."""
    address = PROBES[instance] if instance else PROBES_ADDRESS
    try:
        with urllib.request.urlopen(f"http://{address}:{PROBES_PORT}/v1/health", timeout=1) as resp:
            return {e["replica"]: e["status"] for e in json.load(resp)["endpoints"]}
    except (OSError, ValueError, KeyError):
        return {}


class Watchers:
    """The threads that watch the lab until stop(): each writes what changed into `events`."""

    def __init__(self, events: Events) -> None:
        self.events = events
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def spawn(self, target: Callable[..., None], name: str, *args) -> None:
        """Run target(*args) in a daemon thread; it must return soon after `stopping` is set."""
        thread = threading.Thread(target=target, name=name, daemon=True, args=args)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(3)

    def watch_dns(self, resolve: Callable[[str], str | None]) -> None:
        """Every change of the global name's answer, as a client asking dnsd sees it."""
        answer: str | None = None
        while not self.stopping.is_set():
            started = time.time()
            now = resolve(GLOBAL_NAME)
            if now != answer:
                self.events.add(time.time(), "dns", "answer", address=now, replica=BY_ADDRESS.get(now),
                                before=BY_ADDRESS.get(answer) if answer else None)
                answer = now
            self.stopping.wait(max(0.0, WATCH_STEP - (time.time() - started)))

    def watch_probes(self) -> None:
        """Every change of status or trend the first probes instance reports (its failed and good rounds)."""
        seen: dict[str, tuple] = {}
        url = f"http://{PROBES_ADDRESS}:{PROBES_PORT}/v1/health"
        while not self.stopping.is_set():
            started = time.time()
            try:
                with urllib.request.urlopen(url, timeout=0.5) as resp:
                    document = json.load(resp)
                entries = {e["replica"]: (e["status"], e.get("trend") or "", e.get("reason") or "")
                           for e in document.get("endpoints", [])}
            except (OSError, ValueError, KeyError):
                entries = {"*": ("unreachable", "", "")}
            for replica, value in entries.items():
                if seen.get(replica, (None, None))[:2] != value[:2]:
                    self.events.add(time.time(), "probes-view", "verdict", replica=replica, status=value[0],
                                    trend=value[1], reason=value[2])
            if "*" not in entries:
                seen.pop("*", None)
            seen.update(entries)
            self.stopping.wait(max(0.0, WATCH_STEP - (time.time() - started)))
