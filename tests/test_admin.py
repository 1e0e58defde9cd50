"""dnsd's admin API over real HTTP (aiohttp TestClient): auth, status, overrides with expiry and
persistence, the last-replica guard, reload (good and bad), explain, audit, metrics; and what the
public pages of a real dnsd process show with and without the token."""
from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import dns.message
import dns.query
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from dnsd.ops.admin import make_app
from dnsd.config import load_config
from dnsd.model import AdminSettings
from dnsd.routing.overrides import OverrideStore
from dnsd.serving.service import Dnsd
from tests import harness
from tests.dnstest import ask, example_dict, isolated_example

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Geotm-Actor": "alice"}


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def write_config(tmp_path, data: dict | None = None, name: str = "geotm.yaml"):
    data = data or example_dict()
    data["health"] = {}
    data["admin"] = {"state_file": str(tmp_path / "overrides.json")}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_dnsd(path, clock) -> Dnsd:
    config = load_config(path, clock())  # as `dnsd serve` does: an auto serial is the load time
    store = OverrideStore(config.admin.state_file, config.admin.state_file + ".audit.jsonl", clock)
    return Dnsd(config, store, clock)


@pytest.fixture
async def admin(tmp_path):
    """(dnsd, client with token configured, clock, config path)"""
    clock = Clock()
    path = write_config(tmp_path)
    dnsd = make_dnsd(path, clock)
    client = TestClient(TestServer(make_app(dnsd, AdminSettings(), TOKEN)))
    await client.start_server()
    yield dnsd, client, clock, path
    await client.close()


def global_replica(dnsd, ecs="127.0.0.0/24") -> str:
    reply = ask(dnsd.engine, "contoso.azurecr.test", ecs=ecs)
    return reply.answer[2][0].target.to_text().split(".")[1]


# -- authentication ------------------------------------------------------------------------------

