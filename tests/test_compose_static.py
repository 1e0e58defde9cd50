"""docker-compose.yml and the Dockerfile, validated without a Docker engine: the services and their
network, the dnsd address the client uses as its resolver, and the config every geotm container
mounts (config/compose.yaml) agreeing with the compose file and with the local drill's plan. When a
compose CLI is installed, its own `config` validation runs too. scripts/compose-drill runs the stack
for real (tests/test_compose_drill.py)."""
from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from dnsd.config import load_config
from drills import labconfig, pki
from tests.tools import require_tool

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
CONFIG = ROOT / "config" / "compose.yaml"
REPLICAS = ("eastus", "westeurope", "southeastasia")
MOUNTED_CONFIG = "/etc/geotm/geotm.yaml"


VARIABLE = re.compile(r"\$\{(\w+):-([^}]*)\}")   # ${NAME:-default}, the only form the file uses


def defaults(text: str) -> str:
    """The compose file as compose reads it with none of its variables set."""
    return VARIABLE.sub(lambda m: m.group(2), text)


@pytest.fixture(scope="module")
def compose() -> dict:
    # resolves the x- anchors and << merges like compose does
    return yaml.safe_load(defaults(COMPOSE.read_text()))


def test_variables_and_their_defaults():
    """Only these variables, each with a default, so a plain `docker compose up` needs none: the
    replicas' image (scripts/compose-drill builds Debian's docker-registry where Docker Hub is out of
    reach) and the engine socket the client mounts (an engine on a socket of its own)."""
    text = COMPOSE.read_text()
    found = dict(VARIABLE.findall(text))
    assert found == {"GEOTM_REGISTRY_IMAGE": "registry:2", "GEOTM_DOCKER_SOCKET": "/var/run/docker.sock"}
    assert "$" not in VARIABLE.sub("", text).replace("$$", "")


@pytest.fixture(scope="module")
def config():
    return load_config(str(CONFIG))             # what `dnsd check-config` validates


def _address(service: dict, network: str = "drill") -> str:
    return service["networks"][network]["ipv4_address"]


def _host(listen) -> str:
    text = str(listen)
    return re.search(r"\d+\.\d+\.\d+\.\d+", text).group(0)


def _mounts(service: dict) -> dict[str, str]:
    """container path -> source, for short-syntax volumes."""
    result = {}
    for item in service.get("volumes", []):
        parts = item.split(":")
        result[parts[1]] = parts[0]
    return result


def test_services_and_private_network(compose):
    services = compose["services"]
    assert {"dnsd", "probes", "client", "pki", *REPLICAS} <= set(services)
    network = compose["networks"]["drill"]
    subnet = ipaddress.ip_network(network["ipam"]["config"][0]["subnet"])
    for name in ("dnsd", "probes", *REPLICAS):
        assert ipaddress.ip_address(_address(services[name])) in subnet, name
    assert "drill" in services["client"]["networks"]
    published = [name for name, s in services.items() if s.get("ports")]
    assert published == [], f"the drill network is private, yet {published} publish ports"
    addresses = [_address(services[n]) for n in ("dnsd", "probes", *REPLICAS)]
    assert len(set(addresses)) == len(addresses)


def test_replicas_are_registry2_with_storage_health_checks(compose, config):
    services = compose["services"]
    by_name = {r.name: r for r in config.registries[0].replicas}
    for name in REPLICAS:
        service = services[name]
        env = service["environment"]
        assert service["image"].startswith("registry:2")
        assert env["REGISTRY_HEALTH_STORAGEDRIVER_ENABLED"] == "true"
        assert env["REGISTRY_HTTP_ADDR"].endswith(":443") and env["REGISTRY_HTTP_DEBUG_ADDR"].endswith(":5001")
        assert env["REGISTRY_HTTP_TLS_CERTIFICATE"] == f"/pki/{name}.crt"
        assert env["REGISTRY_HTTP_TLS_KEY"] == f"/pki/{name}.key"
        assert env["REGISTRY_STORAGE_DELETE_ENABLED"] == "true"        # the write canary deletes its blob
        assert any("/debug/health" in part for part in service["healthcheck"]["test"])
        assert _mounts(service)["/pki"] == "pki"
        storage = env["REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY"]
        assert any(t.split(":")[0] == str(Path(storage).parent) for t in service["tmpfs"])   # chmod-able mount
        assert service["user"] != "0:0"                                 # unreadable storage really fails
        # the config probes this replica at its compose address, on the ports it serves
        replica = by_name[name]
        assert [str(a) for a in replica.addresses] == [_address(service)]
        kinds = {c.kind: c for c in replica.probe.checks}
        assert kinds["oci"].port == 443 and kinds["oci"].scheme == "https" and kinds["oci"].write_canary
        assert kinds["oci"].ca_file == "/pki/ca.crt"
        assert kinds["oci"].host_header in pki.replica_names("contoso", config.zone.name, name)
        assert kinds["distribution"].port == 5001


