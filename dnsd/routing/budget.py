"""Worst-case failover and recovery times implied by the config: what the drills measure against."""
from __future__ import annotations

from dataclasses import dataclass

from dnsd.model import Config, ProbeSpec


@dataclass(frozen=True, slots=True)
class Budget:
    registry: str
    replica: str
    detect_down: float  # fault -> probes says Degraded
    detect_up: float  # repair -> probes says Online
    feed: float  # probes' verdict -> dnsd applies it
    client_cache: float  # dnsd answers anew -> every client re-resolves (traffic-manager TTL)

    @property
    def failover(self) -> float:
        return self.detect_down + self.feed + self.client_cache

    @property
    def recovery(self) -> float:
        return self.detect_up + self.feed + self.client_cache


def round_period(spec: ProbeSpec) -> float:
    return spec.interval * (1 + spec.jitter)


def budgets(config: Config) -> list[Budget]:
    """Worst cases: the fault lands just after a good round began, so the first failing round starts up
    to one period later; `fall` rounds, the last one taking its full timeout; dnsd polls once more; a
    resolver may hold the traffic-manager CNAME for its whole TTL."""
    feed = config.health.poll_interval if config.health.feeds else 0.0
    tm_ttl = config.zone.ttls.traffic_manager
    result = []
    for reg in config.registries:
        for rep in reg.replicas:
            if rep.probe is None:
                continue
            spec = rep.probe
            result.append(Budget(reg.name, rep.name,
                                 detect_down=spec.fall * round_period(spec) + spec.timeout,
                                 detect_up=spec.rise * round_period(spec) + spec.timeout,
                                 feed=feed, client_cache=tm_ttl))
    return result


def fail_open_after(config: Config) -> float:
    """Probes unreachable -> dnsd stops trusting its last verdicts -> clients re-resolve."""
    return config.health.ttl + config.health.poll_interval + config.zone.ttls.traffic_manager


def render(config: Config) -> str:
    rows = budgets(config)
    if not rows:
        return "no replica has a probe: nothing fails over"
    lines = [f"{'replica':<28} {'detect down':>11} {'detect up':>9} {'feed':>6} {'tm TTL':>6} "
             f"{'FAILOVER':>9} {'RECOVERY':>9}"]
    for b in rows:
        lines.append(f"{b.registry + '/' + b.replica:<28} {b.detect_down:>10.1f}s {b.detect_up:>8.1f}s "
                     f"{b.feed:>5.1f}s {b.client_cache:>5.0f}s {b.failover:>8.1f}s {b.recovery:>8.1f}s")
    lines.append("")
    lines.append("detect down = fall x interval x (1 + jitter) + timeout; detect up = rise x ... + timeout;")
    lines.append("feed = dnsd's poll interval; tm TTL = how long resolvers may keep the traffic-manager answer.")
    if config.health.feeds:
        lines.append(f"probes unreachable: dnsd fails open after {fail_open_after(config):.1f}s "
                     f"(health ttl {config.health.ttl:g}s + poll {config.health.poll_interval:g}s + tm TTL)")
    else:
        lines.append("warning: health.feeds is empty, so dnsd reads no probes and never fails over")
    return "\n".join(lines)
