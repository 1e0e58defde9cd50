"""What a reload changes: the config differences a reload reports, and the settings a running
process cannot change in place."""
from __future__ import annotations

from dnsd.model import Config


def forwarding_changed(old: Config, new: Config) -> bool:
    """Whether a reload needs a new forwarder: its section, or the EDNS size it advertises, changed."""
    return old.forward != new.forward or (new.forward is not None
                                          and old.server.edns_udp_size != new.server.edns_udp_size)


def describe_changes(old: Config, new: Config) -> list[str]:
    changes = []
    old_regs, new_regs = {r.name: r for r in old.registries}, {r.name: r for r in new.registries}
    changes += [f"registry {name} added" for name in new_regs.keys() - old_regs.keys()]
    changes += [f"registry {name} removed" for name in old_regs.keys() - new_regs.keys()]
    for name in sorted(old_regs.keys() & new_regs.keys()):
        a, b = old_regs[name], new_regs[name]
        reps_a, reps_b = {r.name for r in a.replicas}, {r.name for r in b.replicas}
        changes += [f"{name}: replica {r} added" for r in sorted(reps_b - reps_a)]
        changes += [f"{name}: replica {r} removed" for r in sorted(reps_a - reps_b)]
        for field in ("routing", "all_down", "regional_endpoints", "data_endpoints"):
            if getattr(a, field) != getattr(b, field):
                changes.append(f"{name}: {field} {getattr(a, field)} -> {getattr(b, field)}")
    old_views, new_views = {v.name for v in old.views}, {v.name for v in new.views}
    changes += [f"view {v} added" for v in sorted(new_views - old_views)]
    changes += [f"view {v} removed" for v in sorted(old_views - new_views)]
    if old.forward is None and new.forward is not None:
        changes.append("forwarding on")
    elif old.forward is not None and new.forward is None:
        changes.append("forwarding off: names outside the zone are REFUSED")
    elif forwarding_changed(old, new):
        changes.append("forward settings changed: a new forwarder, its cache empty")
    if old.zone != new.zone and not changes:
        changes.append("zone settings or records changed")
    return changes or (["no routing-relevant change"] if old.digest != new.digest else ["identical"])


_TCP_KEYS = ("tcp_idle_timeout", "tcp_idle_timeout_under_load", "tcp_max_connections", "tcp_max_connections_per_source",
             "tcp_source_prefix_v4", "tcp_source_prefix_v6", "fd_reserve")  # fixed when the listeners start


def needs_restart(old: Config, new: Config) -> list[str]:
    """Settings a running process cannot change in place (it keeps the old ones until restarted)."""
    result = []
    if old.server.listen != new.server.listen:
        result.append("server.listen")
    tcp = [key for key in _TCP_KEYS if getattr(old.server, key) != getattr(new.server, key)]
    if tcp:
        result.append("server." + "/".join(tcp))
    if old.server.rate_limit != new.server.rate_limit:
        result.append("server.rate_limit")
    if old.admin.listen != new.admin.listen or old.admin.token_file != new.admin.token_file:
        result.append("admin.listen/token_file")
    if old.health != new.health:
        result.append("health")
    if old.cluster != new.cluster:
        result.append("cluster")
    return result
