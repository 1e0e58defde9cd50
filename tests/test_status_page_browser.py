"""The status page rendered by a real headless browser (Debian's chromium) from a real dnsd: the
public page (health only) and the details page behind the token (HTTP Basic, as a browser does it);
the screenshots are kept in test-artifacts/ (or $GEOTM_ARTIFACTS) for people to look at."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import urllib.request

import pytest

from tests import harness
from tests.dnstest import ROOT, isolated_example
from tests.tools import require_tool

ARTIFACTS = os.environ.get("GEOTM_ARTIFACTS", str(ROOT / "test-artifacts"))


def chromium() -> str:
    for name in ("chromium-browser", "google-chrome"):  # other names it goes by
        path = shutil.which(name)
        if path:
            return path
    return require_tool("chromium", "to render the status page in a real browser")


def browse(tmp_path, url: str, *extra: str) -> subprocess.CompletedProcess:
    # flags: headless as root, and nothing that phones home (this machine has no outside network)
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}", *extra, url]
    return subprocess.run(argv, capture_output=True, text=True, timeout=90)


def png_size(path: str) -> tuple[int, int]:
    with open(path, "rb") as handle:
        header = handle.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", header[16:24])


@pytest.mark.slow
def test_status_page_renders_in_chromium(tmp_path):
    chromium()
    config = isolated_example(tmp_path)
    with harness.dnsd(config) as dnsd:
        admin = f"http://127.0.0.1:{dnsd.admin_port}"
        request = urllib.request.Request(
            f"{admin}/v1/overrides", method="POST",
            data=json.dumps({"registry": "contoso", "replica": "westeurope", "kind": "drain",
                             "duration": "5m", "reason": "storage migration"}).encode(),
            headers={"Authorization": "Bearer test-admin-token", "Content-Type": "application/json",
                     "X-Geotm-Actor": "browser-test"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 201

        # without the token: health only (the drain shows as the replica's role, not who or why)
        dom = browse(tmp_path, f"{admin}/", "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        html = dom.stdout
        assert "<title>geotm status</title>" in html
        for replica in ("eastus", "westeurope", "southeastasia"):
            assert f"<b>{replica}</b>" in html
        assert "<td>drained</td>" in html
        assert "storage migration" not in html and "browser-test" not in html and str(config) not in html

        # the details page: the browser answers the Basic challenge with the token from the URL
        details = f"http://operator:test-admin-token@127.0.0.1:{dnsd.admin_port}/details"
        dom = browse(tmp_path, details, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        html = dom.stdout
        assert "storage migration" in html and "override set: drain contoso/westeurope" in html
        assert "<td>drained</td>" in html and str(config) in html

        os.makedirs(ARTIFACTS, exist_ok=True)
        for name, url in (("status-page.png", f"{admin}/"), ("status-page-details.png", details)):
            screenshot = os.path.join(ARTIFACTS, name)
            shot = browse(tmp_path, url, f"--screenshot={screenshot}", "--window-size=1280,900",
                          "--hide-scrollbars")
            assert shot.returncode == 0, shot.stderr[-2000:]
            assert png_size(screenshot) == (1280, 900)
            assert os.path.getsize(screenshot) > 20_000   # a rendered page, not a blank one
