"""A replica's `probe:` section: its deep-health checks and their timing (ProbeSpec). dnsd only declares
them; probes runs them exactly as built here."""
from __future__ import annotations

from dnsd.config import keys
from dnsd.config.reader import Reader
from dnsd.config.yamlnodes import Map, Node
from dnsd.model import PROBE_KINDS, ProbeCheck, ProbeSpec, StatusRange, default_of


def probe_spec(r: Reader, node: Node, addresses: list) -> ProbeSpec | None:
    """`probe:` is one check (a mapping with `kind`) or {checks: [...], interval, timeout, ...}.
    addresses: the replica's own, the address a check without one probes."""
    if isinstance(node, Map) and node.get("checks") is None:
        m = r.mapping(node, keys.CHECK + keys.PROBE_TIMING, required=("kind",))
        check_nodes = [node] if m is not None else []
        timing = m
    else:
        timing = r.mapping(node, keys.PROBE, required=("checks",),
                           what="a check (with 'kind') or {checks: [...]}")
        check_nodes = r.sequence(timing.get("checks")) if timing is not None else []
        if timing is not None and timing.get("checks") is not None and not check_nodes:
            r.fail(timing.get("checks"), "list at least one check")
    if timing is None:
        return None
    checks = [_check(r, item, addresses, with_timing=item is node) for item in check_nodes]
    values = dict(interval=r.duration(timing.get("interval"), default_of(ProbeSpec, "interval"), 0.05),
                  jitter=r.scalar(timing.get("jitter"), _fraction, "a fraction from 0 to 1",
                                  default_of(ProbeSpec, "jitter")),
                  timeout=r.duration(timing.get("timeout"), default_of(ProbeSpec, "timeout"), 0.01),
                  fall=r.integer(timing.get("fall"), 1, 100, default_of(ProbeSpec, "fall")),
                  rise=r.integer(timing.get("rise"), 1, 100, default_of(ProbeSpec, "rise")))
    if None in values.values() or None in checks or not checks:
        return None
    if values["timeout"] > values["interval"]:
        r.fail(timing.get("timeout") or timing, f"timeout {values['timeout']:g}s is longer than the interval "
                                                f"{values['interval']:g}s: rounds would overlap")
        return None
    return ProbeSpec(checks=tuple(checks), **values)


def _check(r: Reader, node: Node, addresses: list, with_timing: bool) -> ProbeCheck | None:
    """One check; with_timing: it is the whole `probe:`, so the timing keys sit beside its own."""
    m = r.mapping(node, keys.CHECK + (keys.PROBE_TIMING if with_timing else ()), required=("kind",))
    if m is None:
        return None
    kind = r.choice(m.get("kind"), PROBE_KINDS)
    if kind is None:
        return None
    default_scheme = {"https": "https", "oci": "https", "harbor": "https"}.get(kind, "http")
    scheme = r.choice(m.get("scheme"), ("http", "https"), default_scheme)
    if kind in ("http", "https") and m.get("scheme") is not None and scheme != kind:
        r.fail(m.get("scheme"), f"kind {kind} already sets the scheme; remove 'scheme' or use kind {scheme}")
    address = r.string(m.get("address"))
    if address is None and m.get("address") is None:
        if not addresses:
            r.fail(m, "give the probe an 'address': the replica has no addresses of its own to probe")
        else:
            address = str(addresses[0])
    if kind == "tcp" and m.get("port") is None:
        r.fail(m, "a tcp check needs 'port'")
    port = r.integer(m.get("port"), 1, 65535, 443 if scheme == "https" else 80)
    headers = []
    header_map = r.mapping(m.get("headers"), open_keys=True, what="a mapping of header: value")
    for key, value_node in header_map or ():
        value = r.string(value_node)
        if value is not None:
            headers.append((key, value))
    expect_node = m.get("expect_status")
    # absent: () and ProbeCheck applies the kind's default (dnsd.model owns it)
    expect = (r.scalar(expect_node, _status_ranges, "status codes like \"200-299,401\"")
              if expect_node is not None else ())
    components = tuple(c for c in (r.string(n) for n in r.sequence(m.get("components"))) if c)
    if components and kind != "harbor":
        r.fail(m.get("components"), f"'components' applies to harbor checks, not {kind}")
    for key in ("canary_manifest", "canary_blob", "write_canary"):
        if m.get(key) is not None and kind != "oci":
            r.fail(m.get(key), f"'{key}' applies to oci checks, not {kind}")
    canary_manifest = r.string(m.get("canary_manifest"))
    if canary_manifest is not None and ":" not in canary_manifest:
        r.fail(m.get("canary_manifest"), f"expected REPOSITORY:TAG, got {canary_manifest!r}")
    canary_blob = r.string(m.get("canary_blob"))
    if canary_blob is not None and "@sha256:" not in canary_blob:
        r.fail(m.get("canary_blob"), f"expected REPOSITORY@sha256:DIGEST, got {canary_blob!r}")
    values = dict(host_header=r.string(m.get("host_header")), path=r.string(m.get("path"), ""),
                  method=(r.string(m.get("method"), "GET") or "GET").upper(), body_contains=r.string(m.get("body_contains")),
                  json_path=r.string(m.get("json_path")), json_equals=r.string(m.get("json_equals")),
                  tls_verify=r.boolean(m.get("tls_verify"), True), ca_file=r.file_name(m.get("ca_file")),
                  write_canary=r.string(m.get("write_canary")))
    if m.get("path") is not None and values["path"] is not None and not values["path"].startswith("/"):
        r.fail(m.get("path"), f"path must start with '/', got {values['path']!r}")
    if None in (address, port, expect, scheme, values["path"], values["tls_verify"]):
        return None
    return ProbeCheck(kind=kind, address=address, port=port, scheme=scheme, headers=tuple(headers),
                      expect_status=expect, canary_manifest=canary_manifest, canary_blob=canary_blob,
                      components=components, **values)


def _fraction(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError()
    return float(value)


def _status_ranges(value: object) -> tuple[StatusRange, ...]:
    """'200-299,401' or 204 -> ranges; every code 100..599."""
    if isinstance(value, bool):
        raise ValueError()
    ranges = []
    for part in str(value).split(","):
        low_text, _, high_text = part.strip().partition("-")
        low = int(low_text)
        high = int(high_text) if high_text else low
        if not 100 <= low <= high <= 599:
            raise ValueError()
        ranges.append(StatusRange(low, high))
    return tuple(ranges)
