"""Per-query log events (query_failed, query_refused, query_malformed) are rate limited: the first few
in full, then one summary per interval with the count (issue 9, item 6). The helper on a fake clock,
and a real dnsd process under 10,000 bad queries of each kind, whose log output stays small."""
from __future__ import annotations

import json
import os
import signal
import socket
import sys

import dns.message
import pytest

from dnsd.common.logs import RateLimitedLog
from tests import harness
from tests.dnstest import isolated_example


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Capture:
    def __init__(self):
        self.events: list[tuple] = []

    def info(self, event, **fields):
        self.events.append((event, fields.get("count", fields.get("n"))))


# (case, [(time offset, "event" | "flush" | "stop")], expected log: [(event, count or n)])
TIMELINES = [
    ("a few events: all in full", [(0, "e"), (1, "e"), (2, "e")],
     [("query_x", 0), ("query_x", 1), ("query_x", 2)]),
    ("a flood: 3 in full, then one summary per interval",
     [(0.001 * i, "e") for i in range(1000)] + [(10.5, "e"), (15, "e"), (21, "flush")],
     [("query_x", 0), ("query_x", 1), ("query_x", 2), ("query_x_suppressed", 997), ("query_x_suppressed", 2)]),
    ("the flood stops: full events again after a quiet interval",
     [(0.1 * i, "e") for i in range(5)] + [(11, "flush"), (25, "e")],
     [("query_x", 0), ("query_x", 1), ("query_x", 2), ("query_x_suppressed", 2), ("query_x", 6)]),
    ("a long quiet gap refills at once", [(0.1 * i, "e") for i in range(5)] + [(3600, "e")],
     [("query_x", 0), ("query_x", 1), ("query_x", 2), ("query_x_suppressed", 2), ("query_x", 5)]),
    ("stop: the pending count is reported", [(0.1 * i, "e") for i in range(10)] + [(2, "stop")],
     [("query_x", 0), ("query_x", 1), ("query_x", 2), ("query_x_suppressed", 7)]),
    ("nothing suppressed: no summary", [(0, "e"), (30, "flush"), (31, "stop")], [("query_x", 0)]),
]


@pytest.mark.parametrize("steps,expected", [t[1:] for t in TIMELINES], ids=[t[0] for t in TIMELINES])
def test_rate_limited_log_timeline(steps, expected):
    clock, capture = Clock(), Capture()
    limiter = RateLimitedLog("query_x", level="info", burst=3, interval=10.0, logger=capture, clock=clock)
    start = clock.now
    for n, (offset, what) in enumerate(steps):
        clock.now = start + offset
        if what == "e":
            limiter(n=n)
        else:
            limiter.flush(force=what == "stop")
    assert capture.events == expected


# A real dnsd with one injected fault (a name whose answer raises), so query_failed can be flooded
# through the real process and its real log output; everything else is the unmodified server.
FAULTY_DNSD = """
import sys
from dnsd.serving import runtime
answer = runtime.QueryEngine.answer
def failing(self, query, client_ip, over_tcp):
    if query.qname_key.startswith(b"\\x04boom"):
        raise RuntimeError("injected fault for the log-volume test")
    return answer(self, query, client_ip, over_tcp)
runtime.QueryEngine.answer = failing
from dnsd.cli import main
sys.exit(main(sys.argv[1:]))
"""

FLOOD = 10_000


def bad_queries(kind: str):
    for i in range(FLOOD):
        if kind == "query_failed":
            yield dns.message.make_query("boom.azurecr.test", "A", id=i % 65536).to_wire()
        elif kind == "query_refused":  # distinct names, so no reply comes from the packet cache
            yield dns.message.make_query(f"n{i}.example.com", "A", id=i % 65536).to_wire()
        else:  # trailing garbage after the question: FORMERR
            yield dns.message.make_query(f"m{i}.azurecr.test", "A", id=i % 65536).to_wire() + b"\x00"


def flood(port: int, kind: str) -> int:
    """Send FLOOD queries, 50 in flight at a time; returns how many were answered."""
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        window = []
        for wire in bad_queries(kind):
            sock.sendto(wire, ("127.0.0.1", port))
            window.append(wire)
            if len(window) == 50:
                for _ in window:
                    try:
                        sock.recv(4096)
                        answered += 1
                    except TimeoutError:
                        break
                window = []
    return answered


@pytest.fixture(scope="module")
def faulty_dnsd(tmp_path_factory):
    config = isolated_example(tmp_path_factory.mktemp("logs"))
    port = harness.free_port()
    argv = [sys.executable, "-c", FAULTY_DNSD, "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}",
            "--admin-listen", "off", "--log-format", "json"]
    pythonpath = os.pathsep.join(p for p in (str(harness.REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    process = harness.ServiceProcess(argv, ready=lambda: harness.udp_answers("127.0.0.1", port), name="dnsd",
                                     env={"PYTHONPATH": pythonpath}, cwd=harness.REPO_ROOT)
    process.port = port
    with process:
        yield process


@pytest.mark.slow
def test_ten_thousand_bad_queries_of_each_kind_write_a_bounded_log(faulty_dnsd):
    before = len(faulty_dnsd.log_text().encode())
    for kind in ("query_failed", "query_refused", "query_malformed"):
        assert flood(faulty_dnsd.port, kind) == FLOOD
    faulty_dnsd.send_signal(signal.SIGTERM)
    assert faulty_dnsd.wait(10) == 0
    text = faulty_dnsd.log_text()
    written = len(text.encode()) - before
    # 5 events in full per kind (a query_failed one carries its traceback, ~1.5 KB) and a summary
    # line per 10 s: without the limit query_failed alone wrote ~1 KB per query (10 MB here)
    assert written < 40_000, written
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    for kind in ("query_failed", "query_refused", "query_malformed"):
        full = [e for e in events if e["event"] == kind]
        summaries = [e for e in events if e["event"] == f"{kind}_suppressed"]
        assert len(full) == 5 and summaries, kind
        assert len(full) + sum(e["count"] for e in summaries) == FLOOD, kind  # every one counted
    failed = [e for e in events if e["event"] == "query_failed"]
    assert "injected fault" in failed[0]["exception"] and failed[0]["qname"] == "boom.azurecr.test"
    assert [e["reason"] for e in events if e["event"] == "query_refused"][0] == "not in zone"


@pytest.mark.slow
def test_the_server_still_answers_after_the_flood(tmp_path):
    """Rate limiting drops log lines, never answers."""
    with harness.dnsd(isolated_example(tmp_path)) as process:
        assert flood(process.port, "query_refused") == FLOOD
        reply = dns.message.from_wire(_ask(process.port, dns.message.make_query("contoso.azurecr.test", "A")))
        assert len(reply.answer) == 4


def _ask(port: int, query: dns.message.Message) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(query.to_wire(), ("127.0.0.1", port))
        return sock.recv(4096)

