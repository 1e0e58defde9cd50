"""The one tool policy of the test suite: a test that needs a program from the machine (dig, knotd,
chromium...) or a capability (network namespaces) skips with the reason locally, and fails under
GEOTM_REQUIRE_TOOLS=1 (.ci/run sets it and installs every tool, so nothing is skipped there unseen)."""
from __future__ import annotations

import os
import shutil

import pytest

# Debian keeps daemons (knotd) in sbin, which is not on every user's PATH
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def required() -> bool:
    return os.environ.get("GEOTM_REQUIRE_TOOLS") == "1"


def unavailable(reason: str) -> None:
    """Skip the test for `reason`, or fail it when every tool is required (CI)."""
    if required():
        pytest.fail(f"{reason} (GEOTM_REQUIRE_TOOLS=1: .ci/run must provide it)", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str, why: str, package: str | None = None) -> str:
    """The path of program `name`, which the test needs `why`; `package` is the Debian package that
    ships it (default: the same name). Skips or fails, as unavailable(), when it is not installed."""
    path = shutil.which(name) or shutil.which(name, path=_SBIN)
    if path is None:
        unavailable(f"{name} not installed, needed {why} "
                    f"(apt-get install -y --no-install-recommends {package or name})")
    return path
