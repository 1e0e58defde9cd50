"""The geotm-backend command line: serve the stand-in replicas of a config, and fail/restore/status them through the control listener.

    geotm-backend serve --config FILE [--control HOST:PORT] [--tls-cert FILE --tls-key FILE] [--token-auth FILE]
    geotm-backend serve --target REGISTRY/REPLICA=HOST:PORT[,HOST:PORT] ...   (no config needed)
    geotm-backend fail REPLICA [--registry NAME] [--mode unhealthy|readonly|slow|garbage|refuse] [--delay S] [--reason TEXT]
    geotm-backend restore REPLICA [--registry NAME]
    geotm-backend status [--json]
Exit status: 0 done, 1 failed (cannot bind, cannot reach the control listener, unknown replica), 2 usage or config error.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from typing import Any

import structlog

from dnsd.common import logs
from dnsd.config import ConfigError, load_config
from dnsd.common.cliutil import add_version, quiet_broken_pipe
from dnsd.common.hostport import parse_host_port
from dnsd.common.lifecycle import StopSignals

from standin.app import DEFAULT_CONTROL, Backend
from standin.controlclient import ControlClient, ControlError
from standin.faults import MAX_DELAY, MODES
from standin.targets import make_targets, targets_from_config
from standin.tokens import TokenAuth

log = structlog.get_logger(__name__)


def _control_arg(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text, DEFAULT_CONTROL[1], require_ip=False)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"bad --control {text!r}: {err}") from None


def _target_arg(text: str) -> tuple[str, str, list[tuple[str, int]]]:
    name, sep, addresses = text.partition("=")
    registry, slash, replica = name.partition("/")
    if not sep or not slash or not registry or not replica:
        raise argparse.ArgumentTypeError(f"bad --target {text!r}: expected REGISTRY/REPLICA=HOST:PORT[,HOST:PORT]")
    try:
        listeners = [parse_host_port(part, require_ip=False) for part in addresses.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"bad --target {text!r}: {err}") from None
    if not listeners:
        raise argparse.ArgumentTypeError(f"bad --target {text!r}: give at least one HOST:PORT")
    return registry, replica, listeners


def _delay_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_DELAY:
        raise argparse.ArgumentTypeError(f"bad --delay {text!r}: seconds from 0 to {MAX_DELAY:g}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geotm-backend",
                                     description="stand-in registry backend with switchable failure modes")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    control_help = f"control listener (default {DEFAULT_CONTROL[0]}:{DEFAULT_CONTROL[1]})"

    serve = sub.add_parser("serve", help="serve every probed replica of a config")
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="geotm config (YAML): replicas with probe checks are served")
    source.add_argument("--target", action="append", type=_target_arg, metavar="REGISTRY/REPLICA=HOST:PORT[,...]",
                        help="serve this replica here (repeatable), instead of --config")
    serve.add_argument("--control", type=_control_arg, default=DEFAULT_CONTROL, metavar="HOST:PORT", help=control_help)
    serve.add_argument("--tls-cert", help="certificate (PEM) for listeners dialed by https checks "
                                          "(with --target: for every listener)")
    serve.add_argument("--tls-key", help="private key (PEM) of --tls-cert")
    serve.add_argument("--token-auth", metavar="FILE", help="token mode: /v2 needs a bearer token from /token, "
                       "issued to the users of FILE (lines user:password), like distribution with auth: token")
    serve.add_argument("--token-ttl", type=_delay_arg, default=300.0, metavar="SECONDS",
                       help="how long an issued token is valid (expires_in; default 300)")
    serve.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    serve.add_argument("--log-level", default="info")

    fail = sub.add_parser("fail", help="put a replica into a failure mode")
    fail.add_argument("replica")
    fail.add_argument("--registry", help="only this registry's replica (default: every registry that has it)")
    fail.add_argument("--mode", choices=[m for m in MODES if m != "healthy"], default="unhealthy")
    fail.add_argument("--delay", type=_delay_arg, help="seconds each response waits, for --mode slow (default 30)")
    fail.add_argument("--reason", help="error text the health endpoints report (unhealthy, readonly)")
    fail.add_argument("--control", type=_control_arg, default=DEFAULT_CONTROL, metavar="HOST:PORT", help=control_help)

    restore = sub.add_parser("restore", help="make a replica healthy again (re-binds refused listeners)")
    restore.add_argument("replica")
    restore.add_argument("--registry", help="only this registry's replica (default: every registry that has it)")
    restore.add_argument("--control", type=_control_arg, default=DEFAULT_CONTROL, metavar="HOST:PORT", help=control_help)

    status = sub.add_parser("status", help="list replicas and their modes")
    status.add_argument("--json", action="store_true", help="print the control API's JSON")
    status.add_argument("--control", type=_control_arg, default=DEFAULT_CONTROL, metavar="HOST:PORT", help=control_help)
    return parser


@quiet_broken_pipe
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    try:
        if args.command == "status":
            return status(args)
        mode = "healthy" if args.command == "restore" else args.mode
        return change_mode(args, mode)
    except ControlError as err:
        print(f"geotm-backend: {err}", file=sys.stderr)
        return 1


# -- serve ---------------------------------------------------------------------------------------

def serve(args: argparse.Namespace) -> int:
    try:
        if args.config:
            try:
                config = load_config(args.config)
            except OSError as err:
                print(f"geotm-backend: cannot read {args.config}: {err.strerror or err}", file=sys.stderr)
                return 2
            except ConfigError as err:
                print(err.render(), file=sys.stderr)
                return 2
            targets = targets_from_config(config)
            if not targets:
                print(f"geotm-backend: no replica in {args.config} has probe checks: nothing to serve",
                      file=sys.stderr)
                return 2
        else:  # with --tls-cert, every --target listener serves TLS
            everywhere = [where for _reg, _rep, listeners in args.target for where in listeners]
            targets = make_targets(args.target, tls=everywhere if args.tls_cert else ())
    except ValueError as err:
        print(f"geotm-backend: {err}", file=sys.stderr)
        return 2
    context = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            print("geotm-backend: give both --tls-cert and --tls-key", file=sys.stderr)
            return 2
        try:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as err:
            print(f"geotm-backend: cannot load TLS certificate: {err}", file=sys.stderr)
            return 2
    token_auth = None
    if args.token_auth:
        try:
            token_auth = TokenAuth.from_file(args.token_auth, args.token_ttl)
        except (OSError, ValueError) as err:
            print(f"geotm-backend: cannot use --token-auth: {err}", file=sys.stderr)
            return 2
    logs.configure(json={"auto": None, "json": True, "console": False}[args.log_format], level=args.log_level)
    try:
        asyncio.run(_serve(Backend(targets, context, token_auth), args.control))
    except OSError as err:
        print(f"geotm-backend: {err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


async def _serve(backend: Backend, control: tuple[str, int]) -> None:
    stop = StopSignals()
    try:
        await backend.start()
        await backend.start_control(*control)
        log.info("ready", replicas=len(backend.replicas))
        await stop.wait()
        log.info("stopping")
    finally:
        stop.close()
        await backend.close()
    log.info("stopped")


# -- fail, restore, status ------------------------------------------------------------------------

def change_mode(args: argparse.Namespace, mode: str) -> int:
    client = ControlClient(args.control)
    for replica in client.matching(args.replica, args.registry):
        state = client.set_mode(replica["registry"], replica["replica"], mode,
                                getattr(args, "delay", None), getattr(args, "reason", None))
        print(_line(state))
    return 0


def status(args: argparse.Namespace) -> int:
    replicas = ControlClient(args.control).replicas()
    if args.json:
        print(json.dumps(replicas, indent=2))
        return 0
    for state in replicas:
        print(_line(state))
    return 0


def _line(state: dict[str, Any]) -> str:
    mode = state["mode"]
    if state.get("delay") is not None:
        mode += f" ({state['delay']:g}s)"
    if state.get("reason"):
        mode += f": {state['reason']}"
    where = ", ".join(state.get("listeners", []))
    listening = "" if state.get("listening") else " [not listening]"
    return f"{state['registry']}/{state['replica']}  {mode}  {where}{listening}"


if __name__ == "__main__":
    sys.exit(main())