AUTH_TABLE = [
    # (method, path, headers, body, expected status)
    ("GET", "/v1/status", {}, None, 401),
    ("GET", "/v1/status", {"Authorization": "Bearer wrong"}, None, 401),
    ("GET", "/v1/status", {"Authorization": TOKEN}, None, 401),            # not "Bearer ..."
    ("GET", "/v1/status", AUTH, None, 200),
    ("POST", "/v1/overrides", {}, {"registry": "contoso", "replica": "eastus", "kind": "drain"}, 401),
    ("POST", "/v1/reload", {"Authorization": "Bearer wrong"}, {}, 401),
    ("GET", "/metrics", {}, None, 200),                                     # public_metrics
    ("GET", "/metrics", {"Authorization": "Bearer wrong"}, None, 401),      # a wrong token is not ignored
    ("GET", "/", {}, None, 200),                                            # public status page
    ("GET", "/", {"Authorization": "Bearer wrong"}, None, 401),
    ("GET", "/details", {}, None, 401),                                     # details need the token
    ("GET", "/details", AUTH, None, 200),
    ("GET", "/details", {"Authorization": "Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode()},
     None, 200),                                                            # a browser's Basic auth
    ("GET", "/details", {"Authorization": "Basic " + base64.b64encode(b"ops:wrong").decode()}, None, 401),
    ("GET", "/details", {"Authorization": "Basic !!notbase64"}, None, 401),
    ("GET", "/v1/nonexistent", {}, None, 401),                              # unknown paths are not a way in
]


@pytest.mark.parametrize("method,path,headers,body,expected", AUTH_TABLE,
                         ids=[f"{m} {p} {'token' if h else 'none'}->{e}" for m, p, h, _, e in AUTH_TABLE])
async def test_authentication(admin, method, path, headers, body, expected):
    dnsd, client, _, _ = admin
    response = await client.request(method, path, headers=headers, json=body)
    assert response.status == expected
    if expected == 401:   # a browser asks for the token only when offered Basic
        assert response.headers.getall("WWW-Authenticate") == ['Bearer realm="geotm"', 'Basic realm="geotm"']


async def test_without_a_configured_token_changes_are_refused_and_reads_work(tmp_path):
    dnsd = make_dnsd(write_config(tmp_path), Clock())
    async with TestClient(TestServer(make_app(dnsd, AdminSettings(), None))) as client:
        assert (await client.get("/v1/status")).status == 200
        refused = await client.post("/v1/overrides", json={"registry": "contoso", "replica": "eastus",
                                                           "kind": "drain"})
        assert refused.status == 403 and "no admin token" in (await refused.json())["error"]
        assert (await client.post("/v1/reload", json={})).status == 403
    assert not dnsd.snapshot.overrides


async def test_private_metrics_and_status_page_need_the_token(tmp_path):
    dnsd = make_dnsd(write_config(tmp_path), Clock())
    settings = AdminSettings(public_metrics=False, public_status_page=False)
    async with TestClient(TestServer(make_app(dnsd, settings, TOKEN))) as client:
        assert (await client.get("/metrics")).status == 401
        assert (await client.get("/")).status == 401
        assert (await client.get("/metrics", headers=AUTH)).status == 200


# -- overrides -----------------------------------------------------------------------------------

async def test_drain_moves_the_global_name_and_keeps_the_regional_name(admin):
    dnsd, client, _, _ = admin
    assert global_replica(dnsd) == "eastus"
    response = await client.post("/v1/overrides", headers=AUTH, json={
        "registry": "contoso", "replica": "eastus", "kind": "drain", "duration": "5m", "reason": "patching"})
    assert response.status == 201
    body = await response.json()
    assert body["actor"].startswith("alice@") and body["expires_at"] == dnsd.clock() + 300
    assert global_replica(dnsd) == "westeurope"
    assert ask(dnsd.engine, "contoso.eastus.geo.azurecr.test").answer[-1][0].address == "127.0.0.11"
    status = await (await client.get("/v1/status", headers=AUTH)).json()
    eastus = status["registries"][0]["replicas"][0]
    assert eastus["override"]["reason"] == "patching" and eastus["serving"] is False


async def test_override_expires_on_time(admin):
    dnsd, client, clock, _ = admin
    await client.post("/v1/overrides", headers=AUTH, json={
        "registry": "contoso", "replica": "eastus", "kind": "force_down", "duration": 60})
    clock.now += 59
    assert dnsd.expire_overrides() == [] and global_replica(dnsd) == "westeurope"
    clock.now += 1
    assert [o.kind for o in dnsd.expire_overrides()] == ["force_down"]
    assert global_replica(dnsd) == "eastus"
    actions = [e["action"] for e in (await (await client.get("/v1/audit", headers=AUTH)).json())["entries"]]
    assert actions == ["set", "expired"]


async def test_undo(admin):
    dnsd, client, _, _ = admin
    await client.post("/v1/overrides", headers=AUTH, json={"registry": "contoso", "replica": "eastus", "kind": "drain"})
    wrong_kind = await client.delete("/v1/overrides/contoso/eastus?kind=force_up", headers=AUTH)
    assert wrong_kind.status == 404 and "it has drain" in (await wrong_kind.json())["error"]
    assert (await client.delete("/v1/overrides/contoso/eastus?kind=drain", headers=AUTH)).status == 200
    assert global_replica(dnsd) == "eastus"
    assert (await client.delete("/v1/overrides/contoso/eastus", headers=AUTH)).status == 404


async def test_last_serving_replica_needs_force(admin):
    dnsd, client, _, _ = admin
    for replica in ("eastus", "westeurope"):
        response = await client.post("/v1/overrides", headers=AUTH, json={
            "registry": "contoso", "replica": replica, "kind": "drain"})
        assert response.status == 201
    last = {"registry": "contoso", "replica": "southeastasia", "kind": "force_down"}
    refused = await client.post("/v1/overrides", headers=AUTH, json=last)
    assert refused.status == 409 and "last serving replica" in (await refused.json())["error"]
    assert global_replica(dnsd) == "southeastasia"
    forced = await client.post("/v1/overrides", headers=AUTH, json={**last, "force": True})
    assert forced.status == 201
    assert dnsd.snapshot.plans[0].all_down   # the all-down policy (fail open) now decides, visibly


BAD_OVERRIDES = [
    ({"registry": "contoso", "replica": "northpole", "kind": "drain"}, 404, "no replica contoso/northpole"),
    ({"registry": "contoso", "replica": "eastus", "kind": "nap"}, 400, "unknown override 'nap'"),
    ({"registry": "contoso", "replica": "eastus", "kind": "drain", "duration": "soon"}, 400, "duration 'soon'"),
    ({"registry": "contoso", "replica": "eastus", "kind": "drain", "duration": -5}, 400, "must be positive"),
    ({"replica": "eastus", "kind": "drain"}, 400, "missing 'registry'"),
]


@pytest.mark.parametrize("body,status,message", BAD_OVERRIDES, ids=[m for _, _, m in BAD_OVERRIDES])
async def test_bad_override_requests(admin, body, status, message):
    dnsd, client, _, _ = admin
    response = await client.post("/v1/overrides", headers=AUTH, json=body)
    assert response.status == status and message in (await response.json())["error"]
    assert not dnsd.snapshot.overrides


async def test_non_json_body_is_rejected(admin):
    _, client, _, _ = admin
    response = await client.post("/v1/overrides", headers=AUTH, data=b"drain eastus")
    assert response.status == 400


async def test_overrides_and_audit_survive_a_restart(admin):
    dnsd, client, clock, path = admin
    await client.post("/v1/overrides", headers=AUTH, json={"registry": "contoso", "replica": "eastus",
                                                           "kind": "drain", "duration": "1h", "reason": "dc move"})
    restarted = make_dnsd(path, clock)
    assert restarted.snapshot.overrides[("contoso", "eastus")].reason == "dc move"
    assert global_replica(restarted) == "westeurope"
    assert restarted.overrides.audit_entries()[-1]["reason"] == "dc move"


# -- reload ----------------------------------------------------------------------------------------

async def test_reload_applies_a_good_config(admin):
    dnsd, client, _, path = admin
    data = yaml.safe_load(path.read_text())
    data["registries"]["contoso"]["routing"] = "priority"
    data["registries"]["contoso"]["replicas"]["eastus"]["priority"] = 9
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    response = await client.post("/v1/reload", headers=AUTH, json={})
    body = await response.json()
    assert response.status == 200 and body["ok"]
    assert "contoso: routing performance -> priority" in body["changes"]
    assert global_replica(dnsd) == "westeurope"


async def test_a_bad_reload_keeps_the_old_config_and_lists_every_problem(admin):
    dnsd, client, _, path = admin
    before = dnsd.snapshot
    data = yaml.safe_load(path.read_text())
    data["registries"]["contoso"]["routing"] = "fastest"
    data["registries"]["contoso"]["replicas"]["eastus"]["location"] = "mars"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    response = await client.post("/v1/reload", headers=AUTH, json={})
    body = await response.json()
    assert response.status == 422 and not body["ok"] and len(body["problems"]) == 2
    assert any("routing: expected one of performance, weighted, priority, got 'fastest'" in p
               for p in body["problems"])
    assert dnsd.snapshot is before and global_replica(dnsd) == "eastus"
    assert dnsd.reloads == {"ok": 0, "failed": 1}


async def test_reload_adds_a_replica_and_a_view_and_drops_overrides_of_removed_replicas(admin):
    dnsd, client, _, path = admin
    await client.post("/v1/overrides", headers=AUTH, json={"registry": "contoso", "replica": "southeastasia",
                                                           "kind": "drain"})
    data = yaml.safe_load(path.read_text())
    replicas = data["registries"]["contoso"]["replicas"]
    del replicas["southeastasia"]
    replicas["westeurope2"] = {"location": "westeurope", "addresses": ["127.0.0.14"]}
    endpoints = data["views"]["corp-vnet"]["private_endpoints"]["contoso"]
    for kind in ("data", "regional"):
        del endpoints[kind]["southeastasia"]
        endpoints[kind]["westeurope2"] = "10.1.0.20"
    data["views"]["lab"] = {"sources": ["127.0.0.128/26"], "private_endpoints": {"contoso": {
        "global": "10.2.0.4", "data": {"eastus": "10.2.0.5", "westeurope": "10.2.0.6", "westeurope2": "10.2.0.7"},
        "regional": {"eastus": "10.2.0.8", "westeurope": "10.2.0.9", "westeurope2": "10.2.0.10"}}}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    body = await (await client.post("/v1/reload", headers=AUTH, json={})).json()
    assert body["ok"], body
    assert {"contoso: replica westeurope2 added", "contoso: replica southeastasia removed",
            "view lab added"} <= set(body["changes"])
    assert ask(dnsd.engine, "contoso.westeurope2.geo.azurecr.test").answer[-1][0].address == "127.0.0.14"
    assert ask(dnsd.engine, "contoso.azurecr.test", client="127.0.0.130").answer[-1][0].address == "10.2.0.4"
    assert not dnsd.snapshot.overrides


ZONE_CHANGED = ["zone settings or records changed"]
SERIAL_STEPS = [
    # (static record added before the reload or None, seconds the clock moves, changes reported,
    #  serial after the reload as seconds after the start)
    (None, 60, ["identical"], 0),                   # the same file: the same serial, nothing to report
    ("www", 60, ZONE_CHANGED, 120),                 # a real change: the load time
    ("www2", 0, ZONE_CHANGED, 121),                 # again within the second: still one newer
    (None, 60, ["identical"], 121),
]


async def test_an_auto_serial_changes_with_the_file_not_with_the_clock(admin):
    dnsd, client, clock, path = admin
    start = int(clock.now)
    assert dnsd.snapshot.config.zone.soa.serial == start
    for record, seconds, changes, serial in SERIAL_STEPS:
        if record:
            data = yaml.safe_load(path.read_text())
            data["zone"]["records"].append({"name": record, "type": "A", "value": "127.0.0.99"})
            path.write_text(yaml.safe_dump(data, sort_keys=False))
        clock.now += seconds
        body = await (await client.post("/v1/reload", headers=AUTH, json={})).json()
        assert body["ok"] and body["changes"] == changes, (record, seconds, body)
        assert ask(dnsd.engine, "azurecr.test", "SOA").answer[0][0].serial == start + serial, (record, seconds)


# -- read calls ------------------------------------------------------------------------------------

async def test_explain_and_config(admin):
    dnsd, client, _, _ = admin
    body = await (await client.get("/v1/explain?name=contoso.azurecr.test&ecs=198.51.100.0/24",
                                   headers=AUTH)).json()
    assert body["rcode"] == "NOERROR" and "westeurope" in body["answer"][-2]
    assert "client region: westeurope" in body["explanation"]
    config = await (await client.get("/v1/config", headers=AUTH)).json()
    assert config["version"] == dnsd.snapshot.config.digest[:12]
    assert (await client.get("/v1/explain", headers=AUTH)).status == 400


async def test_metrics_show_queries_overrides_and_reloads(admin):
    dnsd, client, _, _ = admin
    for _ in range(3):
        ask(dnsd.engine, "contoso.azurecr.test", ecs="198.51.100.0/24")
    ask(dnsd.engine, "nothing.azurecr.test")
    await client.post("/v1/overrides", headers=AUTH, json={"registry": "contoso", "replica": "eastus", "kind": "drain"})
    text = await (await client.get("/metrics", headers=AUTH)).text()
    assert ('geotm_queries_total{kind="global",qtype="A",rcode="NOERROR",registry="contoso",'
            'replica="westeurope",view="public"} 3.0') in text
    assert 'geotm_queries_total{kind="nxdomain",qtype="A",rcode="NXDOMAIN",registry="",replica="",view="public"} 1.0' in text
    assert 'geotm_overrides_active{kind="drain",registry="contoso",replica="eastus"} 1.0' in text
    assert "geotm_answer_seconds_count 4.0" in text
    assert 'geotm_replica_serving{registry="contoso",replica="eastus"} 0.0' in text
    assert 'geotm_config_reloads_total{result="ok"} 0.0' in text


async def test_status_page_shows_replicas_overrides_and_timeline(admin):
    dnsd, client, _, _ = admin
    await client.post("/v1/overrides", headers=AUTH, json={"registry": "contoso", "replica": "eastus",
                                                           "kind": "drain", "reason": "<b>disk swap</b>"})
    html = await (await client.get("/", headers=AUTH)).text()
    assert "<h2 id='contoso'>" in html and "southeastasia" in html
    assert "&lt;b&gt;disk swap&lt;/b&gt;" in html and "<b>disk swap</b>" not in html   # escaped
    assert "override set: drain contoso/eastus" in html


async def test_reload_can_turn_regional_endpoints_off_and_on(admin):
    dnsd, client, _, path = admin
    original = path.read_text()
    data = yaml.safe_load(original)
    data["registries"]["contoso"]["regional_endpoints"] = False
    del data["views"]["corp-vnet"]["private_endpoints"]["contoso"]["regional"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert (await (await client.post("/v1/reload", headers=AUTH, json={})).json())["ok"]
    assert ask(dnsd.engine, "contoso.eastus.geo.azurecr.test").rcode() == 3   # NXDOMAIN
    path.write_text(original)
    assert (await (await client.post("/v1/reload", headers=AUTH, json={})).json())["ok"]
    assert ask(dnsd.engine, "contoso.eastus.geo.azurecr.test").answer[-1][0].address == "127.0.0.11"


def test_recent_share_of_global_answers_counts_only_the_window(tmp_path):
    from dnsd.serving.stats import SHARE_WINDOW
    dnsd = make_dnsd(write_config(tmp_path), Clock())
    stats = dnsd.engine.stats
    for _ in range(10):                      # old traffic, all to eastus
        ask(dnsd.engine, "contoso.azurecr.test", ecs="127.0.0.0/24")
    stats.sample(now=0.0)
    for _ in range(3):
        ask(dnsd.engine, "contoso.azurecr.test", ecs="127.0.0.0/24")
    for _ in range(1):
        ask(dnsd.engine, "contoso.azurecr.test", ecs="198.51.100.0/24")
    stats.sample(now=SHARE_WINDOW / 2)
    shares = stats.recent_shares()
    assert shares == {("contoso", "eastus"): 0.75, ("contoso", "westeurope"): 0.25}
    stats.sample(now=SHARE_WINDOW * 2)       # the first sample falls out of the window
    assert stats.recent_shares() == {}


# -- public pages: health only without the token ---------------------------------------------------

PUBLIC_TOKEN = "test-admin-token"   # isolated_example's


@pytest.fixture(scope="module")
def busy_dnsd(tmp_path_factory):
    """A real dnsd with a health feed that does not answer, a drain with actor and reason, and
    queries from the public and the VNet view; yields (process, config path, feed URL)."""
    tmp_path = tmp_path_factory.mktemp("public")
    feed_url = f"http://127.0.0.1:{harness.free_port()}/v1/health"   # nothing listens there
    config = isolated_example(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["health"]["feeds"] = [feed_url]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    with harness.dnsd(config) as process:
        request = urllib.request.Request(
            f"http://127.0.0.1:{process.admin_port}/v1/overrides", method="POST",
            data=json.dumps({"registry": "contoso", "replica": "westeurope", "kind": "drain",
                             "reason": "storage migration", "duration": "1h"}).encode(),
            headers={"Authorization": f"Bearer {PUBLIC_TOKEN}", "Content-Type": "application/json",
                     "X-Geotm-Actor": "alice"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 201
        for source in ("127.0.0.1", "127.0.0.70"):      # public view, corp-vnet view
            dns.query.udp(dns.message.make_query("contoso.azurecr.test", "A"), "127.0.0.1", port=process.port,
                          source=source, timeout=2)
        yield process, config, feed_url


def fetch(process, path: str, token: str | None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{process.admin_port}{path}", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
        return response.read().decode()


# (path, what, text that shows it, shown without the token)
PUBLIC_TABLE = [
    ("/", "replica status", "<span class='badge online'>online</span>", True),
    ("/", "replica role in the global name", "<td>drained</td>", True),
    ("/", "status changes", "contoso: global name serves eastus, southeastasia", True),
    ("/", "config file path", "{config}", False),
    ("/", "config version", "config ", False),
    ("/", "feed URL", "{feed}", False),
    ("/", "override actor", "alice@", False),
    ("/", "override reason", "storage migration", False),
    ("/", "routing policy", "performance routing", False),
    ("/", "share of global answers", "recent share of global answers", False),
    ("/metrics", "replica status", 'geotm_replica_status{registry="contoso",replica="eastus"} 1.0', True),
    ("/metrics", "replica serving", 'geotm_replica_serving{registry="contoso",replica="westeurope"} 0.0', True),
    ("/metrics", "health expired", "geotm_health_expired 0.0", True),
    ("/metrics", "all-down", 'geotm_all_down_active{policy="fail_open",registry="contoso"} 0.0', True),
    ("/metrics", "override kind", 'geotm_overrides_active{kind="drain",registry="contoso",replica="westeurope"} 1.0',
     True),
    ("/metrics", "config file path", "{config}", False),
    ("/metrics", "feed URL", "{feed}", False),
    ("/metrics", "per-view query counts", 'view="corp-vnet"', False),
    ("/metrics", "query latency", "geotm_answer_seconds_count", False),
    ("/metrics", "config reloads", "geotm_config_reloads_total", False),
]


@pytest.mark.parametrize("with_token", [False, True], ids=["no-token", "token"])
@pytest.mark.parametrize("path,what,text,public", PUBLIC_TABLE, ids=[f"{p} {w}" for p, w, _, _ in PUBLIC_TABLE])
def test_public_pages_show_health_only_without_the_token(busy_dnsd, path, what, text, public, with_token):
    process, config, feed_url = busy_dnsd
    body = fetch(process, path, PUBLIC_TOKEN if with_token else None)
    text = text.replace("{config}", str(config)).replace("{feed}", feed_url)
    if with_token or public:
        assert text in body, f"{what} missing from {path}"
    else:
        assert text not in body, f"{what} shown on {path} without the token"


def test_details_page_needs_the_token_and_shows_everything(busy_dnsd):
    process, config, feed_url = busy_dnsd
    with pytest.raises(urllib.error.HTTPError) as refused:
        fetch(process, "/details", None)
    assert refused.value.code == 401
    html = fetch(process, "/details", PUBLIC_TOKEN)
    assert str(config) in html and feed_url in html and "storage migration" in html
    assert "<a href='/details'>" in fetch(process, "/", None)   # the public page says where details are
