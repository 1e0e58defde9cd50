"""scripts/compose-drill: the compose drill for real, from nothing back to nothing. A Docker engine of
its own (drills.engine) unless DOCKER_HOST names one; a Debian base image made with debootstrap
(its tarball cached) unless --base names one; the Dockerfile's images built on it; the stack up and
healthy; a container started with `--dns <dnsd>` resolving the registry's names and an outside name
(forwarded to the stack's upstream); a docker daemon pulling through dnsd; the drill run in the
client container (`docker compose run --rm client drill --compose ...`); then everything torn down
whatever happened:
containers, networks, volumes, the daemons, their namespace, bridges and rules. Built images stay
only in a data root kept with --keep-images.

Exit status: the drill's (0 passed, 1 failed), 3 when it cannot run here (the reason is printed).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from drills.dockerapi import Docker, DockerError
from drills.engine import RUN_NETNS, Engine, EngineError, PullDaemon, pids_mentioning
from drills.labconfig import BY_ADDRESS, DNS_ADDRESS, GLOBAL_NAME, REPLICA, REPLICAS
from drills.observe import wait_for
from drills.proc import REPOSITORY_ROOT

EXIT_PASS, EXIT_FAIL, EXIT_CANNOT_RUN = 0, 1, 3
PROJECT = "geotm-drill"
NETWORK = f"{PROJECT}_drill"         # compose names the file's `drill` network after the project
PKI_VOLUME = f"{PROJECT}_pki"
BASE_IMAGE = "geotm-base:bookworm"
IMAGES = {"geotm": "geotm:local", "client": "geotm-client:local", "registry": "geotm-registry:local"}
SERVICES = ("eastus", "westeurope", "southeastasia", "probes", "upstream", "dnsd")  # each has a health check
PULLHOST = f"{PROJECT}-pullhost"     # the container whose network namespace the pulling daemon uses
PULLHOST_ADDRESS = "10.77.0.60"      # on the drill network, outside the addresses compose gives out first
PULL_SOCKET = "/run/geotm/pull.sock"  # where the client container sees the pulling daemon
OUTSIDE_NAME, OUTSIDE_ADDRESS = "www.example.test", "192.0.2.80"  # config/compose-upstream.yaml's
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
SUITE = "bookworm"
BASE_MAX_AGE = 7 * 24 * 3600         # the cached base is made again after a week (security updates)
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")
HEALTH_LIMIT = 180.0
RUN_LIMIT = 45 * 60                  # the whole run is stopped (and torn down) after this
LOCK_WAIT = 20 * 60                  # one compose drill per machine: fixed names and addresses
SUMMARY_LINE = re.compile(r"^  (PASS|FAIL)  \S")  # drills.timeline.summary: one line per scenario
PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


def cache_dir() -> Path:
    return Path(os.environ.get("GEOTM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "geotm")


def docker_cli() -> str | None:
    """Debian's docker CLI before any other on PATH (its compose plugin, if any, matches its engine)."""
    return "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else shutil.which("docker")


def compose_cli(docker: str | None) -> list[str] | None:
    """`docker compose` (v2) when the CLI has it, else docker-compose (1.29 on Debian 12)."""
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return [docker, "compose"]
    found = shutil.which("docker-compose")
    return [found] if found else None


def extra_ca() -> str:
    """The host's extra CA certificates (a TLS-inspecting proxy's, say), for pip during the build."""
    if not EXTRA_CA_DIR.is_dir():
        return ""
    return "".join(p.read_text(errors="replace").strip() + "\n" for p in sorted(EXTRA_CA_DIR.rglob("*.crt")))


def build_args(base: str) -> list[str]:
    """--build-arg pairs: the base image, the extra CAs and a PyPI mirror or proxies when the host has them."""
    values = {"BASE": base, "EXTRA_CA": extra_ca(), "PIP_INDEX_URL": os.environ.get("PIP_INDEX_URL", "")}
    values.update({name: os.environ[name] for name in PROXY_VARIABLES if os.environ.get(name)})
    args = []
    for name, value in values.items():
        if value or name == "BASE":
            args += ["--build-arg", f"{name}={value}"]
    return args


