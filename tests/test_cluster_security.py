"""TLS and auth towards a real etcd: one started with TLS on its client URLs and client certificates
required (made with openssl through drills.pki), one with auth enabled (etcdctl user/role/auth enable),
and a real dnsd whose cluster section uses both. Wrong trust, a missing certificate, a wrong password
and a key outside the user's prefix each fail, clearly."""
from __future__ import annotations

import ssl

import pytest
import yaml

from dnsd.cluster.etcd import EtcdClient, EtcdRefused, EtcdUnavailable, client_for, client_ssl_context
from dnsd.model import EtcdSettings, EtcdTls
from tests import harness
from tests.etcdkit import Etcd, EtcdPki
from tests.test_cluster_overrides import EASTUS, drain, global_answer, instance_config, metric

PREFIX = "/test-geotm/"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return EtcdPki.make(tmp_path_factory.mktemp("etcd-pki"))


async def round_trip(client: EtcdClient) -> bytes:
    try:
        await client.put(PREFIX + "k", b"v")
        kvs, _ = await client.get_prefix(PREFIX)
        return kvs[0].value
    finally:
        await client.close()


async def test_tls_with_client_certificates(tmp_path, pki):
    with Etcd(tmp_path / "etcd", pki=pki) as etcd:
        tls = EtcdTls(ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key))
        assert await round_trip(client_for(EtcdSettings(endpoints=tuple(etcd.urls), tls=tls))) == b"v"
        untrusted = EtcdClient(etcd.urls, timeout=1.0, ssl_context=ssl.create_default_context())  # system CAs
        with pytest.raises(EtcdUnavailable, match="certificate verify failed"):
            await round_trip(untrusted)
        no_certificate = EtcdClient(etcd.urls, timeout=1.0, ssl_context=client_ssl_context(str(pki.ca), None, None))
        with pytest.raises(EtcdUnavailable):
            await round_trip(no_certificate)


async def test_auth_a_user_with_its_prefix_only(tmp_path):
    with Etcd(tmp_path / "etcd") as etcd:
        etcd.enable_auth("geotm", "s3cret", PREFIX)
        assert await round_trip(EtcdClient(etcd.urls, username="geotm", password="s3cret")) == b"v"
        with pytest.raises(EtcdRefused, match="authentication failed"):
            await round_trip(EtcdClient(etcd.urls, username="geotm", password="wrong"))
        with pytest.raises(EtcdRefused, match="user name is empty"):
            await round_trip(EtcdClient(etcd.urls))  # no user at all
        outside = EtcdClient(etcd.urls, username="geotm", password="s3cret")
        try:
            with pytest.raises(EtcdRefused, match="permission denied"):
                await outside.put("/elsewhere/k", b"v")
        finally:
            await outside.close()


def test_a_dnsd_through_tls_and_auth(tmp_path, pki):
    with Etcd(tmp_path / "etcd", pki=pki) as etcd:
        etcd.enable_auth("geotm", "s3cret", PREFIX)
        path = instance_config(tmp_path, "one", etcd)
        (tmp_path / "one" / "etcd-password").write_text("s3cret\n")
        data = yaml.safe_load(path.read_text())
        data["cluster"]["etcd"].update(tls={"ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
                                            "key_file": str(pki.client_key)},
                                       username="geotm", password_file="etcd-password")
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        with harness.dnsd(path, admin_port=int(data["admin"]["listen"].rsplit(":", 1)[1])) as process:
            harness.wait_until(lambda: metric(process, "geotm_cluster_connected") == 1.0, 10, "connected")
            assert drain(process)[0] == 201
            assert global_answer(process) == EASTUS
            harness.wait_until(lambda: PREFIX + "instances/" in etcd.etcdctl(
                "--user", "geotm:s3cret", "get", "--prefix", "--keys-only", PREFIX), 5, "registered")
        assert "drain" in etcd.etcdctl("--user", "geotm:s3cret", "get", "--prefix", PREFIX + "overrides/")
