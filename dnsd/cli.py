"""The dnsd command line: serve, check-config, explain, and the operator commands (status, drain...,
flush).

Heavy modules (aiohttp, structlog, prometheus_client, uvloop, dnslib, the engine) are imported inside
the commands that need them, to save start-up time: the operator commands are run by hand and must
start fast (they need only the config reader and urllib)."""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from dataclasses import replace

from dnsd import records
from dnsd.common.cliutil import add_version, quiet_broken_pipe
from dnsd.config import ConfigError, load_config
from dnsd.config.build import load_admin_settings
from dnsd.config.server import parse_listen


def _listen_arg(text: str) -> tuple[str, int]:
    try:
        return parse_listen(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"bad --listen {text!r}: {err or 'expected HOST:PORT'}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dnsd", description="geotm authoritative DNS and traffic manager")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="answer DNS on the configured addresses")
    serve.add_argument("--config", required=True, help="config file (YAML)")
    serve.add_argument("--listen", action="append", type=_listen_arg, metavar="HOST:PORT",
                       help="listen here instead of server.listen (repeatable)")
    serve.add_argument("--admin-listen", metavar="HOST:PORT|off", help="override admin.listen")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="N processes on the same addresses (SO_REUSEPORT); worker 0 serves the admin API")
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-state-dir", help=argparse.SUPPRESS)
    serve.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    serve.add_argument("--log-level", default="info")

    check = sub.add_parser("check-config", help="validate a config, list every problem")
    check.add_argument("config", nargs="?", help="config file (YAML)")
    check.add_argument("--config", dest="config_option", metavar="CONFIG", help="the same, as an option")

    explain = sub.add_parser("explain", help="show the answer a client would get, and why")
    explain.add_argument("name")
    explain.add_argument("--config", required=True)
    explain.add_argument("--client", default="127.0.0.1", help="client source address")
    explain.add_argument("--ecs", metavar="SUBNET", help="EDNS client subnet, e.g. 198.51.100.0/24")
    explain.add_argument("--type", default="A", help="query type (default A)")
    explain.add_argument("--live", action="store_true",
                         help="ask the running dnsd (its health and overrides) instead of the config alone")

    def admin_command(name: str, help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--config", required=True, help="config file: where the admin API is, its token")
        command.add_argument("--actor", help="who you are, for the audit log (default: user@host)")
        command.add_argument("--json", action="store_true", help="print the API's JSON answer")
        return command

    admin_command("status", "registries and replicas as the running dnsd sees them")
    for name, help_text in (("drain", "take a replica out of the global name (regional/data names keep answering)"),
                            ("force-down", "treat a replica as degraded whatever probes say"),
                            ("force-up", "treat a replica as online whatever probes say")):
        command = admin_command(name, help_text)
        command.add_argument("registry")
        command.add_argument("replica")
        command.add_argument("--for", dest="duration", metavar="DURATION", help="expire after e.g. 30m, 2h")
        command.add_argument("--reason", default="", help="why, for the audit log and the status page")
        command.add_argument("--force", action="store_true", help="even if it is the last serving replica")
    for name, help_text in (("undrain", "undo a drain"), ("release", "undo any override of the replica")):
        command = admin_command(name, help_text)
        command.add_argument("registry")
        command.add_argument("replica")
        command.add_argument("--reason", default="")
    admin_command("reload", "re-read the config file; on any problem the old config keeps serving")
    flush = admin_command("flush", "forget the forwarding cache's answers for a name (every type), or all")
    which = flush.add_mutually_exclusive_group(required=True)
    which.add_argument("name", nargs="?", help="e.g. registry-1.docker.io")
    which.add_argument("--all", action="store_true", help="empty the whole forwarding cache")
    audit = admin_command("audit", "the audit log: who changed what, when and why")
    audit.add_argument("--limit", type=int, default=50)
    return parser


@quiet_broken_pipe
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "check-config":
        if args.config and args.config_option and args.config != args.config_option:
            parser.error(f"check-config: two different configs given: {args.config} and --config {args.config_option}")
        if not (args.config or args.config_option):
            parser.error("check-config: which config? give its path (or --config PATH)")
        return check_config(args.config or args.config_option)
    if args.command == "explain":
        return run_explain(args)
    if args.command in ADMIN_COMMANDS:
        return run_admin(args)
    if args.command == "serve":
        return run_serve(args, argv)
    return 2


def run_serve(args: argparse.Namespace, argv: list[str] | None) -> int:
    from dnsd.common import logs  # start-up: structlog, for `serve` only
    logs.configure(json={"auto": None, "json": True, "console": False}[args.log_format], level=args.log_level)
    try:
        config = load_config(args.config, time.time())  # also in the supervisor: a broken config fails before any fork
        if args.admin_listen:
            listen = None if args.admin_listen == "off" else parse_listen(args.admin_listen, 8054)
            config = replace(config, admin=replace(config.admin, listen=listen))
    except (ConfigError, OSError) as err:
        print(f"dnsd: cannot start: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"dnsd: bad --admin-listen {args.admin_listen!r}: {err}", file=sys.stderr)
        return 2
    if args.workers > 1 and args.worker_index is None:
        from dnsd.protocol.workers import supervise  # start-up: only the supervisor needs it
        return supervise(list(argv if argv is not None else sys.argv[1:]), args.workers)
    from dnsd import app  # start-up: aiohttp, uvloop and the server, for `serve` only
    from dnsd.common import lifecycle  # start-up: with app, for `serve` only
    worker = None
    if args.worker_index is not None:
        worker = app.WorkerRole(args.worker_index, args.worker_state_dir)
        if config.admin.state_file is None and args.worker_state_dir:
            # workers share overrides through a file: worker 0 writes it, the others follow it
            shared = f"{args.worker_state_dir}/overrides.json"
            config = replace(config, admin=replace(config.admin, state_file=shared))
    from dnsd.routing.geoip import GeoIPError  # start-up: with app, for `serve` only
    try:
        lifecycle.run(app.serve(config, args.listen, worker))
    except OSError as err:
        print(f"dnsd: {err}", file=sys.stderr)
        return 1
    except GeoIPError as err:
        print(f"dnsd: cannot start: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def check_config(path: str) -> int:
    try:
        config = load_config(path)
    except OSError as err:
        print(f"{path}: cannot read: {err.strerror or err}", file=sys.stderr)
        return 2
    except ConfigError as err:
        print(err.render(), file=sys.stderr)
        return 1
    geoip_summary = ""
    if config.topology.geoip is not None:  # the database is read and compiled as dnsd would
        from dnsd.routing import geoip  # start-up: maxminddb, only for a config with a GeoIP database
        try:
            geoip_summary = f"; geoip: {geoip.load(config.topology).stats.describe()}"
        except geoip.GeoIPError as err:
            print(f"1 problem in config:\n  {err}", file=sys.stderr)
            return 1
    replicas = sum(len(reg.replicas) for reg in config.registries)
    forward = config.forward
    forwarding = (f", forwarding to {len(forward.upstreams)} upstreams for {len(forward.clients)} client networks"
                  if forward is not None else "")
    print(f"{path}: OK: zone {config.zone.name}, {len(config.registries)} registries, {replicas} replicas, "
          f"{len(config.views)} views, {len(config.zone.records)} static records{forwarding}{geoip_summary}")
    return 0


ADMIN_COMMANDS = ("status", "drain", "force-down", "force-up", "undrain", "release", "reload", "flush", "audit")
OVERRIDE_KINDS = {"drain": "drain", "force-down": "force_down", "force-up": "force_up"}


def run_admin(args: argparse.Namespace) -> int:
    from dnsd.ops.adminclient import AdminClient, AdminClientError  # start-up: not needed by serve/check-config
    try:
        client = AdminClient(load_admin_settings(args.config), args.actor)
        if args.command == "status":
            status, body = client.call("GET", "/v1/status")
        elif args.command in OVERRIDE_KINDS:
            request = {"registry": args.registry, "replica": args.replica, "kind": OVERRIDE_KINDS[args.command],
                       "reason": args.reason, "force": args.force}
            if args.duration:
                request["duration"] = args.duration
            status, body = client.call("POST", "/v1/overrides", request)
        elif args.command in ("undrain", "release"):
            query = {"reason": args.reason}
            if args.command == "undrain":
                query["kind"] = "drain"
            path = (f"/v1/overrides/{urllib.parse.quote(args.registry)}/{urllib.parse.quote(args.replica)}?"
                    + urllib.parse.urlencode(query))
            status, body = client.call("DELETE", path)
        elif args.command == "reload":
            status, body = client.call("POST", "/v1/reload", {})
        elif args.command == "flush":
            status, body = client.call("POST", "/v1/flush", {"all": True} if args.all else {"name": args.name})
        else:
            status, body = client.call("GET", f"/v1/audit?limit={args.limit}")
    except (ConfigError, OSError) as err:
        print(f"dnsd {args.command}: {err}", file=sys.stderr)
        return 2
    except AdminClientError as err:
        print(f"dnsd {args.command}: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True))
    elif status >= 300:
        print(render_refusal(args.command, status, body), file=sys.stderr)
    else:
        print(render_admin_answer(args.command, body))
    return 0 if status < 300 else 1


def render_refusal(command: str, status: int, body: dict) -> str:
    """Why the API said no: its error, or (a refused reload) each problem once, one per line."""
    problems = body.get("problems") or []
    if problems:
        still = f"; still serving version {body['version']}" if body.get("version") else ""
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        head = f"dnsd {command}: refused (HTTP {status}): {body.get('error') or count}{still}"
    else:
        head = f"dnsd {command}: refused (HTTP {status}): {body.get('error') or 'no reason given'}"
    return "\n".join([head] + [f"  {problem}" for problem in problems])


def _cluster_lines(cluster: dict) -> list[str]:
    instances = cluster["instances"]
    lagging = sum(1 for member in instances if member["problems"])
    lines = [f"cluster: {len(instances)} dnsd instance{'' if len(instances) == 1 else 's'}"
             f"{f', {lagging} OUT OF STEP' if lagging else ', all in step'}"
             f"{'' if cluster['connected'] else ' (this one cannot reach etcd: as last seen)'}"]
    for member in instances:
        synced = f"synced {member['last_sync_age_seconds']:g}s ago" if member["last_sync_age_seconds"] is not None \
            else "never synced"
        lines.append(f"  {member['instance']}{' (this one)' if member['self'] else ''}: dns "
                     f"{','.join(member['dns'])} admin {member['admin'] or 'off'}, config {member['config_version']}, "
                     f"health generation {member['health_generation']}, overrides revision "
                     f"{member['overrides_revision']}, {synced}")
        lines += [f"    OUT OF STEP: {problem}" for problem in member["problems"]]
    return lines


def render_admin_answer(command: str, body: dict) -> str:
    if command == "status":
        lines = [f"config {body['config']['version']} ({body['config']['source']}), generation {body['generation']}"]
        if "queries" in body:
            from dnsd.ops.statuspage import queries_text  # start-up: for `dnsd status` only
            lines.append(queries_text(body["queries"]))
        if body["health"]["expired"]:
            lines.append("HEALTH EXPIRED: failing open, every replica counts as online")
        for registry in body["registries"]:
            lines.append(f"{registry['name']}: {registry['routing']} routing, all-down policy "
                         f"{registry['all_down_policy']}{' (ACTIVE)' if registry['all_down_active'] else ''}")
            for rep in registry["replicas"]:
                override = rep["override"]
                extra = f"  [{override['kind']} by {override['actor']}: {override['reason']}]" if override else ""
                serving = "serving" if rep["serving"] else "not serving"
                lines.append(f"  {rep['name']:<16} {rep['status']:<9} {serving:<12} {rep['reason']}{extra}")
        if "cluster" in body:
            lines += _cluster_lines(body["cluster"])
        if "forwarding" in body:
            from dnsd.ops.statuspage import forwarding_summary  # start-up: for `dnsd status` only
            lines.append("forwarding: " + forwarding_summary(body["forwarding"]))
            lines += [f"  upstream {up['address']}: srtt {up['srtt_ms']:g} ms, {up['queries']} queries, "
                      f"{up['answers']} answers" + "".join(f", {kind} {n}" for kind, n in up["errors"].items())
                      for up in body["forwarding"]["upstreams"]]
        return "\n".join(lines)
    if command in OVERRIDE_KINDS:
        until = (f" until {time.strftime('%H:%M:%S', time.localtime(body['expires_at']))}"
                 if body.get("expires_at") else " until undone")
        return f"{body['kind']} {body['registry']}/{body['replica']}{until}"
    if command in ("undrain", "release"):
        removed = body["removed"]
        return f"removed {removed['kind']} of {removed['registry']}/{removed['replica']}"
    if command == "reload":
        lines = [f"reloaded: version {body['version']}"] + [f"  {change}" for change in body["changes"]]
        lines += [f"  needs a restart to take effect: {item}" for item in body["needs_restart"]]
        return "\n".join(lines)
    if command == "flush":
        what = f"of {body['name']}" if body["name"] is not None else "(the whole cache)"
        return f"flushed {body['flushed']} cached answer{'' if body['flushed'] == 1 else 's'} {what}"
    return "\n".join(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e['at']))} {e['actor']}: "
                     f"{e['action']} {_audit_subject(e)} {e.get('reason', '')}".rstrip() for e in body["entries"])


def _audit_subject(entry: dict) -> str:
    """What an audit entry is about: an override's kind and replica, a flushed name, a reload's source."""
    if entry["action"] == "flush":
        return f"{entry.get('name', '')} ({entry.get('entries', 0)} entries)"
    return f"{entry.get('kind', '')} {entry.get('registry', '')}/{entry.get('replica', '')}"


def run_explain(args: argparse.Namespace) -> int:
    from dnsd.ops.explain import client_context, explain  # start-up: the query engine, for explain only
    from dnsd.serving.runtime import new_snapshot  # start-up: as above
    try:
        qtype = records.type_number(args.type)
        client = client_context(args.client, args.ecs)
    except ValueError as err:
        print(f"dnsd explain: {err}", file=sys.stderr)
        return 2
    if args.live:
        return explain_live(args)
    try:
        config = load_config(args.config, time.time())  # the answers show the SOA an auto serial would have now
    except (ConfigError, OSError) as err:
        print(f"dnsd: {err}", file=sys.stderr)
        return 2
    _, text = explain(new_snapshot(config), args.name, qtype, client)
    print("from the config alone: assumes every replica online and no overrides "
          "(--live asks the running dnsd for its health and overrides)")
    print(text)
    return 0


def explain_live(args: argparse.Namespace) -> int:
    """Ask the running dnsd: its health, overrides and config, which may differ from the file's."""
    from dnsd.ops.adminclient import AdminClient, AdminClientError  # start-up: not needed by serve/check-config
    query = {"name": args.name, "client": args.client, "type": args.type}
    if args.ecs:
        query["ecs"] = args.ecs
    try:
        client = AdminClient(load_admin_settings(args.config))
        status, body = client.call("GET", "/v1/explain?" + urllib.parse.urlencode(query))
    except (ConfigError, OSError) as err:
        print(f"dnsd explain: {err}", file=sys.stderr)
        return 2
    except AdminClientError as err:
        print(f"dnsd explain: {err}", file=sys.stderr)
        return 1
    print(body.get("explanation") or body.get("error"))
    return 0 if status < 300 else 1


if __name__ == "__main__":
    sys.exit(main())
