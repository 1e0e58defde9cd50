"""The server and admin sections: DNS listeners, TCP limits and response rate limiting; the admin API's
address and token. Also how a listen address is read (the CLIs' --listen options read it the same way)."""
from __future__ import annotations

from dnsd.common.hostport import parse_host_port
from dnsd.config import keys
from dnsd.config.reader import Reader
from dnsd.config.yamlnodes import Map, Node, Scalar
from dnsd.model import AdminSettings, RateLimitSettings, ServerSettings


def parse_listen(text: str, default_port: int = 5353) -> tuple[str, int]:
    """A listen address: an IP (not a name, so we bind what the operator meant) and a port."""
    return parse_host_port(text, default_port, require_ip=True)


def server_section(r: Reader, node: Node | None) -> ServerSettings | None:
    if node is None:
        return ServerSettings()
    m = r.mapping(node, keys.SERVER)
    if m is None:
        return None
    rate_limit = _rate_limit(r, m.get("rate_limit"))
    listen = []
    for item in r.one_or_many(m.get("listen")):
        parsed = r.scalar(item, lambda v: parse_listen(str(v)), "HOST:PORT like 127.0.0.1:5353 or [::1]:53")
        if parsed:
            listen.append(parsed)
    defaults = ServerSettings()
    idle = r.duration(m.get("tcp_idle_timeout"), defaults.tcp_idle_timeout, 0.1) or defaults.tcp_idle_timeout
    return ServerSettings(
        listen=tuple(listen) or defaults.listen,
        edns_udp_size=r.integer(m.get("edns_udp_size"), 512, 4096, defaults.edns_udp_size) or defaults.edns_udp_size,
        tcp_idle_timeout=idle,
        tcp_max_connections=r.integer(m.get("tcp_max_connections"), 1, 1_000_000,
                                      defaults.tcp_max_connections) or defaults.tcp_max_connections,
        rate_limit=rate_limit,
        **_tcp_limits(r, m, defaults, idle),
    )


def _tcp_limits(r: Reader, m: Map, defaults: ServerSettings, idle: float) -> dict:
    """server.tcp_*: per-source cap and the short idle timeout under load; fd_reserve."""
    under_load = r.duration(m.get("tcp_idle_timeout_under_load"), defaults.tcp_idle_timeout_under_load,
                            0.01) or defaults.tcp_idle_timeout_under_load
    node = m.get("tcp_idle_timeout_under_load")
    if node is not None and under_load > idle:
        r.fail(node, f"must not be longer than tcp_idle_timeout ({idle:g}s), got {under_load:g}s")
    prefix_v4 = r.integer(m.get("tcp_source_prefix_v4"), 0, 32, defaults.tcp_source_prefix_v4)
    prefix_v6 = r.integer(m.get("tcp_source_prefix_v6"), 0, 128, defaults.tcp_source_prefix_v6)
    return dict(
        tcp_idle_timeout_under_load=under_load,
        tcp_max_connections_per_source=r.integer(
            m.get("tcp_max_connections_per_source"), 1, 1_000_000,
            defaults.tcp_max_connections_per_source) or defaults.tcp_max_connections_per_source,
        tcp_source_prefix_v4=prefix_v4 if prefix_v4 is not None else defaults.tcp_source_prefix_v4,
        tcp_source_prefix_v6=prefix_v6 if prefix_v6 is not None else defaults.tcp_source_prefix_v6,
        fd_reserve=r.integer(m.get("fd_reserve"), 16, 1_000_000, defaults.fd_reserve) or defaults.fd_reserve,
    )


def _rate_limit(r: Reader, node: Node | None) -> RateLimitSettings | None:
    """server.rate_limit: absent means off; a mapping (even empty) turns it on with the defaults."""
    m = r.mapping(node, keys.RATE_LIMIT)
    if m is None:
        return None
    d = RateLimitSettings()
    exempt = [r.network(item) for item in r.one_or_many(m.get("exempt"))]
    values = dict(
        responses_per_second=r.integer(m.get("responses_per_second"), 1, 1_000_000, d.responses_per_second),
        slip=r.integer(m.get("slip"), 0, 10, d.slip),
        ipv4_prefix_length=r.integer(m.get("ipv4_prefix_length"), 8, 32, d.ipv4_prefix_length),
        ipv6_prefix_length=r.integer(m.get("ipv6_prefix_length"), 16, 128, d.ipv6_prefix_length),
        table_size=r.integer(m.get("table_size"), 1_000, 10_000_000, d.table_size),
    )
    optional = dict(
        nxdomains_per_second=r.integer(m.get("nxdomains_per_second"), 1, 1_000_000, d.nxdomains_per_second),
        errors_per_second=r.integer(m.get("errors_per_second"), 1, 1_000_000, d.errors_per_second),
    )
    if None in values.values() or None in exempt or any(
            m.get(key) is not None and value is None for key, value in optional.items()):
        return None
    return RateLimitSettings(exempt=tuple(exempt), **values, **optional)  # type: ignore[arg-type]


def admin_section(r: Reader, node: Node | None) -> AdminSettings | None:
    defaults = AdminSettings()
    if node is None:
        return defaults
    m = r.mapping(node, keys.ADMIN)
    if m is None:
        return None
    listen_node = m.get("listen")
    if isinstance(listen_node, Scalar) and listen_node.value in ("off", False):
        listen = None
    else:
        listen = r.scalar(listen_node, lambda v: parse_listen(str(v), 8054),
                          "HOST:PORT like 127.0.0.1:8054, or off", defaults.listen)
        if listen is None:
            return None
    values = dict(public_metrics=r.boolean(m.get("public_metrics"), True),
                  public_status_page=r.boolean(m.get("public_status_page"), True))
    if None in values.values():
        return None
    return AdminSettings(listen=listen, token_file=r.file_name(m.get("token_file")),
                         token_env=r.string(m.get("token_env"), defaults.token_env),
                         state_file=r.file_name(m.get("state_file")), **values)
