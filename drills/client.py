"""The drill's registry client, the one that measures: it asks dnsd (its only resolver), pulls and
pushes with skopeo, keeps pulling the global name in the background while a scenario runs and
records every pull (drills.pulls: when, which replica served it, why it failed), and checks a
replica directly."""
from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from drills import image, labconfig
from drills.errors import LabError
from drills.labconfig import BY_ADDRESS, DNS_ADDRESS, GLOBAL_NAME, REPLICA, REPLICAS, REPOSITORY, TAG, ReplicaSpec
from drills.observe import http_status
from drills.proc import run
from drills.pulls import PULL_TIMEOUT, Pull, Puller, last_line


class Client(Puller):
    """`prefix` runs a command as the client (the local lab: `ip netns exec`, so the namespace's
    resolv.conf names dnsd; in the compose client container: nothing). `certs_dir` is skopeo's trust
    directory, `ca_file` the drill CA for the direct checks."""
    name = "skopeo"

    def __init__(self, workdir: Path, certs_dir: Path, ca_file: Path, prefix: list[str],
                 say: Callable[[str], None] = print):
        super().__init__()
        self.workdir = workdir
        self.home = workdir / "client"
        self.certs_dir = certs_dir
        self.ca_file = ca_file
        self.prefix = prefix
        self.say = say
        self.digests: dict[str, str] = {}  # manifest digest -> the replica it was pushed to
        self._ssl: ssl.SSLContext | None = None

    # -- DNS ---------------------------------------------------------------------------------

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

    def dns_replica(self, name: str = GLOBAL_NAME) -> str | None:
        return BY_ADDRESS.get(self.resolve(name) or "")

    # -- a replica, checked directly ---------------------------------------------------------

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:  # the CA exists only once the lab has made (or found) it
            self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        return self._ssl

    def registry_up(self, replica: ReplicaSpec) -> bool:
        try:
            with urllib.request.urlopen(f"https://{replica.address}/v2/", context=self._tls(), timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def replica_healthy(self, name: str) -> bool:
        """The replica serves again, as its own checks say: /v2/ over TLS and /debug/health both 200."""
        replica = REPLICA[name]
        return self.registry_up(replica) and \
            http_status(f"http://{replica.address}:{labconfig.DEBUG_PORT}/debug/health") == 200

    # -- skopeo ------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        client = self.home
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
        """skopeo as the client: resolving through dnsd, trusting the drill CA, bounded by
        --command-timeout and by a hard kill a little later."""
        argv = [*self.prefix, "skopeo", "--command-timeout", f"{timeout:g}s",
                "--policy", str(self.home / "policy.json"), *args]
        env = self._env()
        try:
            return run(argv, timeout=timeout + 3, env=env)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 124, "", f"killed after {timeout + 3:g}s")

    def pull(self, host: str = GLOBAL_NAME, record: bool = True) -> Pull:
        """`skopeo copy docker://HOST/drill/hello:1 oci:...`: a real pull (manifest, config, layer), all
        digests verified; the manifest's replica annotation says which replica served it."""
        item = self._recorded(host, record)
        dest = self.workdir / "pulls" / f"{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
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
                item.ok, item.error = False, last_line(result.stderr)
        finally:
            item.ended = time.time()
            shutil.rmtree(dest, ignore_errors=True)
        return item

    def layout(self, replica: str) -> Path:
        """The OCI layout built for (and pushed to) `replica`."""
        return self.workdir / "images" / replica

    def push(self, layout: Path, host: str) -> subprocess.CompletedProcess:
        return self.skopeo("copy", "--dest-cert-dir", str(self.certs_dir),
                           f"oci:{layout}:{TAG}", f"docker://{host}/{REPOSITORY}:{TAG}", timeout=60)

    def push_images(self) -> None:
        """Build the drill image for every replica (labelled with its name) and push it there."""
        for replica in REPLICAS:
            layout = self.layout(replica.name)
            layout.mkdir(parents=True, exist_ok=True)
            built = image.build_layout(layout, TAG, annotations={image.REPLICA_LABEL: replica.name})
            self.digests[built.manifest.digest] = replica.name
            result = self.push(layout, replica.regional)
            if result.returncode != 0:
                raise LabError(f"push to {replica.regional} failed: {last_line(result.stderr)}")
            self.say(f"pushed {replica.regional}/{REPOSITORY}:{TAG} ({built.manifest.digest[:19]}..., "
                     f"built here: 1 layer {built.layer.size} B)")
