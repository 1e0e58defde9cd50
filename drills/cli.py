"""`geotm drill [--short] [--aggressive] [--keep] [--scenario NAME ...]`: run the failover drills.

Exit status: 0 every scenario passed; 1 a scenario failed (over budget, a pull that should have
worked failed, an unexpected change); 3 the drill cannot run on this machine (not root, no network
namespaces, a missing Debian package): the reason is printed, nothing was changed.
"""
from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dnsd.routing.budget import render
from drills.compose import ComposeLab
from drills.dockerapi import DockerError
from drills.errors import LabError
from drills.labconfig import AGGRESSIVE, DEFAULT
from drills.local import LocalLab
from drills.scenarios import DAEMON, SCENARIOS, SHORT, TWO_PROBES
from drills.timeline import summary
from dnsd.common.cliutil import add_version, quiet_broken_pipe

EXIT_PASS, EXIT_FAIL, EXIT_CANNOT_RUN = 0, 1, 3
TOOLS = {"docker-registry": "docker-registry", "skopeo": "skopeo", "openssl": "openssl", "ip": "iproute2",
         "unshare": "util-linux", "nsenter": "util-linux", "setpriv": "util-linux"}
E2E_LIMIT = 10.0  # the aggressive settings must fail over end to end within this
RUN_LIMIT = 30 * 60  # a whole drill is stopped (and cleaned up) after this, whatever happens


def preflight() -> list[str]:
    """Why the drill cannot run here (empty: it can). Changes nothing except a probe namespace that is
    created and deleted at once."""
    reasons = []
    if sys.platform != "linux":
        return [f"the drill needs Linux network namespaces (this is {sys.platform})"]
    if os.geteuid() != 0:
        reasons.append("the drill needs root (network namespaces, tmpfs mounts, port 53)")
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        reasons.append(f"missing Debian packages: {' '.join(missing)} "
                       f"(apt-get install -y {' '.join(missing)})")
    else:
        try:
            pwd.getpwnam("docker-registry")
        except KeyError:
            reasons.append("user docker-registry missing (it comes with the docker-registry package)")
    if not reasons:
        name = f"gtdrill-{os.getpid()}"
        try:
            probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=10)
            if probe.returncode != 0:
                reasons.append(f"cannot create a network namespace: {probe.stderr.strip()}")
            else:
                check = subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                                       capture_output=True, text=True, timeout=10)
                if check.returncode != 0:
                    reasons.append(f"cannot use a network namespace: {check.stderr.strip()}")
        finally:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    return reasons


def compose_preflight(pull_daemon: str | None = None) -> list[str]:
    reasons = []
    if shutil.which("skopeo") is None:
        reasons.append("skopeo missing (the geotm client image installs it)")
    if not os.path.exists("/var/run/docker.sock"):
        reasons.append("/var/run/docker.sock is not mounted: the compose drill breaks replicas through the "
                       "Docker engine (see the client service in docker-compose.yml)")
    if pull_daemon and not os.path.exists(pull_daemon):
        reasons.append(f"--pull-daemon {pull_daemon}: no such socket (mount the daemon's socket into the client)")
    return reasons


def scenario_names(short: bool, compose: bool, daemon: bool) -> list[str]:
    """What a run without --scenario runs: SHORT or all; the compose stack has one probes instance;
    the docker daemon's scenario wherever a daemon pulls, short or not."""
    names = [name for name in (SHORT if short else SCENARIOS) if name not in DAEMON]
    if compose:
        names = [name for name in names if name not in TWO_PROBES]
    return names + (list(DAEMON) if daemon else [])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geotm", description="geotm tools")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    drill = sub.add_parser("drill", help="break real registry replicas and measure the failover a client sees",
                           description="Runs real registries, probes and dnsd in a network namespace of its "
                                       "own, breaks replicas and compares measured failover/recovery times "
                                       "with the budget from the config. Needs root.")
    drill.add_argument("--short", action="store_true", help=f"only the CI scenarios: {', '.join(SHORT)}")
    drill.add_argument("--aggressive", action="store_true",
                       help="interval 1s, timeout 0.8s, fall 3, rise 2, TTL 5s, poll 0.5s: fail over in < 10s")
    drill.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs) afterwards")
    drill.add_argument("--scenario", action="append", choices=list(SCENARIOS), metavar="NAME",
                       help=f"run only these (repeatable): {', '.join(SCENARIOS)}")
    drill.add_argument("--workdir", type=Path, help="where to put configs, certificates and logs (default: a "
                                                    "new directory under /tmp)")
    drill.add_argument("--check", action="store_true", help="only say whether the drill can run here")
    drill.add_argument("--compose", action="store_true",
                       help="run from the client container of docker-compose.yml against that stack "
                            "(faults through /var/run/docker.sock) instead of building a local lab")
    drill.add_argument("--pull-daemon", metavar="SOCKET", default=os.environ.get("GEOTM_PULL_DOCKER") or None,
                       help="with --compose: the socket of a docker daemon whose resolver is dnsd; it pulls "
                            f"too, and the {', '.join(DAEMON)} scenario runs (default: $GEOTM_PULL_DOCKER)")
    return parser


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)


