"""Tracker states on disk, so a restarted probes does not forget a degraded replica. Atomic writes."""
from __future__ import annotations

import json
from pathlib import Path

import structlog

from dnsd.common.files import write_json_atomically
from dnsd.routing.health import Status
from probes.tracker import TrackerState

log = structlog.get_logger(__name__)


def save_states(path: str, states: dict[tuple[str, str], TrackerState]) -> None:
    data = {"format": "geotm-probe-state/1",
            "endpoints": [{"registry": reg, "replica": rep, "status": s.status.value, "reason": s.reason,
                           "since": s.since, "checked_at": s.checked_at}
                          for (reg, rep), s in sorted(states.items())]}
    write_json_atomically(path, data)


def load_states(path: str, now: float, max_age: float) -> dict[tuple[str, str], TrackerState]:
    """Decided states no older than max_age. A missing or broken file loads as nothing, with a log."""
    try:
        data = json.loads(Path(path).read_text())
        entries = data["endpoints"] if data.get("format") == "geotm-probe-state/1" else None
        if entries is None:
            raise ValueError("unknown format")
        states = {}
        for entry in entries:
            status = Status(entry["status"])
            checked_at = float(entry["checked_at"])
            if status is Status.CHECKING or now - checked_at > max_age:
                continue
            states[(entry["registry"], entry["replica"])] = TrackerState(
                status=status, reason=f"restored: {entry['reason']}", since=float(entry["since"]),
                checked_at=checked_at)
        return states
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("probe_state_unreadable", path=path, error=str(err))
        return {}