def sources_list(mirror: str, security: str) -> str:
    return (f"deb {mirror} {SUITE} main\ndeb {mirror} {SUITE}-updates main\n"
            f"deb {security} {SUITE}-security main\n")


def trusted_hosts() -> list[str]:
    """The names the pulling daemon trusts the drill CA for (certs.d): the global name and every
    replica's regional name."""
    return [GLOBAL_NAME] + [r.regional for r in REPLICAS]


def drill_args(short: bool, scenarios: list[str], pull_socket: str | None) -> list[str]:
    """`compose run` arguments: the client container, the pulling daemon's socket mounted into it."""
    argv = ["run", "--rm", "-T"]
    if pull_socket:
        argv += ["-v", f"{pull_socket}:{PULL_SOCKET}", "-e", f"GEOTM_PULL_DOCKER={PULL_SOCKET}"]
    argv += ["client", "drill", "--compose"] + (["--short"] if short else [])
    for name in scenarios:
        argv += ["--scenario", name]
    return argv


def preflight(own_engine: bool, need_debootstrap: bool) -> list[str]:
    reasons = []
    docker = docker_cli()
    if docker is None:
        reasons.append("no docker CLI (apt-get install -y --no-install-recommends docker.io)")
    if compose_cli(docker) is None:
        reasons.append("neither `docker compose` nor docker-compose (apt-get install -y docker-compose)")
    if own_engine:
        if os.geteuid() != 0:
            reasons.append("starting a Docker engine of its own needs root (or set DOCKER_HOST to an engine)")
        tools = {"dockerd": "docker.io", "ip": "iproute2", "iptables": "iptables", "nsenter": "util-linux",
                 "unshare": "util-linux"}
        missing = sorted({pkg for tool, pkg in tools.items()
                          if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None})
        if missing:
            reasons.append(f"missing Debian packages: {' '.join(missing)}")
    if need_debootstrap and shutil.which("debootstrap", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
        reasons.append("debootstrap missing, needed to make the base image (or pass --base IMAGE)")
    return reasons


class Lock:
    """One compose drill per machine (the engine's names and addresses are fixed)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "w")

    def acquire(self, say: Callable[[str], None], limit: float = LOCK_WAIT) -> bool:
        deadline = time.monotonic() + limit
        told = False
        while True:
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if not told:
                    say("another compose drill runs on this machine: waiting for it")
                    told = True
                if time.monotonic() > deadline:
                    return False
                time.sleep(2)

    def release(self) -> None:
        self.file.close()


class ComposeRun:
    def __init__(self, args: argparse.Namespace, workdir: Path, say: Callable[[str], None]):
        self.args = args
        self.workdir = workdir
        self.say = say
        self.docker = docker_cli() or "docker"
        self.compose = compose_cli(self.docker) or ["docker-compose"]
        self.engine: Engine | None = None
        self.pull_daemon: PullDaemon | None = None
        self.data_root = cache_dir() / "engine-data" if args.keep_images else workdir / "engine-data"
        self.env = dict(os.environ)
        self.socket = ""
        self.built: list[str] = []  # images made here (removed from an engine that is not ours)
        self.verdicts = {"PASS": 0, "FAIL": 0}  # the drill's scenarios, from its summary
        self.stack_up = False

    # -- commands --------------------------------------------------------------------------------

    def run(self, *argv: str, timeout: float = 600, log: str | None = None, check: bool = True,
            input_text: str | None = None) -> subprocess.CompletedProcess:
        """A docker/compose command against our engine; output into `log` (under the work directory)."""
        if log is not None:
            with open(self.workdir / log, "ab") as out:
                result = subprocess.run(list(argv), stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                        env=self.env, stdin=subprocess.DEVNULL)
            result.stdout = result.stderr = ""
        else:
            result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, env=self.env,
                                    input=input_text, stdin=None if input_text is not None else subprocess.DEVNULL)
        if check and result.returncode != 0:
            tail = (self.workdir / log).read_text(errors="replace")[-1500:] if log else result.stderr[-1500:]
            raise EngineError(f"{' '.join(argv[:4])} ... failed ({result.returncode}):\n{tail}")
        return result

    def compose_cmd(self, *args: str) -> list[str]:
        return [*self.compose, "-p", PROJECT, "-f", str(REPOSITORY_ROOT / "docker-compose.yml"),
                "--project-directory", str(REPOSITORY_ROOT), *args]

    def step(self, title: str, action: Callable[[], object]) -> object:
        started = time.monotonic()
        self.say(f"== compose-drill: {title}")
        result = action()
        self.say(f"   done in {time.monotonic() - started:.1f}s")
        return result

    @property
    def api(self) -> Docker:
        return Docker(self.socket, timeout=60)

    # -- the steps -------------------------------------------------------------------------------

    def start_engine(self) -> None:
        given = os.environ.get("DOCKER_HOST")
        if given:
            if not given.startswith("unix://"):
                raise EngineError(f"DOCKER_HOST={given}: the client container mounts the engine's socket, "
                                  "so it must be a unix socket")
            self.socket = given.removeprefix("unix://")
            self.say(f"   the engine at {given}")
        else:
            self.engine = Engine(self.workdir, self.data_root)
            self.engine.start()
            self.socket = str(self.engine.socket)
            self.env["DOCKER_HOST"] = f"unix://{self.socket}"
            self.say(f"   dockerd (PID {self.engine.dockerd.pid}) in network namespace {self.engine.name}, "
                     f"socket {self.socket}, data root {self.data_root}")
        version = self.api.request("GET", "/version")
        info = self.api.request("GET", "/info")
        self.say(f"   Docker {version.get('Version')}, storage driver {info.get('Driver')}; "
                 f"compose: {' '.join(self.compose)}")
        self.env.update({"GEOTM_DOCKER_SOCKET": self.socket,
                         "GEOTM_REGISTRY_IMAGE": self.args.registry_image or IMAGES["registry"]})

    def has_image(self, name: str) -> bool:
        try:
            self.api.request("GET", f"/images/{name}/json")
            return True
        except DockerError as err:
            if err.status == 404:
                return False
            raise

    def base_image(self) -> str:
        if self.args.base:
            if not self.has_image(self.args.base):
                self.run(self.docker, "pull", self.args.base, log="build.log")
            return self.args.base
        if not self.has_image(BASE_IMAGE):
            tarball = self.base_tarball()
            self.run(self.docker, "import", "--message", "debootstrap --variant=minbase bookworm", str(tarball),
                     BASE_IMAGE, log="build.log")
            self.built.append(BASE_IMAGE)
        return BASE_IMAGE

    def base_tarball(self) -> Path:
        """debootstrap --variant=minbase bookworm, made once a week at most and cached as a tarball."""
        tarball = cache_dir() / f"debian-{SUITE}-minbase.tar"
        if tarball.exists() and time.time() - tarball.stat().st_mtime < BASE_MAX_AGE:
            self.say(f"   base from the cache: {tarball}")
            return tarball
        mirror = os.environ.get("GEOTM_DEBIAN_MIRROR") or DEBIAN_MIRROR
        security = os.environ.get("GEOTM_DEBIAN_SECURITY_MIRROR") or DEBIAN_SECURITY
        root = self.workdir / "base-root"
        debootstrap = shutil.which("debootstrap", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or "debootstrap"
        self.run(debootstrap, "--variant=minbase", SUITE, str(root), mirror, log="debootstrap.log", timeout=900)
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (root / leftover).glob("*"):
                if item.is_file():
                    item.unlink()
        (root / "etc/apt/sources.list").write_text(sources_list(mirror, security))
        tarball.parent.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial")
        self.run("tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), ".", log="debootstrap.log")
        partial.replace(tarball)
        shutil.rmtree(root, ignore_errors=True)
        self.say(f"   debootstrap {SUITE} minbase from {mirror}, cached as {tarball}")
        return tarball

    def build(self, base: str) -> None:
        args = build_args(base)
        targets = ["geotm", "client"] + ([] if self.args.registry_image else ["registry"])
        for target in targets:
            started = time.monotonic()
            self.run(self.docker, "build", "--target", target, "-t", IMAGES[target], *args, str(REPOSITORY_ROOT),
                     log="build.log", timeout=1200)
            self.built.append(IMAGES[target])
            self.say(f"   {IMAGES[target]} ({target}) built in {time.monotonic() - started:.1f}s")

    def up(self) -> None:
        self.stack_up = True
        self.run(*self.compose_cmd("up", "-d", "--no-build"), log="compose.log", timeout=300)
        containers = {s: self.api.service_container(PROJECT, s) for s in SERVICES}

        def healthy() -> bool:
            return all(self.api.health(c) == "healthy" for c in containers.values())
        if wait_for(healthy, HEALTH_LIMIT, 1.0) is None:
            states = ", ".join(f"{s} {self.api.health(c)}" for s, c in containers.items())
            raise EngineError(f"the stack is not healthy after {HEALTH_LIMIT:.0f}s: {states}")
        self.say("   healthy: " + ", ".join(SERVICES))

    def start_pull_daemon(self) -> str | None:
        """A dockerd in a container's network namespace on the drill network; None (with the reason
        said) where it cannot run: not root, or an engine whose containers are not on this machine."""
        if os.geteuid() != 0:
            self.say("   no docker daemon pulls: starting one needs root")
            return None
        self.run(self.docker, "run", "-d", "--name", PULLHOST, "--network", NETWORK, "--ip", PULLHOST_ADDRESS,
                 "--label", f"com.docker.compose.project={PROJECT}", "--entrypoint", "sleep", IMAGES["geotm"],
                 "infinity")
        pid = self.api.inspect(PULLHOST)["State"]["Pid"]
        netns = f"/proc/{pid}/ns/net"
        if not pid or not os.path.exists(netns):
            self.say("   no docker daemon pulls: the engine's containers are not on this machine")
            return None
        ca = self.run(self.docker, "run", "--rm", "-v", f"{PKI_VOLUME}:/pki:ro", "--entrypoint", "cat",
                      IMAGES["geotm"], "/pki/ca.crt").stdout
        self.pull_daemon = PullDaemon(self.workdir / "pull-daemon", netns, DNS_ADDRESS,
                                      {host: ca for host in trusted_hosts()})
        self.pull_daemon.start()
        self.say(f"   dockerd (PID {self.pull_daemon.dockerd.pid}) in {PULLHOST}'s network namespace "
                 f"({PULLHOST_ADDRESS}), resolver {DNS_ADDRESS} (dnsd), certs.d for {', '.join(trusted_hosts())}")
        return str(self.pull_daemon.socket)

    def check_forwarding(self) -> bool:
        """A container started with `--dns <dnsd>` (as docker hosts give containers geotm) resolves the
        registry's names (ours) and an outside name (forwarded to the upstream service) alike."""
        expected = {GLOBAL_NAME: set(BY_ADDRESS), REPLICA["eastus"].regional: {REPLICA["eastus"].address},
                    OUTSIDE_NAME: {OUTSIDE_ADDRESS}}
        script = ("import json, socket, sys\nfound = {}\nfor name in sys.argv[1:]:\n    try:\n"
                  "        found[name] = socket.gethostbyname(name)\n    except OSError as err:\n"
                  "        found[name] = str(err)\nprint(json.dumps(found))")
        result = self.run(self.docker, "run", "--rm", "--network", NETWORK, "--dns", DNS_ADDRESS,
                          "--entrypoint", "python", IMAGES["geotm"], "-c", script, *expected, check=False)
        try:
            found = json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            found = {}
        wrong = [f"{name} -> {found.get(name, result.stderr.strip()[-200:] or 'nothing')}"
                 for name, addresses in expected.items() if found.get(name) not in addresses]
        for name in expected:
            self.say(f"   {name} -> {found.get(name, '?')}")
        self.verdicts["FAIL" if wrong else "PASS"] += 1
        if wrong:
            self.say(f"   FAIL: a container with --dns {DNS_ADDRESS} resolved {'; '.join(wrong)}")
        return not wrong

    def drill(self, pull_socket: str | None) -> int:
        argv = drill_args(self.args.short, self.args.scenario or [], pull_socket)
        self.say(f"== compose-drill: {' '.join(self.compose)} {' '.join(argv)}")
        started = time.monotonic()
        process = subprocess.Popen(self.compose_cmd(*argv), env=self.env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        assert process.stdout is not None
        try:
            for line in process.stdout:  # through to our output, the summary's verdicts counted
                print(line, end="", flush=True)
                verdict = SUMMARY_LINE.match(line)
                if verdict:
                    self.verdicts[verdict.group(1)] += 1
            process.wait(60)
        except BaseException:  # interrupted: end the compose run now, the teardown follows
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            raise
        finally:
            process.stdout.close()
        self.say(f"   the drill exited {process.returncode} after {time.monotonic() - started:.1f}s")
        return process.returncode

    # -- teardown --------------------------------------------------------------------------------

    def teardown(self) -> list[str]:
        """Every step tried, whatever failed before; returns what went wrong or had to be forced."""
        problems: list[str] = []

        def attempt(what: str, action: Callable[[], object]) -> None:
            try:
                action()
            except Exception as err:  # teardown goes on: each step on its own
                problems.append(f"{what}: {err}")
        if self.pull_daemon is not None:
            attempt("stop the pulling dockerd", self.pull_daemon.stop)
        if self.stack_up or self.engine is not None or self.built:
            attempt("remove the pull host", lambda: self.run(self.docker, "rm", "-f", PULLHOST, check=False))
            attempt("compose down", lambda: self.run(*self.compose_cmd("down", "-v", "--remove-orphans", "-t", "5"),
                                                     log="compose.log", timeout=180))
            attempt("remove one-off containers", self.remove_project_containers)
        if self.engine is None and self.built and not self.args.keep_images:
            attempt("remove the images built", lambda: self.run(self.docker, "rmi", *reversed(self.built), check=False))
        if self.engine is not None:
            try:
                problems.extend(f"engine: {item}" for item in self.engine.stop())
            except Exception as err:
                problems.append(f"stop the engine: {err}")
        if not self.args.keep_images:
            shutil.rmtree(self.data_root, ignore_errors=True)
        return problems

    def remove_project_containers(self) -> None:
        filters = '{"label": ["com.docker.compose.project=%s"]}' % PROJECT
        for item in self.api.request("GET", "/containers/json?all=1&filters=" + filters.replace(" ", "")):
            self.api.request("DELETE", f"/containers/{item['Id']}?force=1&v=1")

    def leftovers(self) -> list[str]:
        """What the engine's teardown should have removed, looked for again."""
        found = []
        if self.engine is not None:
            if (RUN_NETNS / self.engine.name).exists():
                found.append(f"network namespace {self.engine.name}")
            pids = pids_mentioning(str(self.engine.root) + "/")
            if pids:
                found.append(f"engine processes {pids}")
            if subprocess.run(["ip", "link", "show", self.engine.host_link], capture_output=True).returncode == 0:
                found.append(f"link {self.engine.host_link}")
        if self.pull_daemon is not None:
            pids = pids_mentioning(str(self.pull_daemon.root) + "/")
            if pids:
                found.append(f"pulling daemon processes {pids}")
        return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/compose-drill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="only the CI scenarios (and the docker daemon's)")
    parser.add_argument("--scenario", action="append", metavar="NAME", help="run only these (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) afterwards")
    parser.add_argument("--keep-images", action="store_true",
                        help=f"keep the engine's data root (built images) in {cache_dir()}/engine-data for the "
                             "next run with --keep-images (builds then take seconds)")
    parser.add_argument("--base", metavar="IMAGE", help="base image of the builds instead of the debootstrap one "
                                                        "(python:3.11-slim-bookworm where Docker Hub is reachable)")
    parser.add_argument("--registry-image", metavar="IMAGE",
                        help="the replicas' image instead of the Dockerfile's registry target (registry:2)")
    parser.add_argument("--no-pull-daemon", action="store_true", help="no docker daemon pulls (skopeo only)")
    parser.add_argument("--workdir", type=Path, help="where logs and the engine's files go (default: new, under /tmp)")
    return parser


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    say = lambda text: print(text, flush=True)  # noqa: E731
    own_engine = not os.environ.get("DOCKER_HOST")
    reasons = preflight(own_engine, need_debootstrap=not args.base)
    if reasons:
        print("compose-drill cannot run here:", file=sys.stderr)
        for reason in reasons:
            print(f"  - {reason}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    lock = Lock(cache_dir() / "compose-drill.lock")
    if not lock.acquire(say):
        say(f"another compose drill held the lock for {LOCK_WAIT // 60} minutes: giving up")
        return EXIT_FAIL
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gtcompose-"))
    workdir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGALRM, _terminate)
    signal.alarm(RUN_LIMIT)
    started = time.monotonic()
    run = ComposeRun(args, workdir, say)
    code = EXIT_FAIL
    try:
        run.step("the Docker engine", run.start_engine)
        base = run.step("the base image", run.base_image)
        run.step(f"images on {base}", lambda: run.build(str(base)))
        run.step("the stack up (pki, replicas, probes, upstream, dnsd) and healthy", run.up)
        pull_socket = None
        if not args.no_pull_daemon:
            pull_socket = run.step("a docker daemon whose resolver is dnsd", run.start_pull_daemon)
        resolved = run.step(f"names through dnsd from a container started with --dns {DNS_ADDRESS} (forwarding)",
                            run.check_forwarding)
        code = run.drill(str(pull_socket) if pull_socket else None)
        if not resolved and code == EXIT_PASS:
            code = EXIT_FAIL
    except (EngineError, DockerError, OSError, subprocess.SubprocessError) as err:
        say(f"compose-drill: {err}")
    except KeyboardInterrupt:
        say("compose-drill: interrupted")
        code = 130
    except SystemExit as stopped:  # SIGTERM, or the run's time limit (SIGALRM)
        say(f"compose-drill: stopped ({stopped.code})")
        code = stopped.code if isinstance(stopped.code, int) else EXIT_FAIL
    finally:
        signal.alarm(0)
        for sig in (signal.SIGINT, signal.SIGTERM):  # the teardown runs to its end
            signal.signal(sig, signal.SIG_IGN)
        teardown_started = time.monotonic()
        problems = run.teardown() + [f"left behind: {item}" for item in run.leftovers()]
        say(f"== compose-drill: torn down in {time.monotonic() - teardown_started:.1f}s"
            + ("" if not problems else ": " + "; ".join(problems)))
        if problems and code == EXIT_PASS:
            code = EXIT_FAIL
        if args.keep or code != EXIT_PASS:
            say(f"   kept {workdir} (build, compose and dockerd logs)")
            shutil.rmtree(workdir / "base-root", ignore_errors=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        lock.release()
    say(f"compose-drill: {'PASSED' if code == EXIT_PASS else 'FAILED'} (exit {code}) in "
        f"{time.monotonic() - started:.0f}s")
    say(f"compose-drill: {run.verdicts['PASS']} passed, {run.verdicts['FAIL']} failed")  # CI's closing line
    return code


if __name__ == "__main__":
    sys.exit(main())
