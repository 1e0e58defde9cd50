"""The probes command line: serve (probe replicas, publish verdicts) and budget."""
from __future__ import annotations

import argparse
import asyncio
import sys

import structlog

from dnsd import logs
from dnsd.config import ConfigError, load_config
from dnsd.config.build import parse_listen

log = structlog.get_logger("probes")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probes", description="geotm deep-health probes for registry replicas")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="probe every replica and serve the verdicts to dnsd")
    serve.add_argument("--config", required=True)
    serve.add_argument("--listen", metavar="HOST:PORT", help="override probes.listen")
    serve.add_argument("--state-file", help="override probes.state_file")
    serve.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    budget = sub.add_parser("budget", help="worst-case failover and recovery times from the config")
    budget.add_argument("--config", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except (ConfigError, OSError) as err:
        print(f"probes: cannot use {args.config}: {err}", file=sys.stderr)
        return 2
    if args.command == "budget":
        from dnsd.budget import render
        print(render(config))
        return 0
    logs.configure(json={"auto": None, "json": True, "console": False}[args.log_format])
    settings = config.probes
    try:
        if args.listen:
            from dataclasses import replace
            settings = replace(settings, listen=parse_listen(args.listen, 8053))
        if args.state_file:
            from dataclasses import replace
            settings = replace(settings, state_file=args.state_file)
    except ValueError as err:
        print(f"probes: bad --listen: {err}", file=sys.stderr)
        return 2
    from dnsd.server import run
    try:
        run(serve(config, settings))
    except OSError as err:
        print(f"probes: {err}", file=sys.stderr)
        return 1
    return 0


async def serve(config, settings) -> None:
    from aiohttp import web

    from dnsd.server import StopSignals
    from probes.api import make_app
    from probes.scheduler import ProbeService, transition_event
    from probes.targets import targets_of
    from probes.webhook import Notifier

    stop = StopSignals()
    service = ProbeService(targets_of(config), settings,
                           verdict_ttl=config.health.ttl if config.health.feeds else None)
    runner = web.AppRunner(make_app(service), access_log=None)
    await runner.setup()
    host, port = settings.listen
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as err:
        await runner.cleanup()
        raise OSError(err.errno, f"cannot listen on {host}:{port} (http): {err.strerror}") from None
    await service.start()
    notifier_task = None
    if settings.webhook is not None:
        assert service.session is not None
        notifier = Notifier(settings.webhook, service.session)
        service.on_transition.append(lambda target, moved, _state: notifier.notify(
            transition_event(target, moved, service.instance)))
        notifier_task = asyncio.create_task(notifier.run())
    log.info("probes_started", config=config.source, targets=len(service.targets), listen=f"{host}:{port}",
             webhook=settings.webhook.url if settings.webhook else None, state_file=settings.state_file)
    try:
        await stop.wait()
    finally:
        stop.close()
        log.info("probes_stopping")
        if notifier_task is not None:
            notifier_task.cancel()
        await service.stop()
        await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())
