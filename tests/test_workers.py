"""`dnsd serve --workers 2`: both workers answer on one address, a drain set through worker 0's admin
API reaches the other, SIGHUP reaches every worker, a killed worker is restarted, SIGTERM stops all."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import urllib.request

import dns.message
import pytest

from tests import harness
from tests.dnstest import isolated_example, make_query


def global_answers(port: int, count: int) -> set[str]:
    """Ask from `count` different source ports: SO_REUSEPORT spreads them over the workers."""
    seen = set()
    for i in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            sock.sendto(make_query("contoso.azurecr.test", ecs="198.51.100.0/24", qid=i).to_wire(),
                        ("127.0.0.1", port))
            seen.add(dns.message.from_wire(sock.recv(4096)).answer[-1][0].address)
    return seen


def worker_pids(log: str) -> dict[int, int]:
    pids = {}
    for line in log.splitlines():
        if '"worker_started"' in line:
            event = json.loads(line[line.index("{"):])
            pids[event["worker"]] = event["pid"]
    return pids


@pytest.mark.slow
def test_two_workers(tmp_path):
    config = isolated_example(tmp_path)
    with harness.dnsd(config, extra_args=["--workers", "2", "--log-format", "json"]) as supervisor:
        harness.wait_until(lambda: len(worker_pids(supervisor.log_text())) == 2, 10, "both workers started")
        pids = worker_pids(supervisor.log_text())
        assert set(pids) == {0, 1}
        assert global_answers(supervisor.port, 40) == {"127.0.0.12"}

        request = urllib.request.Request(
            f"http://127.0.0.1:{supervisor.admin_port}/v1/overrides", method="POST",
            data=json.dumps({"registry": "contoso", "replica": "westeurope", "kind": "drain"}).encode(),
            headers={"Authorization": "Bearer test-admin-token", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 201
        # followers re-read the override file each second: every worker drains it within a few
        harness.wait_until(lambda: global_answers(supervisor.port, 40) == {"127.0.0.11"}, 5,
                           "every worker drained westeurope")

        supervisor.send_signal(signal.SIGHUP)
        harness.wait_until(lambda: supervisor.log_text().count('"config_reloaded"') >= 2, 5, "both workers reloaded")
        assert supervisor.log_text().count('"config_reloaded"') == 2

        os.kill(pids[1], signal.SIGKILL)
        assert supervisor.wait_for_log('"worker_exited"', 5)
        harness.wait_until(lambda: len(re.findall('"worker_started"', supervisor.log_text())) >= 3, 10,
                           "the killed worker restarted")
        assert len(re.findall('"worker_started"', supervisor.log_text())) == 3
        harness.wait_until(lambda: global_answers(supervisor.port, 20) == {"127.0.0.11"}, 5,
                           "the new worker read the overrides")

        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(10) == 0
