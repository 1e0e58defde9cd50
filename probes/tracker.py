"""Fall/rise state machine per replica: round results in, status with reason and timestamp out. Pure."""
from __future__ import annotations

from dataclasses import dataclass, replace

from dnsd.routing.health import Status


@dataclass(frozen=True, slots=True)
class TrackerState:
    status: Status = Status.CHECKING
    reason: str = "not checked yet"
    since: float = 0.0  # when the status last changed
    successes: int = 0  # consecutive good rounds
    failures: int = 0  # consecutive failed rounds
    checked_at: float = 0.0  # when the last round finished


@dataclass(frozen=True, slots=True)
class Transition:
    before: Status
    after: Status
    reason: str
    at: float


def observe(state: TrackerState, ok: bool, reason: str, now: float, fall: int, rise: int
            ) -> tuple[TrackerState, Transition | None]:
    """Apply one round. Degraded after `fall` consecutive failures, Online after `rise` consecutive
    successes; a single result never flips a decided status unless the threshold is 1."""
    if ok:
        state = replace(state, successes=state.successes + 1, failures=0, checked_at=now)
        if state.status is not Status.ONLINE and state.successes >= rise:
            why = f"{state.successes} consecutive good checks (rise {rise}): {reason}"
            return _moved(state, Status.ONLINE, why, now)
        return state, None
    state = replace(state, failures=state.failures + 1, successes=0, checked_at=now)
    if state.status is not Status.DEGRADED and state.failures >= fall:
        why = f"{state.failures} consecutive failed checks (fall {fall}): {reason}"
        return _moved(state, Status.DEGRADED, why, now)
    if state.status is Status.DEGRADED:
        state = replace(state, reason=f"still failing: {reason}")  # keep the reason current, not the status
    return state, None


def _moved(state: TrackerState, status: Status, reason: str, now: float) -> tuple[TrackerState, Transition]:
    transition = Transition(state.status, status, reason, now)
    return replace(state, status=status, reason=reason, since=now), transition
