"""drills.engine and drills.dockerapi against a real dockerd (root, docker.io): an engine of our own
in its own network namespace, a container made from a tiny image that borrows the host's /usr, the
Engine API calls the compose drill makes (exec, pause, kill, start, logs, health), and a stop that
leaves nothing behind even when dockerd was killed first (its container still running)."""
from __future__ import annotations

import io
import os
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

from drills import engine
from drills.composerun import Lock, cache_dir, docker_cli
from drills.dockerapi import Docker, DockerError
from drills.observe import wait_for
from tests.tools import require_tool, unavailable

pytestmark = pytest.mark.slow
IMAGE = "geotm-test-usr:1"
USR_LINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}


def usr_image_tar() -> bytes:
    """An image of nothing but the merged-/usr symlinks and root's passwd line: with the host's /usr
    mounted read-only it runs the host's programs (Debian 12 is merged-/usr)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("usr", "etc", "tmp", "proc", "sys", "dev"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, content in (("etc/passwd", b"root:x:0:0:root:/:/bin/sh\n"), ("etc/group", b"root:x:0:\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
        for name, target in USR_LINKS.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def own_engine(tmp_path_factory):
    if os.geteuid() != 0:
        unavailable("a Docker engine of our own needs root")
    for tool, package in (("dockerd", "docker.io"), ("iptables", "iptables"), ("nsenter", "util-linux")):
        require_tool(tool, "for a Docker engine of the tests' own", package)
    if not all(Path("/").joinpath(name).is_symlink() for name in ("bin", "lib")):
        unavailable("the test image borrows the host's /usr: needs a merged-/usr system (Debian 12)")
    lock = Lock(cache_dir() / "compose-drill.lock")
    if not lock.acquire(print, limit=600):
        pytest.fail("a compose drill held the engine lock for 10 minutes")
    root = tmp_path_factory.mktemp("engine")
    forwarding_before = engine.IP_FORWARD.read_text()
    started = engine.Engine(root, root / "data")
    try:
        started.start()
        yield started
    finally:
        forced = started.stop()
        lock.release()
        print("engine stop:", forced)
        assert engine.IP_FORWARD.read_text() == forwarding_before


@pytest.fixture(scope="module")
def api(own_engine) -> Docker:
    docker = Docker(str(own_engine.socket), timeout=60)
    argv = [docker_cli() or "docker", "-H", f"unix://{own_engine.socket}", "import", "-", IMAGE]
    imported = subprocess.run(argv, input=usr_image_tar(), capture_output=True, timeout=60)
    assert imported.returncode == 0, imported.stderr
    return docker


def run_container(api: Docker, name: str, *argv: str, health: list[str] | None = None) -> str:
    body = {"Image": IMAGE, "Cmd": list(argv), "HostConfig": {"Binds": ["/usr:/usr:ro"]}}
    if health:
        body["Healthcheck"] = {"Test": ["CMD", *health], "Interval": 500_000_000, "Retries": 1,
                               "StartPeriod": 0, "Timeout": 2_000_000_000}
    cid = api.request("POST", f"/containers/create?name={name}", body)["Id"]
    api.start(cid)
    return cid


def test_the_engine_is_ours(own_engine, api):
    info = api.request("GET", "/info")
    assert info["Driver"] == engine.storage_driver()
    assert info["DockerRootDir"] == str(own_engine.dockerd.data_root)
    assert info["CgroupDriver"] == "cgroupfs"
    assert (engine.RUN_NETNS / own_engine.name).exists()
    rules = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    assert f"{engine.COMMENT} {own_engine.name}" in rules
    # the engine's bridge is in its namespace, not on the host
    assert "docker0" not in subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout


def test_the_calls_the_compose_drill_makes(api):
    cid = run_container(api, "geotm-test-calls", "/bin/sh", "-c", "echo started; exec sleep 600",
                        health=["/bin/test", "-e", "/tmp/healthy"])
    assert wait_for(lambda: api.state(cid).get("Running"), 20)
    assert api.health(cid) in ("starting", "unhealthy")
    code, output = api.exec(cid, ["/bin/sh", "-c", "touch /tmp/healthy && echo made"])
    assert (code, output.strip()) == (0, "made")
    assert wait_for(lambda: api.health(cid) == "healthy", 20)
    assert api.exec(cid, ["/bin/false"])[0] == 1

    lines: list[str] = []
    stop = threading.Event()
    follower = threading.Thread(target=api.follow_logs, args=(cid, lambda line, _at: lines.append(line), stop),
                                daemon=True)
    follower.start()
    api.exec(cid, ["/bin/sh", "-c", "echo from-exec > /proc/1/fd/1"])
    assert wait_for(lambda: any("from-exec" in line for line in lines), 15), lines
    stop.set()

    api.pause(cid)
    assert api.state(cid)["Paused"]
    api.unpause(cid)
    assert not api.state(cid)["Paused"]
    api.kill(cid)
    assert wait_for(lambda: not api.state(cid)["Running"], 10)
    api.start(cid)
    assert wait_for(lambda: api.state(cid)["Running"], 10)
    with pytest.raises(DockerError) as refused:
        api.inspect("geotm-test-no-such-container")
    assert refused.value.status == 404
    api.request("DELETE", f"/containers/{cid}?force=1")


def test_a_killed_engine_leaves_nothing_behind(own_engine, api):
    """dockerd SIGKILLed with a container running (a drill killed hard): stop() still ends the
    container's processes (they are in the engine's cgroup), the namespace, the link and the rules."""
    cid = run_container(api, "geotm-test-orphan", "/bin/sleep", "600")
    pid = api.inspect(cid)["State"]["Pid"]
    assert pid > 0
    own_engine.dockerd.process.kill()
    own_engine.dockerd.process.wait(10)
    time.sleep(0.5)
    assert Path(f"/proc/{pid}").exists()       # the container outlived its engine
    forced = own_engine.stop()
    assert any("container processes killed" in item for item in forced), forced
    assert wait_for(lambda: not Path(f"/proc/{pid}").exists(), 10)
    assert not (engine.RUN_NETNS / own_engine.name).exists()
    assert engine.pids_mentioning(str(own_engine.root) + "/") == []
    assert not engine._cgroup_dirs(own_engine.name)
    for table in ("nat", "filter"):
        rules = subprocess.run(["iptables", "-w", "-t", table, "-S"], capture_output=True, text=True).stdout
        assert own_engine.name not in rules
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert own_engine.host_link not in links
    assert not [d for d in own_engine.made_dirs if d.exists()]   # /run/docker, /run/containerd if ours


def test_what_a_killed_run_left_is_removed_by_the_next(own_engine):
    """A namespace and a rule named after an engine whose process is gone (a run killed with -9)."""
    dead = next(pid for pid in range(4_000_000, 3_000_000, -1) if not Path(f"/proc/{pid}").exists())
    name = f"{engine.PREFIX}{dead}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    rule = ["FORWARD", "-i", f"gte{dead}h"[:15], "-j", "ACCEPT", "-m", "comment", "--comment",
            f"{engine.COMMENT} {name}"]
    subprocess.run(["iptables", "-w", "-A", *rule], check=True)
    try:
        assert name in engine.remove_stale()
        assert not (engine.RUN_NETNS / name).exists()
        assert name not in subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["iptables", "-w", "-D", *rule], capture_output=True)