def test_client_resolver_is_dnsd(compose, config):
    services = compose["services"]
    dnsd_address = _address(services["dnsd"])
    assert services["client"]["dns"] == [dnsd_address]
    listen = [str(x) for x in config.server.listen]
    assert any(dnsd_address in item and "53" in item for item in listen), listen
    assert _host(config.server.listen) == dnsd_address
    # a client on the drill network is in a configured client network (eastus first)
    subnet = compose["networks"]["drill"]["ipam"]["config"][0]["subnet"]
    assert subnet in yaml.safe_load(CONFIG.read_text())["clients"]["networks"]


def test_every_geotm_container_mounts_config_compose_yaml(compose):
    services = compose["services"]
    for name in ("dnsd", "probes", "client"):
        mounts = _mounts(services[name])
        assert mounts.get(MOUNTED_CONFIG) == "./config/compose.yaml", name
        assert mounts.get("/pki") == "pki", name
    for name in ("dnsd", "probes"):
        command = services[name]["command"]
        assert command[command.index("--config") + 1] == MOUNTED_CONFIG
    assert services["client"]["environment"]["GEOTM_CONFIG"] == MOUNTED_CONFIG
    assert "/var/run/docker.sock" in _mounts(services["client"])
    assert services["client"].get("profiles") == ["drill"]     # never started by a plain `up`


def test_probes_and_admin_addresses_match(compose, config):
    services = compose["services"]
    probes_address = _address(services["probes"])
    assert _host(config.probes.listen) == probes_address
    assert [urlsplit(u).hostname for u in config.health.feeds] == [probes_address]
    assert _host(config.admin.listen) == _address(services["dnsd"])
    assert config.admin.token_file == "/pki/admin-token"


def test_dnsd_forwards_the_stacks_containers_to_the_upstream_service(compose, config):
    """Forwarding in the stack: dnsd sends names outside its zone to the `upstream` service (a second
    dnsd, authoritative for another zone), for the drill network's containers only."""
    upstream = compose["services"]["upstream"]
    address = _address(upstream)
    assert config.forward is not None
    assert config.forward.upstreams == ((address, 53),)
    subnet = ipaddress.ip_network(compose["networks"]["drill"]["ipam"]["config"][0]["subnet"])
    assert [str(n) for n in config.forward.clients] == [str(subnet)]
    assert _mounts(upstream)["/etc/geotm/upstream.yaml"] == "./config/compose-upstream.yaml"
    command = upstream["command"]
    outside = load_config(str(ROOT / "config" / "compose-upstream.yaml"))
    assert command[command.index("--config") + 1] == "/etc/geotm/upstream.yaml"
    assert _host(outside.server.listen) == address
    assert outside.zone.name != config.zone.name and not outside.zone.name.endswith("." + config.zone.name)
    assert compose["services"]["dnsd"]["depends_on"]["upstream"]["condition"] == "service_started"


def test_compose_config_is_the_local_drill_plan(config):
    """Same names and addresses as `geotm drill`, so the shared scenarios apply to both."""
    plan = {r.name: r.address for r in labconfig.REPLICAS}
    replicas = {r.name: [str(a) for a in r.addresses] for r in config.registries[0].replicas}
    assert replicas == {name: [address] for name, address in plan.items()}
    assert _host(config.server.listen) == labconfig.DNS_ADDRESS
    assert _host(config.probes.listen) == labconfig.PROBES_ADDRESS
    assert config.zone.name == labconfig.ZONE and config.registries[0].name == labconfig.REGISTRY
    assert config.zone.ttls.traffic_manager <= 10


def test_dockerfile_targets_and_ignore():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, flags=re.M | re.I)
    assert stages == ["geotm", "client", "registry"]
    # one base for every stage, python:3.11-slim-bookworm unless BASE says otherwise
    assert re.search(r"^ARG BASE=python:3\.11-slim-bookworm$", dockerfile, flags=re.M)
    assert re.findall(r"^FROM\s+(\S+)\s+AS\s+(?:geotm|registry)$", dockerfile, flags=re.M) == ["${BASE}"] * 2
    assert "docker-registry" in dockerfile.split("AS registry", 1)[1]
    compose = yaml.safe_load(COMPOSE.read_text())
    targets = {s["build"]["target"] for s in compose["services"].values() if "build" in s}
    assert targets <= set(stages)
    client_stage = dockerfile.split("AS client", 1)[1]
    assert "skopeo" in client_stage
    for package in ("dnsd", "probes", "drills"):
        assert f"COPY {package} " in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_compose_cli_validates_when_installed():
    """`docker compose config` (v2) or Debian's `docker-compose config` (v1.29, which predates the
    top-level `name:` key: the file has none) check the file against the compose spec."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True,
                                                 timeout=30).returncode == 0:
        argv = ["docker", "compose"]
    else:
        argv = [require_tool("docker-compose", "to check the compose file against the compose spec "
                             "(or docker compose v2); the static checks above ran")]
    result = subprocess.run([*argv, "-f", str(COMPOSE), "--project-directory", str(ROOT), "config", "-q"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not re.search(r"^name:", COMPOSE.read_text(), flags=re.M)
