"""structlog setup shared by dnsd and probes (JSON lines in production, readable lines on a terminal),
and the rate limit for events that can happen once per query."""
from __future__ import annotations

import logging
import sys
import time

import structlog


def configure(json: bool | None = None, level: str = "info") -> None:
    """json=None picks by whether stderr is a terminal."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


class LogGate:
    """Let through at most `burst` events per `interval` seconds; the next one let through
    carries the number suppressed in between (``suppressed=N``). For events the caller logs itself
    (refusals, evictions, feed errors); RateLimitedLog below logs per-query events and their summaries."""

    __slots__ = ("_interval", "_burst", "_window_start", "_count", "_suppressed")

    def __init__(self, interval: float, burst: int) -> None:
        self._interval = interval
        self._burst = burst
        self._window_start = -interval
        self._count = 0
        self._suppressed = 0

    def admit(self) -> int | None:
        """None when this event should be dropped, else how many were dropped before it."""
        now = time.monotonic()
        if now - self._window_start >= self._interval:
            self._window_start = now
            self._count = 0
        if self._count >= self._burst:
            self._suppressed += 1
            return None
        self._count += 1
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed


class RateLimitedLog:
    """An event that can happen once per query (query_failed, query_refused, query_malformed), rate
    limited so that a flood of bad queries cannot fill a disk: the first `burst` events are logged in
    full; after that they are only counted, and one summary event (`<event>_suppressed`, count=N)
    per `interval` seconds says how many there were. Full events come back once an interval has
    passed with none suppressed. flush() emits a due summary without waiting for the next event
    (the service calls it each second, and with force=True when it stops, so no count is lost).

    Cost per suppressed event: one clock read and an add, no formatting."""

    __slots__ = ("event", "level", "burst", "interval", "_log", "_clock", "_window_start", "_allowance",
                 "_suppressed")

    def __init__(self, event: str, *, level: str = "warning", burst: int = 5, interval: float = 10.0,
                 logger=None, clock=time.monotonic) -> None:
        self.event = event
        self.level = level
        self.burst = burst
        self.interval = interval
        self._log = logger or structlog.get_logger("dnsd.ratelimit")
        self._clock = clock
        self._window_start = clock()
        self._allowance = burst
        self._suppressed = 0

    def __call__(self, **fields) -> None:
        now = self._clock()
        if now - self._window_start >= self.interval:
            self._roll(now)
        if self._allowance > 0:
            self._allowance -= 1
            getattr(self._log, self.level)(self.event, **fields)
        else:
            self._suppressed += 1

    def flush(self, force: bool = False) -> None:
        now = self._clock()
        if force or now - self._window_start >= self.interval:
            self._roll(now)

    @property
    def suppressed(self) -> int:
        """Events counted but not yet reported in a summary."""
        return self._suppressed

    def _roll(self, now: float) -> None:
        if self._suppressed:
            getattr(self._log, self.level)(f"{self.event}_suppressed", count=self._suppressed,
                                           seconds=round(now - self._window_start, 1))
            self._suppressed = 0
            # still flooding: summaries only, until an interval passes with nothing suppressed
            self._allowance = self.burst if now - self._window_start >= 2 * self.interval else 0
        else:
            self._allowance = self.burst
        self._window_start = now
