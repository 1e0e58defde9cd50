"""The probes command line: serve (probe replicas, publish verdicts) and budget."""
from __future__ import annotations

import argparse
import ssl
import sys
from dataclasses import replace

import structlog

from dnsd.common import logs
from dnsd.routing.budget import render
from dnsd.common.cliutil import add_version, quiet_broken_pipe
from dnsd.config import ConfigError, load_config
from dnsd.config.server import parse_listen
from dnsd.common.lifecycle import StopSignals, TaskSet, run, serve_http
from dnsd.common.secretfile import SecretFile, SecretUnreadable

log = structlog.get_logger("probes")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probes", description="geotm deep-health probes for registry replicas")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="probe every replica and serve the verdicts to dnsd")
    serve.add_argument("--config", required=True)
    serve.add_argument("--listen", metavar="HOST:PORT", help="override probes.listen")
    serve.add_argument("--state-file", help="override probes.state_file")
    serve.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    budget = sub.add_parser("budget", help="worst-case failover and recovery times from the config")
    budget.add_argument("--config", required=True)
    return parser


@quiet_broken_pipe
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except (ConfigError, OSError) as err:
        print(f"probes: cannot use {args.config}: {err}", file=sys.stderr)
        return 2
    if args.command == "budget":
        print(render(config))
        return 0
    logs.configure(json={"auto": None, "json": True, "console": False}[args.log_format])
    settings = config.probes
    try:
        if args.listen:
            settings = replace(settings, listen=parse_listen(args.listen, 8053))
        if args.state_file:
            settings = replace(settings, state_file=args.state_file)
    except ValueError as err:
        print(f"probes: bad --listen: {err}", file=sys.stderr)
        return 2
    try:
        run(serve(config, settings))
    except OSError as err:
        print(f"probes: {err}", file=sys.stderr)
        return 1
    return 0


async def serve(config, settings) -> None:
    from probes.api import make_app  # start-up: aiohttp and the probe machinery, not needed by `probes budget`
    from probes.scheduler import ProbeService, transition_event  # start-up: as above
    from probes.targets import targets_of  # start-up: as above
    from probes.webhook import Notifier  # start-up: as above

    stop = StopSignals()
    tls, token, registry_auth = _trust(settings)
    service = ProbeService(targets_of(config), settings,
                           verdict_ttl=config.health.ttl if config.health.feeds else None, registry_auth=registry_auth)
    host, port = settings.listen
    runner = await serve_http(make_app(service, token, settings.public_metrics), [settings.listen],
                              "https" if tls else "http", ssl_for=lambda _where: tls)
    await service.start()
    tasks = TaskSet()
    if settings.webhook is not None:
        assert service.session is not None
        secret = SecretFile(settings.webhook.secret_file, "webhook secret") if settings.webhook.secret_file else None
        notifier = Notifier(settings.webhook, service.session, secret=secret)
        service.on_transition.append(lambda target, moved, _state: notifier.notify(
            transition_event(target, moved, service.instance)))
        tasks.start(notifier.run(), name="webhook")
    publisher = None
    if config.cluster is not None:  # verdicts through etcd, leased for health.ttl
        from dnsd.cluster.etcd import client_for  # start-up: aiohttp, not needed by `probes budget`
        from dnsd.cluster.verdicts import VerdictPublisher  # start-up: as above
        publisher = VerdictPublisher(client_for(config.cluster.etcd), config.cluster.etcd.prefix, service.instance,
                                     config.health.ttl, service.document, lambda: service.generation)
        tasks.start(publisher.run(), name="cluster verdicts")
    log.info("probes_started", config=config.source, targets=len(service.targets), listen=f"{host}:{port}",
             tls=tls is not None, token="required on /v1/health" if token else "none",
             registry_credentials=len(registry_auth.credentials) if registry_auth else None,
             webhook=settings.webhook.url if settings.webhook else None,
             webhook_signed=bool(settings.webhook and settings.webhook.secret_file), state_file=settings.state_file)
    try:
        await stop.wait()
    finally:
        stop.close()
        log.info("probes_stopping")
        await tasks.close()  # the webhook notifier: cancelled and awaited before its session closes
        if publisher is not None:
            await publisher.withdraw()
            await publisher.client.close()
        await service.stop()
        await runner.cleanup()


def _trust(settings):
    """TLS context, API token and registry credentials from the settings' files, all checked before
    probing starts: a probes that cannot protect its feed refuses to start (OSError with the reason)."""

    from probes.registryauth import CredentialsError, RegistryAuth  # start-up: aiohttp, not needed by `probes budget`
    tls = None
    if settings.tls_cert_file:
        try:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        except (OSError, ssl.SSLError) as err:
            raise OSError(f"cannot load probes.tls ({settings.tls_cert_file}, {settings.tls_key_file}): {err}") from None
    checked = []
    if settings.token_file:
        checked.append(SecretFile(settings.token_file, "probes token"))
    if settings.webhook is not None and settings.webhook.secret_file:
        checked.append(SecretFile(settings.webhook.secret_file, "webhook secret"))
    try:
        for secret in checked:
            secret.value()
        registry_auth = RegistryAuth.from_file(settings.registry_credentials) if settings.registry_credentials else None
    except (SecretUnreadable, CredentialsError) as err:
        raise OSError(str(err)) from None
    token = checked[0] if settings.token_file else None
    return tls, token, registry_auth


if __name__ == "__main__":
    sys.exit(main())
