"""The per-registry metric families written as text by dnsd.ops.metrics.PerRegistryText: the same
samples prometheus-client would write for them (a reference kept here), in both views, and a
registry's lines redone whenever its health, routing or config changed."""
from __future__ import annotations

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from dnsd.config.build import parse_config_text
from dnsd.ops import metrics
from dnsd.routing.health import EndpointHealth, HealthSnapshot, Status
from dnsd.routing.overrides import DRAIN
from dnsd.serving.runtime import new_snapshot
from tests.dnstest import variant
from tests.test_wiring import make_dnsd

FAMILIES = [name for name, _ in metrics.PER_REGISTRY_FAMILIES]


def reference(dnsd) -> bytes:
    """What prometheus-client writes for these families (dnsd's code before PerRegistryText)."""
    snapshot = dnsd.engine.snapshot
    help_of = dict(metrics.PER_REGISTRY_FAMILIES)
    status = GaugeMetricFamily(FAMILIES[0], help_of[FAMILIES[0]], labels=["registry", "replica"])
    routed = GaugeMetricFamily(FAMILIES[1], help_of[FAMILIES[1]], labels=["registry", "replica"])
    down = GaugeMetricFamily(FAMILIES[2], help_of[FAMILIES[2]], labels=["registry", "policy"])
    short = GaugeMetricFamily(FAMILIES[3], help_of[FAMILIES[3]], labels=["registry"])
    for plan in snapshot.plans:
        reg = plan.registry
        for index, rep in enumerate(reg.replicas):
            status.add_metric([reg.name, rep.name], metrics.STATUS_VALUE[snapshot.health.of(reg.name, rep.name).status])
            routed.add_metric([reg.name, rep.name], 1.0 if index in plan.serving else 0.0)
        down.add_metric([reg.name, reg.all_down.mode], 1.0 if plan.all_down else 0.0)
        short.add_metric([reg.name], 1.0 if plan.short_ttl else 0.0)

    class Fixed:
        def collect(self):
            return [status, routed, down, short]

    registry = CollectorRegistry()
    registry.register(Fixed())
    return generate_latest(registry)


def families(text: bytes | str, names=FAMILIES) -> dict:
    parsed = text_string_to_metric_families(text.decode() if isinstance(text, bytes) else text)
    return {f.name: (f.documentation, f.type, sorted((s.name, tuple(sorted(s.labels.items())), s.value)
                                                       for s in f.samples))
            for f in parsed if f.name in names}


def degraded(registry: str, *replicas: str, trend: str = "") -> HealthSnapshot:
    health = HealthSnapshot()
    for replica in replicas:
        health = health.with_status(registry, replica, EndpointHealth(Status.DEGRADED, "HTTP 503", 1.0, trend))
    return health


STEPS = [
    # (what happens, then the scrape must equal the reference)
    ("start", lambda dnsd: None),
    ("eastus degraded", lambda dnsd: dnsd.apply_health(degraded("contoso", "eastus"))),
    ("every replica degraded: all-down", lambda dnsd: dnsd.apply_health(
        degraded("contoso", "eastus", "westeurope", "southeastasia"))),
    ("westeurope recovering: short TTL", lambda dnsd: dnsd.apply_health(
        HealthSnapshot().with_status("contoso", "westeurope", EndpointHealth(Status.ONLINE, "ok", 1.0, "recovering")))),
    ("checking", lambda dnsd: dnsd.apply_health(
        HealthSnapshot().with_status("contoso", "eastus", EndpointHealth(Status.CHECKING, "", 1.0)))),
    ("southeastasia drained", lambda dnsd: dnsd.set_override("contoso", "southeastasia", DRAIN, None, "test", "me")),
    ("all healthy again", lambda dnsd: dnsd.apply_health(HealthSnapshot())),
]


@pytest.mark.parametrize("public", [False, True])
def test_every_step_scrapes_as_prometheus_client_would_write_it(tmp_path, public):
    dnsd = make_dnsd(tmp_path)
    view = metrics.make_registry(dnsd, public=public)
    seen = set()
    for step, change in STEPS:
        change(dnsd)
        scraped = metrics.render(view)
        assert families(scraped) == families(reference(dnsd)), step
        ours = [line for line in scraped.decode().splitlines() if line.split("{")[0] in FAMILIES]
        assert ours == [line for line in reference(dnsd).decode().splitlines() if line.split("{")[0] in FAMILIES]
        seen.add(str(families(scraped)))
        assert scraped.count(b"# TYPE geotm_replica_status gauge") == 1
    assert len(seen) == len(STEPS)  # every step showed something new: none was served from a stale memo


def test_a_label_value_is_escaped():
    assert metrics._label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'


def test_a_config_with_other_replicas_is_written_anew(tmp_path):
    """The memo is per registry name; a reload that changes a registry's replicas must not reuse its lines."""
    dnsd = make_dnsd(tmp_path)
    view = metrics.make_registry(dnsd)
    metrics.render(view)
    data = variant()
    del data["registries"]["contoso"]["replicas"]["southeastasia"]
    for kind in ("data", "regional"):
        del data["views"]["corp-vnet"]["private_endpoints"]["contoso"][kind]["southeastasia"]
    config = parse_config_text(yaml.safe_dump(data), "smaller.yaml")
    dnsd.engine.swap(new_snapshot(config))
    assert families(metrics.render(view)) == families(reference(dnsd))
    assert b'replica="southeastasia"' not in metrics.render(view)


def test_unchanged_registries_keep_their_lines(tmp_path, monkeypatch):
    dnsd = make_dnsd(tmp_path)
    view = metrics.make_registry(dnsd)
    written = []
    real = metrics._registry_lines
    monkeypatch.setattr(metrics, "_registry_lines", lambda shown: written.append(shown[0].name) or real(shown))
    metrics.render(view)
    metrics.render(view)
    assert written == ["contoso"]  # once: the second scrape reused it
    dnsd.set_override("contoso", "eastus", DRAIN, None, "test", "me")
    metrics.render(view)
    assert written == ["contoso", "contoso"]
