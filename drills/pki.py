"""The drill CA and the replicas' server certificates, made with the openssl command line.

Each replica's certificate carries every name a client may reach it by: the registry's global name
(the traffic manager may send any client to any replica), its regional, data and replica host
names (all as dnsd.names builds them), and its address. Keys are P-256; everything lives in the drill's
work directory and is valid for two days.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dnsd.names import data_name, default_replica_host, global_name, regional_name
from drills.labconfig import REGISTRY, REPLICAS, ZONE

OPENSSL_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class ServerCert:
    cert: Path
    key: Path
    names: tuple[str, ...]


def replica_names(registry: str, zone: str, replica: str) -> tuple[str, ...]:
    """The DNS names a replica answers TLS for."""
    return (global_name(registry, zone), regional_name(registry, replica, zone), data_name(registry, replica, zone),
            default_replica_host(registry, replica, zone))


def san_extension(names: tuple[str, ...], addresses: tuple[str, ...]) -> str:
    entries = [f"DNS:{n}" for n in names] + [f"IP:{ipaddress.ip_address(a)}" for a in addresses]
    return "subjectAltName=" + ",".join(entries)


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=OPENSSL_TIMEOUT)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()[-500:]}")


def make_ca(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "ca.crt", directory / "ca.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=geotm drill CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=directory)
    key.chmod(0o600)
    return cert, key


def make_server_cert(directory: Path, name: str, ca: tuple[Path, Path], names: tuple[str, ...],
                     addresses: tuple[str, ...], usage: str = "serverAuth", subject: str | None = None) -> ServerCert:
    """`usage`: the extended key usage (etcd's certificates: "serverAuth,clientAuth"; a client's:
    "clientAuth"); `subject`: default /CN=<first name>."""
    ca_cert, ca_key = ca
    cert, key, csr, ext = (directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr",
                           directory / f"{name}.ext")
    ext.write_text("\n".join([
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
        san_extension(names, addresses),
    ]) + "\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", subject or f"/CN={names[0]}", cwd=directory)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "2", "-sha256", "-extfile", str(ext), "-out", str(cert), cwd=directory)
    return ServerCert(cert, key, names)


def main(argv: list[str] | None = None) -> int:
    """`python -m drills.pki --out DIR [--owner UID]`: the compose stack's init step. Writes the drill CA,
    a certificate per replica (names and addresses of drills.labconfig, the same plan as
    config/compose.yaml), the client's trust directory (DIR/client/ca.crt only: skopeo treats a .key
    without a .cert in a cert dir as an error) and a random admin token. Does nothing if DIR/ca.crt
    exists, so restarting the stack keeps its certificates."""

    parser = argparse.ArgumentParser(prog="python -m drills.pki")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--owner", type=int, help="uid (and gid) that must read the keys and token")
    args = parser.parse_args(argv)
    out: Path = args.out
    if (out / "ca.crt").exists():
        print(f"{out}/ca.crt exists: keeping the drill PKI")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    ca = make_ca(out)
    for replica in REPLICAS:
        made = make_server_cert(out, replica.name, ca, replica_names(REGISTRY, ZONE, replica.name), (replica.address,))
        made.key.chmod(0o640)
        if args.owner is not None:
            os.chown(made.key, 0, args.owner)
    (out / "client").mkdir(exist_ok=True)
    shutil.copy(ca[0], out / "client" / "ca.crt")
    token = out / "admin-token"
    token.write_text(secrets.token_urlsafe(24) + "\n")
    token.chmod(0o640)
    if args.owner is not None:
        os.chown(token, 0, args.owner)
    for leftover in out.glob("*.csr"):
        leftover.unlink()
    print(f"drill PKI written to {out}: ca.crt, " + ", ".join(f"{r.name}.crt" for r in REPLICAS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
