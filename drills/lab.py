"""The drill lab: real registries, probes and dnsd inside the drill's network namespace, a client
whose resolver is dnsd, and the observers that timestamp what happens (DNS answers, probe verdicts,
log events, pulls).

Storage: every replica's storage is a 64 MiB tmpfs mounted in a private mount namespace held by one
`unshare --mount` process (the "storage holder"); registries run inside it (nsenter) as the
unprivileged `docker-registry` user, so making a storage directory unreadable really breaks it, and
filling the tmpfs really returns ENOSPC. Nothing is mounted in the host's mount namespace, and the
mounts vanish with the holder.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import yaml

from dnsd.routing.budget import Budget, budgets, fail_open_after
from dnsd.config import load_config
from drills import image, labconfig, pki
from drills.labconfig import (DNS_ADDRESS, GLOBAL_NAME, PROBES, PROBES_ADDRESS, PROBES_PORT, REGISTRY, REPLICAS,
                              REPOSITORY, TAG, Paths, ReplicaSpec, Timing)
from drills.netns import Namespace, remove_stale
from drills.proc import Child, parse_timestamp, run

STORAGE_SIZE_MB = 64
REGISTRY_USER = "docker-registry"
WATCH_STEP = 0.1
PULL_TIMEOUT = 8.0  # the client's own bound: a hung replica costs a pull at most this, never the drill
HOLDER_LIFETIME = 4 * 3600  # the storage holder's sleep; it dies with the drill anyway (PDEATHSIG)
BY_ADDRESS = {r.address: r.name for r in REPLICAS}
REPLICA = {r.name: r for r in REPLICAS}


class LabError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Event:
    at: float
    source: str  # dns | probes-view | probes | dnsd | lab
    kind: str
    fields: dict = field(default_factory=dict)


class Events:
    """Everything observed, in arrival order (thread-safe, bounded)."""
    LIMIT = 100_000

    def __init__(self) -> None:
        self._items: list[Event] = []
        self._lock = threading.Lock()

    def add(self, at: float, source: str, kind: str, /, **fields) -> None:  # fields may hold "kind"
        with self._lock:
            if len(self._items) < self.LIMIT:
                self._items.append(Event(at, source, kind, fields))

    def select(self, after: float, before: float | None = None,
               match: Callable[[Event], bool] = lambda e: True) -> list[Event]:
        with self._lock:
            items = list(self._items)
        return sorted((e for e in items if e.at >= after and (before is None or e.at <= before) and match(e)),
                      key=lambda e: e.at)

    def first(self, after: float, match: Callable[[Event], bool], before: float | None = None) -> Event | None:
        found = self.select(after, before, match)
        return found[0] if found else None


@dataclass(slots=True)
class Pull:
    started: float
    host: str
    ended: float | None = None
    ok: bool | None = None
    replica: str | None = None  # which replica served it (from the image's replica label)
    error: str = ""


def wait_for(predicate: Callable[[], object], limit: float, step: float = WATCH_STEP) -> float | None:
    """time.time() when predicate() first holds, or None after `limit` seconds."""
    deadline = time.monotonic() + limit
    while True:
        try:
            if predicate():
                return time.time()
        except Exception:
            pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(step)


class Lab:
    def __init__(self, timing: Timing, workdir: Path, say: Callable[[str], None] = print):
        self.timing = timing
        self.paths = Paths(workdir)
        self.say = say
        self.ns = Namespace()
        self.events = Events()
        self.registries: dict[str, Child] = {}
        self.frozen: set[str] = set()
        self.holder: Child | None = None
        self.probes: dict[str, Child] = {}  # probes instance name -> its process
        self.dnsd: Child | None = None
        self.pulls: list[Pull] = []
        self._pulls_lock = threading.Lock()
        self._stop = threading.Event()
        self._pulling = threading.Event()
        self._threads: list[threading.Thread] = []
        self.dns_answer: str | None = None
        self.budget: dict[str, Budget] = {}
        self.fail_open_after = 0.0
        self._ssl = None
        self.config_path = self.paths.geotm_config
        self.client_dir = self.paths.root / "client"
        self.certs_dir = self.client_dir / "certs"

    # -- set up ------------------------------------------------------------------------------

    def setup(self) -> None:
        root = self.paths.root
        for sub in ("pki", "registries", "storage", "state", "logs", "images", "client/certs", "client/home",
                    "client/tmp", "pulls"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        stale = remove_stale()
        if stale:
            self.say(f"removed namespaces left by earlier drills: {', '.join(stale)}")
        self.ns.create(labconfig.ALL_ADDRESSES, DNS_ADDRESS)
        self.ns.enter()
        self.say(f"network namespace {self.ns.name}: {', '.join(labconfig.ALL_ADDRESSES)} on its loopback; "
                 f"client resolver {DNS_ADDRESS}:53 (/etc/netns/{self.ns.name}/resolv.conf)")
        self._make_pki()
        self._start_storage_holder()
        for replica in REPLICAS:
            self._write_registry_config(replica)
            self.start_registry(replica.name)
        for replica in REPLICAS:
            if wait_for(lambda r=replica: self.registry_up(r), 20, 0.2) is None:
                raise LabError(f"registry {replica.name} did not come up; see {self._log(replica.name)}")
        self.say("registries up: " + ", ".join(f"{r.name} https://{r.address}" for r in REPLICAS))
        self._write_geotm_config()
        self.start_probes()
        self.start_dnsd()
        self._push_images()
        self.start_observers()

    def start_observers(self) -> None:
        for target in (self._watch_dns, self._watch_probes, self._pull_loop):
            thread = threading.Thread(target=target, name=target.__name__, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _log(self, name: str) -> Path:
        return self.paths.root / "logs" / f"{name}.log"

    def _make_pki(self) -> None:
        directory = self.paths.root / "pki"
        ca = pki.make_ca(directory)
        for replica in REPLICAS:
            pki.make_server_cert(directory, replica.name, ca,
                                 pki.replica_names(REGISTRY, labconfig.ZONE, replica.name), (replica.address,))
            key = self.paths.key(replica.name)
            shutil.chown(key, group=REGISTRY_USER)
            key.chmod(0o640)
        shutil.copy(ca[0], self.paths.root / "client" / "certs" / "ca.crt")
        self._ssl = ssl.create_default_context(cafile=str(ca[0]))

    def _start_storage_holder(self) -> None:
        lines = ["set -e"]
        for replica in REPLICAS:
            mount = self.paths.storage(replica.name)
            mount.mkdir(parents=True, exist_ok=True)
            lines.append(f"mount -t tmpfs -o size={STORAGE_SIZE_MB}m,mode=0755 gtdrill-{replica.name} {mount}")
            lines.append(f"mkdir {self.paths.storage_root(replica.name)}")
            lines.append(f"chown {REGISTRY_USER}:{REGISTRY_USER} {mount} {self.paths.storage_root(replica.name)}")
        lines.append("echo storage-ready")
        lines.append(f"exec sleep {HOLDER_LIFETIME}")
        ready = threading.Event()

        def listener(_name, _at, _parsed, line):
            if line.strip() == "storage-ready":
                ready.set()
        self.holder = Child("storage-holder", ["unshare", "--mount", "--propagation", "private", "--",
                                               "sh", "-c", "\n".join(lines)], self._log("storage-holder"),
                            listener=listener)
        if not ready.wait(15):
            raise LabError(f"storage holder not ready; see {self._log('storage-holder')}")

    def in_storage_ns(self, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        assert self.holder is not None
        result = run(["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", "--", *argv], timeout=timeout)
        return result

    def _write_registry_config(self, replica: ReplicaSpec) -> None:
        path = self.paths.registry_config(replica.name)
        path.write_text(yaml.safe_dump(labconfig.registry_config(replica, self.paths), sort_keys=False))

    def start_registry(self, name: str) -> None:
        assert self.holder is not None
        argv = ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", "--",
                "setpriv", f"--reuid={REGISTRY_USER}", f"--regid={REGISTRY_USER}", "--init-groups",
                # port 443 as an unprivileged user: only this one capability, inherited by the registry
                "--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service", "--",
                "docker-registry", "serve", str(self.paths.registry_config(name))]
        self.registries[name] = Child(name, argv, self._log(name), cwd=Path("/"),
                                      env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/nonexistent"})
        self.frozen.discard(name)

    def registry_up(self, replica: ReplicaSpec) -> bool:
        try:
            with urllib.request.urlopen(f"https://{replica.address}/v2/", context=self._ssl, timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def replica_healthy(self, name: str) -> bool:
        """The replica serves again, as its own checks say: /v2/ over TLS and /debug/health both 200."""
        replica = REPLICA[name]
        return self.registry_up(replica) and \
            http_status(f"http://{replica.address}:{labconfig.DEBUG_PORT}/debug/health") == 200

    def _write_geotm_config(self) -> None:
        self.paths.admin_token.write_text(secrets.token_urlsafe(24) + "\n")
        self.paths.admin_token.chmod(0o600)
        path = self.paths.geotm_config
        path.write_text("# generated by geotm drill\n" + yaml.safe_dump(
            labconfig.geotm_config(self.timing, self.paths), sort_keys=False))
        self.load_budget()

    def load_budget(self) -> None:
        config = load_config(str(self.config_path))  # the same validation as `dnsd check-config`
        self.budget = {b.replica: b for b in budgets(config)}
        self.fail_open_after = fail_open_after(config)

    def _geotm_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        repo = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def _geotm_listener(self, name: str, received: float, parsed: dict | None, _line: str) -> None:
        if not parsed or "event" not in parsed:
            return
        event = parsed["event"]
        if event in ("status_changed", "routing_changed", "routing", "health_expired", "audit"):
            at = parse_timestamp(parsed.get("timestamp")) or received
            fields = {k: v for k, v in parsed.items() if k not in ("event", "timestamp", "level")}
            self.events.add(at, name, event, **fields)

    def probes_instances(self) -> list[str]:
        return list(PROBES)

    def start_probes(self, instance: str | None = None) -> None:
        """Start every probes instance (or one); each probes the replicas itself, from its own address."""
        for name in [instance] if instance else list(PROBES):
            argv = [sys.executable, "-m", "probes", "serve", "--config", str(self.paths.geotm_config),
                    "--log-format", "json"]
            if name != next(iter(PROBES)):  # the first one is the config's probes.listen
                argv += ["--listen", f"{PROBES[name]}:{PROBES_PORT}",
                         "--state-file", str(self.paths.probes_state(name))]
            self.probes[name] = Child(name, argv, self._log(name), cwd=self.paths.root, env=self._geotm_env(),
                                      listener=self._geotm_listener)
        for name in [instance] if instance else list(PROBES):
            url = f"http://{PROBES[name]}:{PROBES_PORT}/healthz"
            if wait_for(lambda: http_status(url) == 200, 20, 0.2) is None:
                raise LabError(f"{name} did not come up; see {self._log(name)}")

    def stop_probes(self, instance: str | None = None) -> None:
        for name, child in self.probes.items():
            if instance in (None, name):
                child.stop()

    def kill_probes(self, instance: str) -> str:
        child = self.probes[instance]
        child.kill()
        return f"SIGKILL {instance} pid {child.pid}"

    def start_dnsd(self) -> None:
        self.dnsd = Child("dnsd", [sys.executable, "-m", "dnsd", "serve", "--config", str(self.paths.geotm_config),
                                   "--log-format", "json"], self._log("dnsd"), cwd=self.paths.root,
                          env=self._geotm_env(), listener=self._geotm_listener)
        if wait_for(lambda: self.resolve(GLOBAL_NAME) is not None, 20, 0.2) is None:
            raise LabError(f"dnsd did not answer on {DNS_ADDRESS}:53; see {self._log('dnsd')}")

    # -- the client --------------------------------------------------------------------------

    def resolve(self, name: str) -> str | None:
        """The A record dnsd gives for `name` (end of the CNAME chain), asked over UDP."""
        query = dns.message.make_query(name, "A")
        try:
            reply = dns.query.udp(query, DNS_ADDRESS, port=53, timeout=0.5)
        except (dns.exception.DNSException, OSError):
            return None
        for rrset in reversed(reply.answer):
            if rrset.rdtype == dns.rdatatype.A:
                return rrset[0].address
        return None

    def client_prefix(self) -> list[str]:
        return self.ns.exec_prefix()

    def _client_env(self) -> dict[str, str]:
        client = self.client_dir
        for sub in ("home", "tmp"):
            (client / sub).mkdir(parents=True, exist_ok=True)
        registries_conf = client / "registries.conf"
        if not registries_conf.exists():
            registries_conf.write_text("unqualified-search-registries = []\n")
            (client / "policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
            (client / "auth.json").write_text('{"auths": {}}\n')
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(client / "home"),
                "TMPDIR": str(client / "tmp"), "XDG_RUNTIME_DIR": str(client / "tmp"),
                "CONTAINERS_REGISTRIES_CONF": str(registries_conf), "REGISTRY_AUTH_FILE": str(client / "auth.json")}

    def skopeo(self, *args: str, timeout: float = PULL_TIMEOUT) -> subprocess.CompletedProcess:
        """skopeo as the client: in the namespace, resolving through dnsd, trusting the drill CA,
        bounded by --command-timeout and by a hard kill a little later."""
        client = self.client_dir
        argv = [*self.client_prefix(), "skopeo", "--command-timeout", f"{timeout:g}s",
                "--policy", str(client / "policy.json"), *args]
        env = self._client_env()
        try:
            return run(argv, timeout=timeout + 3, env=env)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 124, "", f"killed after {timeout + 3:g}s")

    def pull(self, host: str = GLOBAL_NAME, record: bool = True) -> Pull:
        """`skopeo copy docker://HOST/drill/hello:1 oci:...`: a real pull (manifest, config, layer), all
        digests verified; the manifest's replica annotation says which replica served it."""
        item = Pull(started=time.time(), host=host)
        if record:
            with self._pulls_lock:
                self.pulls.append(item)
        dest = self.paths.root / "pulls" / f"{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
        try:
            result = self.skopeo("copy", "--src-cert-dir", str(self.certs_dir),
                                 f"docker://{host}/{REPOSITORY}:{TAG}", f"oci:{dest}:pulled")
            if result.returncode == 0:
                try:
                    item.replica = image.replica_of(image.inspect_layout(dest)[0])
                    item.ok = True
                except (image.LayoutError, ValueError, KeyError) as err:
                    item.ok, item.error = False, f"pulled image is invalid: {err}"
            else:
                item.ok, item.error = False, _last_line(result.stderr)
        finally:
            item.ended = time.time()
            shutil.rmtree(dest, ignore_errors=True)
        return item

    def push(self, layout: Path, host: str) -> subprocess.CompletedProcess:
        return self.skopeo("copy", "--dest-cert-dir", str(self.certs_dir),
                           f"oci:{layout}:{TAG}", f"docker://{host}/{REPOSITORY}:{TAG}", timeout=60)

    def _push_images(self) -> None:
        for replica in REPLICAS:
            layout = self.paths.root / "images" / replica.name
            layout.mkdir(parents=True, exist_ok=True)
            built = image.build_layout(layout, TAG, annotations={image.REPLICA_LABEL: replica.name})
            result = self.push(layout, replica.regional)
            if result.returncode != 0:
                raise LabError(f"push to {replica.regional} failed: {_last_line(result.stderr)}")
            self.say(f"pushed {replica.regional}/{REPOSITORY}:{TAG} ({built.manifest.digest[:19]}..., "
                     f"built here: 1 layer {built.layer.size} B)")

    # -- observers ---------------------------------------------------------------------------

    def _watch_dns(self) -> None:
        while not self._stop.is_set():
            started = time.time()
            answer = self.resolve(GLOBAL_NAME)
            if answer != self.dns_answer:
                self.events.add(time.time(), "dns", "answer", address=answer, replica=BY_ADDRESS.get(answer),
                                before=BY_ADDRESS.get(self.dns_answer) if self.dns_answer else None)
                self.dns_answer = answer
            self._stop.wait(max(0.0, WATCH_STEP - (time.time() - started)))

    def _watch_probes(self) -> None:
        seen: dict[str, tuple] = {}
        url = f"http://{PROBES_ADDRESS}:{PROBES_PORT}/v1/health"
        while not self._stop.is_set():
            started = time.time()
            try:
                with urllib.request.urlopen(url, timeout=0.5) as resp:
                    document = json.load(resp)
                entries = {e["replica"]: (e["status"], e.get("trend") or "", e.get("reason") or "")
                           for e in document.get("endpoints", [])}
            except (OSError, ValueError, KeyError):
                entries = {"*": ("unreachable", "", "")}
            for replica, value in entries.items():
                if seen.get(replica, (None, None))[:2] != value[:2]:
                    self.events.add(time.time(), "probes-view", "verdict", replica=replica, status=value[0],
                                    trend=value[1], reason=value[2])
            if "*" not in entries:
                seen.pop("*", None)
            seen.update(entries)
            self._stop.wait(max(0.0, WATCH_STEP - (time.time() - started)))

    def _pull_loop(self) -> None:
        """While pulling is on, start a pull of the global name every PULL_PERIOD seconds, at most
        MAX_INFLIGHT at once, so one hung pull never hides when the next one succeeds."""
        period = 0.75
        max_inflight = int(PULL_TIMEOUT / period) + 3  # hung pulls (frozen replica) never block new ones
        slots = threading.BoundedSemaphore(max_inflight)

        def one() -> None:
            try:
                self.pull()
            finally:
                slots.release()
        while not self._stop.is_set():
            if self._pulling.is_set() and slots.acquire(timeout=period):
                threading.Thread(target=one, name="pull", daemon=True).start()
            self._stop.wait(period)

    def pulling(self, on: bool) -> None:
        (self._pulling.set if on else self._pulling.clear)()

    def pulls_between(self, start: float, end: float) -> list[Pull]:
        with self._pulls_lock:
            return [p for p in self.pulls if p.started >= start and p.started <= end]

    def first_pull_from(self, replica: str, after: float) -> Pull | None:
        with self._pulls_lock:
            done = [p for p in self.pulls if p.ok and p.replica == replica and p.started >= after and p.ended]
        return min(done, key=lambda p: p.ended) if done else None

    def settle_pulls(self, limit: float = PULL_TIMEOUT + 4) -> None:
        """Wait until every recorded pull has finished (each is bounded by PULL_TIMEOUT)."""
        def done() -> bool:
            with self._pulls_lock:
                return all(p.ended is not None for p in self.pulls)
        wait_for(done, limit)

    # -- faults ------------------------------------------------------------------------------

    def storage_mount(self, name: str) -> Path:
        return self.paths.storage(name)

    def storage_exec(self, name: str, *argv: str) -> subprocess.CompletedProcess:
        """A command that sees the replica's storage as the registry does."""
        return self.in_storage_ns(*argv)

    def storage_unreadable(self, name: str) -> str:
        mount = self.storage_mount(name)
        result = self.storage_exec(name, "chmod", "000", str(mount))
        if result.returncode != 0:
            raise LabError(f"chmod failed: {result.stderr.strip()}")
        return f"chmod 000 {mount} (the registry runs unprivileged)"

    def storage_readable(self, name: str) -> str:
        mount = self.storage_mount(name)
        result = self.storage_exec(name, "chmod", "755", str(mount))
        if result.returncode != 0:
            raise LabError(f"chmod failed: {result.stderr.strip()}")
        return f"chmod 755 {mount}"

    def fill_disk(self, name: str) -> str:
        mount = self.storage_mount(name)
        self.storage_exec(name, "dd", "if=/dev/zero", f"of={mount / 'filler'}", "bs=1M",
                          f"count={STORAGE_SIZE_MB + 1}")
        df = self.storage_exec(name, "df", "-k", str(mount))
        fields = df.stdout.splitlines()[-1].split() if df.stdout.strip() else []
        avail = f"{fields[3]} KiB" if len(fields) > 3 else "?"
        return f"dd filled the {STORAGE_SIZE_MB} MiB tmpfs ({avail} left)"

    def free_disk(self, name: str) -> str:
        self.storage_exec(name, "rm", "-f", str(self.storage_mount(name) / "filler"))
        return "filler removed"

    def kill_registry(self, name: str) -> str:
        child = self.registries[name]
        child.kill()
        return f"SIGKILL pid {child.pid}"

    def restart_registry(self, name: str) -> str:
        old = self.registries[name]
        old.stop()
        self.start_registry(name)
        return f"restarted, pid {self.registries[name].pid}"

    def freeze(self, name: str) -> str:
        child = self.registries[name]
        child.signal(19)  # SIGSTOP
        self.frozen.add(name)
        return f"SIGSTOP pid {child.pid}"

    def thaw(self, name: str) -> str:
        child = self.registries[name]
        child.signal(18)  # SIGCONT
        self.frozen.discard(name)
        return f"SIGCONT pid {child.pid}"

    def admin(self, *args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "dnsd", *args, "--config", str(self.config_path)]
        return run(argv, timeout=20, env=self._geotm_env(), cwd=self.paths.root)

    # -- state -------------------------------------------------------------------------------

    def probe_statuses(self, instance: str | None = None) -> dict[str, str]:
        address = PROBES[instance] if instance else PROBES_ADDRESS
        try:
            with urllib.request.urlopen(f"http://{address}:{PROBES_PORT}/v1/health", timeout=1) as resp:
                return {e["replica"]: e["status"] for e in json.load(resp)["endpoints"]}
        except (OSError, ValueError, KeyError):
            return {}

    def dns_replica(self, name: str = GLOBAL_NAME) -> str | None:
        return BY_ADDRESS.get(self.resolve(name) or "")

    def baseline(self, limit: float = 90.0) -> str | None:
        """Back to normal before a scenario: every replica serving and online, the global name on
        eastus, a pull served by eastus. Returns what is still wrong, or None."""
        self.ensure_running()
        ok = wait_for(lambda: all(set(self.probe_statuses(p).values()) == {"online"} for p in self.probes_instances())
                      and self.dns_replica() == "eastus", limit, 0.25)
        if ok is None:
            return f"not back to normal within {limit:.0f}s: probes {self.probe_statuses()}, " \
                   f"global name -> {self.dns_replica()}"
        pull = self.pull(record=False)
        if not (pull.ok and pull.replica == "eastus"):
            return f"baseline pull failed: {pull.error or pull.replica}"
        return None

    def ensure_running(self) -> None:
        """Undo what a failed scenario may have left: frozen or dead registries, stopped probes."""
        for name in list(self.frozen):
            self.thaw(name)
        for replica in REPLICAS:
            if not self.registries[replica.name].alive():
                self.start_registry(replica.name)
        for name in self.probes_instances():
            if name not in self.probes or not self.probes[name].alive():
                self.start_probes(name)

    def stop_observers(self) -> None:
        self._stop.set()
        self._pulling.clear()
        for thread in self._threads:
            thread.join(3)
        self.settle_pulls(PULL_TIMEOUT + 4)

    # -- tear down ---------------------------------------------------------------------------

    def teardown(self) -> None:
        self.stop_observers()
        for child in [self.dnsd, *self.probes.values(), *self.registries.values(), self.holder]:
            if child is not None:
                try:
                    child.stop()
                except Exception:
                    pass
        self.ns.delete()


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[-300:]
