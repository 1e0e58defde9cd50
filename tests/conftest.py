"""The fast/slow split: tests marked `slow` (the real benchmark, the real drill, long real-process
runs) are left out unless asked for with --slow or GEOTM_SLOW=1, an explicit -m, or by naming the
test itself. .ci/run runs both parts. And the `udp_io` fixture: a test asking for it runs once per
UDP listener (batched through the _fastudp extension, and asyncio's)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from dnsd.protocol.udp import BATCH_ENV, batched_io_unavailable


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the tests marked slow (same as GEOTM_SLOW=1)")


def _named(config: pytest.Config) -> list[str]:
    """Node ids given on the command line (path::name), relative to the root like item.nodeid."""
    named = []
    for arg in config.args:
        if "::" not in arg:
            continue
        path, _, rest = arg.partition("::")
        try:
            path = Path(path).resolve().relative_to(config.rootpath).as_posix()
        except ValueError:
            pass
        named.append(f"{path}::{rest}")
    return named


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow") or os.environ.get("GEOTM_SLOW") == "1" or config.getoption("markexpr"):
        return
    named = _named(config)
    kept, slow = [], []
    for item in items:
        if item.get_closest_marker("slow") and not any(item.nodeid.startswith(n) for n in named):
            slow.append(item)
        else:
            kept.append(item)
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = kept


def pytest_report_header(config: pytest.Config) -> str:
    if config.getoption("--slow") or os.environ.get("GEOTM_SLOW") == "1":
        return "geotm: fast and slow tests"
    if config.getoption("markexpr"):
        return f"geotm: tests selected by -m {config.getoption('markexpr')!r}"
    return "geotm: fast tests only (slow ones deselected: ./scripts/test --slow or GEOTM_SLOW=1 runs them)"


@pytest.fixture(params=["batched", "asyncio"])
def udp_io(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The UDP listener DnsServer.start picks in this test (and in the dnsd it starts): "batched" (skipped
    where the extension cannot be used: tests/test_fastudp.py says whether it should be) or "asyncio"."""
    if request.param == "batched":
        monkeypatch.delenv(BATCH_ENV, raising=False)
        unavailable = batched_io_unavailable()
        if unavailable is not None:
            pytest.skip(f"batched UDP I/O unavailable: {unavailable}")
    else:
        monkeypatch.setenv(BATCH_ENV, "0")
    return request.param
