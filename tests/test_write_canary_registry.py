"""The oci write canary against the real CNCF registry (Debian's docker-registry, filesystem storage):
repeated rounds leave its storage as it was (one canary blob, re-uploaded), and the round still fails
when the storage is full or read-only although that blob is already there.

The storage faults need root: the registry runs in a private mount namespace (unshare) on a 1 MiB
tmpfs of its own, so nothing is mounted on the host and the mount goes away with the registry.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from dnsd.model import ProbeCheck
from probes.checks import CANARY_DIGEST, ProbeResult, make_session, run_check
from tests import harness
from tests.tools import require_tool, unavailable



def registry_program() -> str:
    return require_tool("docker-registry", "for the real CNCF registry")
HOST = "127.0.0.1"
ROUNDS = 100
TMPFS_SIZE = "1m"


def registry_config(path: Path, storage: Path, port: int) -> Path:
    path.write_text(yaml.safe_dump({
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        # deletes on (the canary unlinks its blob); no upload purging: every leftover would show
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True},
                    "maintenance": {"uploadpurging": {"enabled": False}}},
        "http": {"addr": f"{HOST}:{port}", "secret": "geotm-canary-test"},
    }))
    return path


def v2_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/v2/", timeout=0.5) as response:
            return response.status == 200
    except OSError:
        return False


def rounds(port: int, count: int) -> list[ProbeResult]:
    check = ProbeCheck(kind="oci", address=HOST, port=port, scheme="http", write_canary="geotm/canary")

    async def run() -> list[ProbeResult]:
        async with make_session() as session:
            return [await run_check(check, session, 2.0) for _ in range(count)]
    return asyncio.run(run())


def storage_listing(root: Path) -> dict[str, int]:
    """Every file and directory under the storage root: relative path -> size (-1 for directories)."""
    listing = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            listing[os.path.relpath(os.path.join(dirpath, name), root)] = -1
        for name in filenames:
            full = os.path.join(dirpath, name)
            listing[os.path.relpath(full, root)] = os.path.getsize(full)
    return listing


def blob_data(root: Path, digest: str) -> Path:
    """Where CNCF distribution keeps a blob's bytes (filesystem driver layout)."""
    hexdigest = digest.removeprefix("sha256:")
    return root / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


@pytest.mark.slow
def test_rounds_leave_the_storage_as_it_was(tmp_path):
    storage = tmp_path / "storage"
    port = harness.free_port()
    config = registry_config(tmp_path / "registry.yml", storage, port)
    with harness.ServiceProcess([registry_program(), "serve", str(config)], ready=lambda: v2_ok(port), name="registry"):
        first = rounds(port, 1)
        assert first[0].ok and "canary write ok" in first[0].reason, first
        before = storage_listing(storage)
        results = rounds(port, ROUNDS)
        after = storage_listing(storage)
    assert [r for r in results if not r.ok] == []
    assert after == before, (f"{ROUNDS} rounds changed the storage: "
                             f"{len(after) - len(before)} more entries, "
                             f"{sum(after.values()) - sum(before.values())} more bytes; new: "
                             f"{sorted(set(after) - set(before))[:3]}")
    assert blob_data(storage, CANARY_DIGEST).is_file()  # the one canary blob


def fill(ns, mount: Path, free_pages: int) -> None:
    ns("dd", "if=/dev/zero", f"of={mount / 'filler'}", "bs=64k", "count=64")  # ENOSPC at 1 MiB, by design
    if free_pages:
        size = int(ns("stat", "-c", "%s", str(mount / "filler")).stdout)  # the tmpfs is in the registry's namespace
        ns("truncate", "-s", str(size - free_pages * 4096), str(mount / "filler"))


FAULTS = [
    # id, inject, repair, what the round says
    ("full", lambda ns, mount: fill(ns, mount, 0), lambda ns, mount: ns("rm", str(mount / "filler")),
     "write canary: POST returned 500"),
    # room for the upload session's first file, not for the canary's bytes
    ("nearly-full", lambda ns, mount: fill(ns, mount, 1), lambda ns, mount: ns("rm", str(mount / "filler")),
     "write canary: PUT returned"),
    ("read-only", lambda ns, mount: ns("mount", "-o", "remount,ro", str(mount)),
     lambda ns, mount: ns("mount", "-o", "remount,rw", str(mount)), "write canary: POST returned 500"),
]


@pytest.mark.parametrize("inject,repair,reason", [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_full_or_read_only_storage_fails_the_round(tmp_path, inject, repair, reason):
    if os.geteuid() != 0:
        unavailable("needs root (a tmpfs in a private mount namespace)")
    for tool in ("unshare", "nsenter"):
        require_tool(tool, "for a tmpfs in a private mount namespace", package="util-linux")
    mount = tmp_path / "storage"
    mount.mkdir()
    storage = mount / "data"
    port = harness.free_port()
    config = registry_config(tmp_path / "registry.yml", storage, port)
    script = (f"mount -t tmpfs -o size={TMPFS_SIZE},mode=0755 geotm-canary-test {mount} && mkdir {storage} && "
              f"exec {registry_program()} serve {config}")
    registry = harness.ServiceProcess(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
                                      ready=lambda: v2_ok(port), name="registry")
    with registry:
        def ns(*argv: str) -> subprocess.CompletedProcess:
            """A command in the registry's mount namespace (where the tmpfs is)."""
            return subprocess.run(["nsenter", f"--mount=/proc/{registry.pid}/ns/mnt", "--", *argv],
                                  capture_output=True, text=True, timeout=10)

        assert all(r.ok for r in rounds(port, 3))
        # the canary's digest is already stored: the round cannot pass on "that blob exists"
        assert ns("test", "-f", str(blob_data(storage, CANARY_DIGEST))).returncode == 0
        inject(ns, mount)
        try:
            failed = rounds(port, 2)
            assert v2_ok(port)  # reads still work: only the write canary sees the fault
        finally:
            repair(ns, mount)
        assert all(not r.ok and r.reason.startswith(reason) for r in failed), failed
        assert all(r.ok for r in rounds(port, 2))  # repaired: the next rounds pass again
