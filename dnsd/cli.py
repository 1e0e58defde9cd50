"""The dnsd command line: serve, check-config, explain."""
from __future__ import annotations

import argparse
import sys

from dnsd import logs, records
from dnsd.config import ConfigError, load_config
from dnsd.config.build import parse_listen


def _listen_arg(text: str) -> tuple[str, int]:
    try:
        return parse_listen(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"bad --listen {text!r}: {err or 'expected HOST:PORT'}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dnsd", description="geotm authoritative DNS and traffic manager")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="answer DNS on the configured addresses")
    serve.add_argument("--config", required=True, help="config file (YAML)")
    serve.add_argument("--listen", action="append", type=_listen_arg, metavar="HOST:PORT",
                       help="listen here instead of server.listen (repeatable)")
    serve.add_argument("--admin-listen", metavar="HOST:PORT|off", help="override admin.listen")
    serve.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    serve.add_argument("--log-level", default="info")

    check = sub.add_parser("check-config", help="validate a config, list every problem")
    check.add_argument("config", help="config file (YAML)")

    explain = sub.add_parser("explain", help="show the answer a client would get, and why")
    explain.add_argument("name")
    explain.add_argument("--config", required=True)
    explain.add_argument("--client", default="127.0.0.1", help="client source address")
    explain.add_argument("--ecs", metavar="SUBNET", help="EDNS client subnet, e.g. 198.51.100.0/24")
    explain.add_argument("--type", default="A", help="query type (default A)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.config)
    if args.command == "explain":
        return run_explain(args)
    if args.command == "serve":
        logs.configure(json={"auto": None, "json": True, "console": False}[args.log_format], level=args.log_level)
        try:
            config = load_config(args.config)
            if args.admin_listen:
                from dataclasses import replace
                listen = None if args.admin_listen == "off" else parse_listen(args.admin_listen, 8054)
                config = replace(config, admin=replace(config.admin, listen=listen))
        except (ConfigError, OSError) as err:
            print(f"dnsd: cannot start: {err}", file=sys.stderr)
            return 2
        except ValueError as err:
            print(f"dnsd: bad --admin-listen {args.admin_listen!r}: {err}", file=sys.stderr)
            return 2
        from dnsd import service, server
        try:
            server.run(service.serve(config, args.listen))
        except OSError as err:
            print(f"dnsd: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            pass
        return 0
    return 2


def check_config(path: str) -> int:
    try:
        config = load_config(path)
    except OSError as err:
        print(f"{path}: cannot read: {err.strerror or err}", file=sys.stderr)
        return 2
    except ConfigError as err:
        print(err.render(), file=sys.stderr)
        return 1
    replicas = sum(len(reg.replicas) for reg in config.registries)
    print(f"{path}: OK: zone {config.zone.name}, {len(config.registries)} registries, {replicas} replicas, "
          f"{len(config.views)} views, {len(config.zone.records)} static records")
    return 0


def run_explain(args: argparse.Namespace) -> int:
    from dnsd.explain import client_context, explain
    from dnsd.runtime import new_snapshot
    try:
        config = load_config(args.config)
    except (ConfigError, OSError) as err:
        print(f"dnsd: {err}", file=sys.stderr)
        return 2
    try:
        qtype = records.type_number(args.type)
        client = client_context(args.client, args.ecs)
    except ValueError as err:
        print(f"dnsd explain: {err}", file=sys.stderr)
        return 2
    _, text = explain(new_snapshot(config), args.name, qtype, client)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
