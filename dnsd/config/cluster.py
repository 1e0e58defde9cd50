"""The cluster section: the etcd cluster many dnsd and probes instances share (endpoints, key prefix,
TLS, auth). Absent: None, and every instance keeps to its own state files."""
from __future__ import annotations

from urllib.parse import urlsplit

from dnsd.config import keys
from dnsd.config.reader import Reader
from dnsd.config.yamlnodes import Node
from dnsd.model import ClusterSettings, EtcdSettings, EtcdTls


def cluster_section(r: Reader, node: Node | None) -> tuple[bool, ClusterSettings | None]:
    """(whether it is usable, the settings). (True, None) when absent; (False, None) when wrong (the
    problems are in r)."""
    if node is None:
        return True, None
    m = r.mapping(node, keys.CLUSTER, required=("etcd",))
    if m is None:
        return False, None
    etcd = _etcd(r, m.get("etcd"))
    return (etcd is not None), (ClusterSettings(etcd=etcd) if etcd is not None else None)


def _etcd(r: Reader, node: Node | None) -> EtcdSettings | None:
    m = r.mapping(node, keys.ETCD, required=("endpoints",))
    if m is None:
        return None
    defaults = EtcdSettings()
    endpoints = [r.scalar(item, _endpoint, "an etcd client URL like http://10.0.0.1:2379") for item in
                 r.one_or_many(m.get("endpoints"))]
    if m.get("endpoints") is not None and not endpoints:
        r.fail(m.get("endpoints"), "give at least one etcd endpoint")
        return None
    prefix = r.scalar(m.get("prefix"), _prefix, "a key prefix starting and ending with '/', like /geotm/",
                      defaults.prefix)
    timeout = r.duration(m.get("timeout"), defaults.timeout, 0.1)
    tls = _tls(r, m.get("tls"))
    username, password_file = r.string(m.get("username")), r.file_name(m.get("password_file"))
    if (username is None) != (password_file is None) and (m.get("username") or m.get("password_file")):
        r.fail(m.get("username") or m.get("password_file"), "etcd auth needs both 'username' and 'password_file'")
        return None
    if None in endpoints or None in (prefix, timeout) or tls is False:
        return None
    return EtcdSettings(endpoints=tuple(endpoints), prefix=prefix, tls=tls or None, username=username,
                        password_file=password_file, timeout=timeout)  # type: ignore[arg-type]


def _tls(r: Reader, node: Node | None) -> EtcdTls | None | bool:
    """None: absent; False: wrong (problems in r)."""
    if node is None:
        return None
    m = r.mapping(node, keys.ETCD_TLS)
    if m is None:
        return False
    cert, key = r.file_name(m.get("cert_file")), r.file_name(m.get("key_file"))
    if (cert is None) != (key is None):
        r.fail(m, "a client certificate needs both 'cert_file' and 'key_file'")
        return False
    return EtcdTls(ca_file=r.file_name(m.get("ca_file")), cert_file=cert, key_file=key)


def _endpoint(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError()
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError()
    try:
        parts.port
    except ValueError:
        raise ValueError() from None
    return value.strip().rstrip("/")


def _prefix(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/") or not value.endswith("/") or len(value) < 2:
        raise ValueError()
    return value
