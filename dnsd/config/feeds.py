"""The two ends of the health feed: the probes section (where probes serves its verdicts, TLS, token,
webhook) and the health section (the feeds dnsd polls, their quorum, expiry, CA and token)."""
from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from dnsd.config import keys
from dnsd.config.reader import Reader
from dnsd.config.server import parse_listen
from dnsd.config.yamlnodes import Map, Node, Scalar
from dnsd.model import FeedAccess, HealthFeedSettings, ProbesSettings, Webhook, default_of, frozen_map


def probes_section(r: Reader, node: Node | None) -> ProbesSettings | None:
    if node is None:
        return ProbesSettings()
    m = r.mapping(node, keys.PROBES)
    if m is None:
        return None
    defaults = ProbesSettings()
    listen = r.scalar(m.get("listen"), lambda v: parse_listen(str(v), 8053),
                      "HOST:PORT like 127.0.0.1:8053", defaults.listen)
    webhook = None
    wm = r.mapping(m.get("webhook"), keys.WEBHOOK, required=("url",))
    if wm is not None:
        wd = Webhook(url="")
        url = r.scalar(wm.get("url"), _http_url, "an http:// or https:// URL")
        values = dict(timeout=r.duration(wm.get("timeout"), wd.timeout, 0.01),
                      retries=r.integer(wm.get("retries"), 0, 100, wd.retries),
                      backoff=r.duration(wm.get("backoff"), wd.backoff, 0.0))
        secret_file = r.file_name(wm.get("secret_file"))
        if url is not None and None not in values.values():
            webhook = Webhook(url=url, secret_file=secret_file, **values)
    tls = r.mapping(m.get("tls"), keys.PROBES_TLS, required=("cert_file", "key_file"),
                    what="{cert_file: PEM, key_file: PEM}")
    cert_file = r.file_name(tls.get("cert_file")) if tls is not None else None
    key_file = r.file_name(tls.get("key_file")) if tls is not None else None
    token_file = r.file_name(m.get("token_file"))
    public_metrics = r.boolean(m.get("public_metrics"), defaults.public_metrics)
    if token_file is not None and tls is None and listen is not None and not _loopback(listen[0]):
        r.fail(m.get("token_file"), f"probes listens on {listen[0]} without tls: the token (and the verdicts) "
                                    "would cross the network in clear; add probes.tls or listen on loopback")
    if public_metrics is False and token_file is None:
        r.fail(m.get("public_metrics"), "public_metrics: false needs probes.token_file (else nobody can scrape)")
    max_concurrent = r.integer(m.get("max_concurrent"), 1, 10_000, defaults.max_concurrent)
    registry_credentials = r.file_name(m.get("registry_credentials"))
    if listen is None or max_concurrent is None or public_metrics is None:
        return None
    return ProbesSettings(listen=listen, max_concurrent=max_concurrent, webhook=webhook,
                          state_file=r.file_name(m.get("state_file")), tls_cert_file=cert_file,
                          tls_key_file=key_file, token_file=token_file, public_metrics=public_metrics,
                          registry_credentials=registry_credentials)


def health_section(r: Reader, node: Node | None) -> HealthFeedSettings | None:
    if node is None:
        return HealthFeedSettings()
    m = r.mapping(node, keys.HEALTH)
    if m is None:
        return None
    access = _feed_access(r, m, FeedAccess())
    feeds, per_feed = [], {}
    for item in r.one_or_many(m.get("feeds")):
        fm = item if isinstance(item, Map) else None
        if fm is not None:  # {url, ca_file, token_file}: this feed's own TLS trust and token
            r.mapping(fm, keys.FEED, required=("url",))
        url_node = fm.get("url") if fm is not None else item
        url = r.scalar(url_node, _http_url, "an http:// or https:// URL, or {url, ca_file, token_file}")
        if url is None:
            continue
        if url in feeds:
            r.fail(url_node, f"feed {url} is listed twice")
            continue
        feeds.append(url)
        own = _feed_access(r, fm, access) if fm is not None else access
        if own != access:
            per_feed[url] = own
        _check_feed_access(r, url, own, fm, url_node)
    if m.get("ca_file") is not None and feeds and not any(f.startswith("https:") for f in feeds):
        r.fail(m.get("ca_file"), "ca_file applies to https feeds, and every feed listed is plain http")
    quorum_node = m.get("quorum")
    quorum = 0
    if quorum_node is not None and not (isinstance(quorum_node, Scalar) and quorum_node.value == "majority"):
        quorum = r.integer(quorum_node, 1, 100, expected="'majority' or a number of feeds")
        if quorum is not None and quorum > len(feeds):
            r.fail(quorum_node, f"quorum {quorum} is more than the {len(feeds)} feeds listed")
    values = dict(poll_interval=r.duration(m.get("poll_interval"), default_of(HealthFeedSettings, "poll_interval"), 0.05),
                  ttl=r.duration(m.get("ttl"), default_of(HealthFeedSettings, "ttl"), 0.1))
    if quorum is None or None in values.values():
        return None
    if values["ttl"] < values["poll_interval"]:
        r.fail(m.get("ttl"), f"ttl {values['ttl']:g}s is shorter than poll_interval {values['poll_interval']:g}s: "
                             "health would expire between polls")
    return HealthFeedSettings(feeds=tuple(feeds), quorum=quorum, state_file=r.file_name(m.get("state_file")),
                              access=access, feed_access=frozen_map(per_feed), **values)


def _feed_access(r: Reader, m: Map, defaults: FeedAccess) -> FeedAccess:
    return FeedAccess(ca_file=r.file_name(m.get("ca_file")) or defaults.ca_file,
                      token_file=r.file_name(m.get("token_file")) or defaults.token_file)


def _check_feed_access(r: Reader, url: str, access: FeedAccess, where: Map | None, url_node: Node) -> None:
    """A CA file means TLS; a token over plain HTTP beyond loopback is readable on the path."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if where is not None and where.get("ca_file") is not None:
        r.fail(where.get("ca_file"), f"ca_file applies to https feeds, and {url} is plain http")
    if access.token_file is not None and not _loopback(parts.hostname or ""):
        r.fail(url_node, f"feed {url} is plain http beyond loopback: its bearer token would cross the "
                         "network in clear; use https (with ca_file)")


def _loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1): traffic that never leaves the machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _http_url(value: object) -> str:
    text = str(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError()
    return text
