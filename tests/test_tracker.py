"""The fall/rise tracker as tables: a sequence of round results -> the status after each round."""
from __future__ import annotations

import pytest

from dnsd.routing.health import Status
from probes.tracker import TrackerState, observe

C, ON, DOWN = Status.CHECKING, Status.ONLINE, Status.DEGRADED

# (name, fall, rise, results as a string of '+' good / '-' failed, expected status after each round)
TABLE = [
    ("first successes reach rise", 3, 2, "++", [C, ON]),
    ("first failures reach fall", 3, 2, "---", [C, C, DOWN]),
    ("one blip never flips online", 3, 2, "++-++-+", [C, ON, ON, ON, ON, ON, ON]),
    ("two blips in a row with fall 3", 3, 2, "++--+", [C, ON, ON, ON, ON]),
    ("fall consecutive failures degrade", 3, 2, "++---", [C, ON, ON, ON, DOWN]),
    ("a success in between resets the count", 3, 2, "++--+--", [C, ON, ON, ON, ON, ON, ON]),
    ("one success does not restore with rise 2", 3, 2, "---+", [C, C, DOWN, DOWN]),
    ("rise consecutive successes restore", 3, 2, "---++", [C, C, DOWN, DOWN, ON]),
    ("a failure in between resets the rise count", 3, 2, "---+-++", [C, C, DOWN, DOWN, DOWN, DOWN, ON]),
    ("separate thresholds: fall 1, rise 3", 1, 3, "-++-+++", [DOWN, DOWN, DOWN, DOWN, DOWN, DOWN, ON]),
    ("fall 1 flips on the first failure", 1, 1, "+-+", [ON, DOWN, ON]),
]


@pytest.mark.parametrize("fall,rise,results,expected", [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_transitions(fall, rise, results, expected):
    state = TrackerState()
    seen = []
    for step, symbol in enumerate(results):
        state, _ = observe(state, symbol == "+", "HTTP 200" if symbol == "+" else "HTTP 503", float(step), fall, rise)
        seen.append(state.status)
    assert seen == expected


def test_each_transition_has_reason_and_timestamp():
    state = TrackerState()
    transitions = []
    for at, ok, why in [(1, True, "HTTP 200"), (2, True, "HTTP 200"), (3, False, "timeout after 2s"),
                        (4, False, "connection refused"), (5, False, "HTTP 503")]:
        state, moved = observe(state, ok, why, float(at), 3, 2)
        if moved:
            transitions.append(moved)
    assert [(t.before, t.after, t.at) for t in transitions] == [(C, ON, 2.0), (ON, DOWN, 5.0)]
    assert transitions[1].reason == "3 consecutive failed checks (fall 3): HTTP 503"
    assert state.since == 5.0 and state.reason == transitions[1].reason


def test_degraded_reason_follows_the_latest_failure():
    state = TrackerState()
    for at in range(3):
        state, _ = observe(state, False, "HTTP 503", float(at), 3, 2)
    state, moved = observe(state, False, "timeout after 2s", 3.0, 3, 2)
    assert moved is None and state.status is DOWN and state.reason == "still failing: timeout after 2s"
    assert state.since == 2.0
