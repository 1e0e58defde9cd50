"""Prometheus metrics of the probe service: check latency and results per target, status per replica."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dnsd.routing.health import Status

STATUS_VALUE = {Status.ONLINE: 1, Status.CHECKING: 0.5, Status.DEGRADED: 0}


class ProbeMetrics:
    """One registry per service instance (no module-level global state, tests can run several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.check_seconds = Histogram("geotm_probe_check_seconds", "Duration of one check",
                                       ["registry", "replica", "kind"], registry=self.registry,
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10))
        self.checks = Counter("geotm_probe_checks_total", "Checks run, by result",
                              ["registry", "replica", "kind", "result"], registry=self.registry)
        self.rounds = Counter("geotm_probe_rounds_total", "Probe rounds (all checks of a replica), by result",
                              ["registry", "replica", "result"], registry=self.registry)
        self.status = Gauge("geotm_probe_status", "1 online, 0.5 checking, 0 degraded",
                            ["registry", "replica"], registry=self.registry)
        self.webhook = Counter("geotm_probe_webhook_total", "Webhook deliveries, by outcome",
                               ["outcome"], registry=self.registry)

    def observe_check(self, target, check, result) -> None:
        self.check_seconds.labels(target.registry, target.replica, check.kind).observe(result.latency)
        self.checks.labels(target.registry, target.replica, check.kind, "ok" if result.ok else "fail").inc()

    def observe_round(self, target, result, state) -> None:
        self.rounds.labels(target.registry, target.replica, "ok" if result.ok else "fail").inc()
        self.status.labels(target.registry, target.replica).set(STATUS_VALUE[state.status])

    def render(self) -> bytes:
        return generate_latest(self.registry)