@quiet_broken_pipe
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reasons = compose_preflight(args.pull_daemon) if args.compose else preflight()
    if reasons:
        print("geotm drill cannot run here:", file=sys.stderr)
        for reason in reasons:
            print(f"  - {reason}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    if args.check:
        print("geotm drill can run here")
        return EXIT_PASS
    return run_drill(args)


def run_drill(args) -> int:

    names = args.scenario or scenario_names(args.short, args.compose, bool(args.compose and args.pull_daemon))
    timing = AGGRESSIVE if args.aggressive else DEFAULT
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gtdrill-"))
    workdir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGALRM, _terminate)
    signal.alarm(RUN_LIMIT)
    say = lambda text: print(text, flush=True)  # noqa: E731
    started = time.monotonic()
    stack: ComposeLab | LocalLab
    if args.compose:
        stack = ComposeLab(workdir, say, daemon_socket=args.pull_daemon)
        if args.aggressive:
            say("note: --aggressive changes nothing in compose mode: timings come from the stack's config")
    else:
        stack = LocalLab(timing, workdir, say)
    timelines = []
    code = EXIT_FAIL
    try:
        if args.compose:
            say(f"geotm drill --compose: timings from {stack.config_path}; scenarios: {', '.join(names)}")
        else:
            say(f"geotm drill: {timing.name} timings (interval {timing.interval:g}s, timeout {timing.timeout:g}s, "
                f"fall {timing.fall}, rise {timing.rise}, traffic-manager TTL {timing.tm_ttl}s, "
                f"dnsd poll {timing.poll_interval:g}s, health ttl {timing.health_ttl:g}s); "
                f"scenarios: {', '.join(names)}")
        say(f"work directory {workdir}")
        try:
            lab = stack.setup()
        except (LabError, DockerError, OSError, RuntimeError, subprocess.SubprocessError) as err:
            say(f"lab setup failed: {err}")
            return EXIT_FAIL
        say(f"lab ready in {time.monotonic() - started:.1f}s; budget from {lab.config_path}:")
        say(render(lab.config))
        say("")
        for name in names:
            began = time.monotonic()
            timeline = SCENARIOS[name](lab)
            timeline.name = name
            if args.aggressive:
                _check_end_to_end(timeline)
            timelines.append(timeline)
            say(timeline.render())
            say(f"  ({name} took {time.monotonic() - began:.1f}s)")
            say("")
        say(summary(timelines))
        passed = all(t.passed for t in timelines)
        say(f"geotm drill {'PASSED' if passed else 'FAILED'}: {len(timelines)} scenarios in "
            f"{time.monotonic() - started:.0f}s")
        code = EXIT_PASS if passed else EXIT_FAIL
        return code
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        signal.alarm(0)
        stack.teardown()
        if args.keep or code != EXIT_PASS:
            say(f"kept {workdir} (configs, certificates, logs)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _check_end_to_end(timeline) -> None:
    for m in timeline.measurements:
        if m.name.startswith("failover: first pull") and m.measured is not None and m.measured >= E2E_LIMIT:
            timeline.problem(f"aggressive settings: end-to-end failover {m.measured:.2f}s, not under {E2E_LIMIT:g}s")


if __name__ == "__main__":
    sys.exit(main())
