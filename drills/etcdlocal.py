"""A real etcd on this machine for tests, benchmarks and drills: a few members on ports picked here
(loopback, or one address per member), data in a folder the caller owns, each a Child stopped by
PID; optionally TLS with client certificates (made with openssl through drills.pki) and auth."""
from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dnsd.common.children import Child, free_port
from drills.pki import make_ca, make_server_cert


@dataclass(frozen=True, slots=True)
class EtcdPki:
    """A CA, etcd's certificate (server and, for its own gateway, client) and a client's. The client's
    has no CommonName: with auth on, etcd's JSON gateway refuses a client certificate that has one
    (it would not be used as the user name there, so etcd says so rather than ignore it)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def make(cls, directory: Path) -> EtcdPki:
        ca = make_ca(directory)
        server = make_server_cert(directory, "etcd", ca, ("localhost",), ("127.0.0.1",), "serverAuth,clientAuth")
        client = make_server_cert(directory, "geotm", ca, ("geotm",), (), "clientAuth", subject="/O=geotm")
        return cls(ca[0], server.cert, server.key, client.cert, client.key)

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def _healthy(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=0.5, context=context) as response:
            return json.loads(response.read()).get("health") == "true"
    except (OSError, ValueError):
        return False


class Etcd:
    """Members named m0..m{n-1}, each with its client URL in `urls`. start() waits until every member
    reports healthy (a leader elected); stop()/kill() end one member or all of them, by PID."""

    def __init__(self, binary: str, data_dir: Path, members: int = 1, pki: EtcdPki | None = None,
                 hosts: list[str] | None = None, etcdctl: str = "etcdctl",
                 wrap: Callable[[int, list[str]], list[str]] | None = None, fixed_ports: bool = False):
        """fixed_ports: etcd's own 2379 (client) and 2380 (peer) on every member, for members on
        addresses of their own. Below the kernel's ephemeral range, so a member restarted after a kill
        finds them free: a port from free_port() is ephemeral, and an outgoing connection from the
        same address (another member's, a dnsd's) may hold it by then."""
        self.pki = pki  # client URLs over TLS, client certificates required
        hosts = hosts or ["127.0.0.1"] * members  # one address per member (the drill's namespaces)
        if fixed_ports and len(set(hosts)) != members:
            raise ValueError("fixed_ports needs one address per member")
        self.client_ports = [2379 if fixed_ports else free_port() for _ in range(members)]
        self.peer_ports = [2380 if fixed_ports else free_port() for _ in range(members)]
        cluster = ",".join(f"m{i}=http://{hosts[i]}:{port}" for i, port in enumerate(self.peer_ports))
        scheme = "https" if pki else "http"
        self.urls = [f"{scheme}://{hosts[i]}:{port}" for i, port in enumerate(self.client_ports)]
        self.etcdctl_binary = etcdctl
        tls = ["--cert-file", str(pki.server_cert), "--key-file", str(pki.server_key), "--trusted-ca-file",
               str(pki.ca), "--client-cert-auth"] if pki else []
        self.members: list[Child] = []
        for i in range(members):
            argv = [binary, "--name", f"m{i}", "--data-dir", str(data_dir / f"m{i}"),
                    "--listen-client-urls", self.urls[i], "--advertise-client-urls", self.urls[i],
                    "--listen-peer-urls", f"http://{hosts[i]}:{self.peer_ports[i]}",
                    "--initial-advertise-peer-urls", f"http://{hosts[i]}:{self.peer_ports[i]}",
                    "--initial-cluster", cluster, "--initial-cluster-state", "new",
                    "--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "warn", *tls]
            argv = wrap(i, argv) if wrap else argv  # e.g. inside member i's network namespace
            self.members.append(Child(argv, data_dir / f"m{i}.log", name=f"etcd m{i}"))

    def start(self, only: int | None = None) -> Etcd:
        chosen = range(len(self.members)) if only is None else [only]
        for i in chosen:
            if self.members[i].pid:  # started before (a restart): forget that run first
                self.members[i].reset()
            self.members[i].start()
        for i in chosen:
            context = self.pki.context() if self.pki else None
            self.members[i].wait_ready(lambda i=i: _healthy(self.urls[i], context), timeout=20)
        return self

    def stop(self, only: int | None = None) -> None:
        for i in range(len(self.members)) if only is None else [only]:
            self.members[i].stop()

    def etcdctl(self, *args: str) -> str:
        """etcdctl against these members (with the client certificate over TLS): its output."""
        tls = ["--cacert", str(self.pki.ca), "--cert", str(self.pki.client_cert), "--key",
               str(self.pki.client_key)] if self.pki else []
        result = subprocess.run([self.etcdctl_binary, "--endpoints", ",".join(self.urls), *tls, *args],
                                capture_output=True, text=True, timeout=20, env={"ETCDCTL_API": "3"})
        if result.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def enable_auth(self, user: str, password: str, prefix: str) -> None:
        """etcd auth on: root, and `user` with read/write on prefix only."""
        self.etcdctl("user", "add", "root:root-secret")
        self.etcdctl("user", "add", f"{user}:{password}")
        self.etcdctl("role", "add", f"{user}-rw")
        self.etcdctl("role", "grant-permission", f"{user}-rw", "--prefix=true", "readwrite", prefix)
        self.etcdctl("user", "grant-role", user, f"{user}-rw")
        self.etcdctl("auth", "enable")

    def __enter__(self) -> Etcd:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
