"""TLS between the gateway and its broker, against a private Mosquitto with a TLS listener.

Certificates come from the development CA (gateway/tls.py). A refused link is asserted by
behaviour: the gateway keeps running and retrying, never connects, and /healthz says the
broker link is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from gateway.config import MqttSettings
from gateway.runtime import Gateway
from gateway.tls import Issued, create_ca, issue, mosquitto_tls_listener
from tests.conftest import GatewayFactory, free_port, settings_for
from tests.helpers import Device, device

network = pytest.mark.network


@dataclass(frozen=True, slots=True)
class Pki:
    """A CA with a broker certificate for loopback, a gateway client certificate, and a
    second CA that signed nothing the broker presents."""

    ca: Issued
    broker: Issued
    gateway: Issued
    stranger: Issued


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """Fresh certificates for this test."""
    ca = create_ca(tmp_path / "ca")
    return Pki(
        ca=ca,
        broker=issue(ca, tmp_path / "certs", "broker", server=True),
        gateway=issue(ca, tmp_path / "certs", "trygg-gateway", server=False),
        stranger=create_ca(tmp_path / "stranger", name="another CA"),
    )


@asynccontextmanager
async def tls_mosquitto(
    tmp_path: Path, ca: Issued, server: Issued, *, require_client_cert: bool = False
) -> AsyncIterator[int]:
    """A private Mosquitto with only a TLS listener; yields its port."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    config = tmp_path / f"mosquitto-{port}.conf"
    # As root, Mosquitto drops to the `mosquitto` user, which cannot read the 0600 keys.
    as_root = "user root\n" if os.geteuid() == 0 else ""
    config.write_text(
        mosquitto_tls_listener(ca, server, port, require_client_cert=require_client_cert)
        + "allow_anonymous true\npersistence false\nlog_type error\n" + as_root
    )
    proc = subprocess.Popen([binary, "-c", str(config)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("mosquitto did not start")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def tls_device(
    port: int, prefix: str, device_id: str, ca: Issued
) -> contextlib.AbstractAsyncContextManager[Device]:
    """``tests.helpers.device`` over TLS, trusting ``ca``."""
    context = ssl.create_default_context(cafile=str(ca.cert))
    return device(("127.0.0.1", port), prefix, device_id, tls_context=context)


@asynccontextmanager
async def gateway(tmp_path: Path, port: int, prefix: str, **mqtt: Any) -> AsyncIterator[Gateway]:
    """A gateway on the TLS broker that is *not* waited on to connect."""
    settings = settings_for(tmp_path / "gw-unconnected", ("127.0.0.1", port), prefix, mqtt=mqtt)
    async with Gateway(settings) as gw:
        yield gw


async def healthz(gw: Gateway) -> dict[str, Any]:
    """The gateway's /healthz body."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{gw.http_port}/healthz")
    body: dict[str, Any] = response.json()
    return body


async def assert_refused(
    gw: Gateway, caplog: pytest.LogCaptureFixture, reason: str, attempts: int = 2
) -> None:
    """The link failed ``attempts`` times for ``reason``, never came up, and the gateway
    still runs and reports the broker link down."""

    def failures() -> int:
        return sum(
            1
            for r in caplog.records
            if r.name == "gateway.mqtt"
            and r.levelno == logging.WARNING
            and "down" in r.getMessage()
            and reason in r.getMessage()
        )

    async with asyncio.timeout(60):
        while failures() < attempts:
            await asyncio.sleep(0.05)
    assert gw.link is not None
    assert not gw.link.connected
    assert gw.link.connects == 0
    health = await healthz(gw)
    assert health["mqtt"] == "down"
    assert health["status"] == "degraded"
    assert health["journal"] == "ok"  # the gateway itself still runs


@network
async def test_alarm_stored_end_to_end_over_tls(
    tmp_path: Path, pki: Pki, prefix: str, make_gateway: GatewayFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.mqtt")
    async with (
        tls_mosquitto(tmp_path, pki.ca, pki.broker) as port,
        make_gateway(("127.0.0.1", port), mqtt={"tls": True, "ca_file": pki.ca.cert}) as gw,
        tls_device(port, prefix, "dev-a", pki.ca) as dev,
    ):
        await dev.alarm("tls-1", "fall")
        assert await dev.wait_ack("tls-1") == {"ref": "tls-1", "status": "stored"}
        stored = [(a.device_id, a.ref) for a in gw.core.alarms.values() if a.device_id == "dev-a"]
        assert stored == [("dev-a", "tls-1")]
        assert (await healthz(gw))["mqtt"] == "up"
    transport = [r.getMessage() for r in caplog.records if ": TLS (" in r.getMessage()]
    assert transport, "the link logs that it uses TLS"
    assert "minimum TLSv1_2" in transport[0]
    assert "certificate verified, host name checked against 127.0.0.1" in transport[0]


@network
async def test_broker_certificate_from_an_untrusted_ca_is_refused(
    tmp_path: Path, pki: Pki, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        tls_mosquitto(tmp_path, pki.ca, pki.broker) as port,
        gateway(tmp_path, port, prefix, tls=True, ca_file=pki.stranger.cert) as gw,
    ):
        await assert_refused(gw, caplog, "CERTIFICATE_VERIFY_FAILED")


@network
async def test_system_trust_store_does_not_trust_a_private_ca(
    tmp_path: Path, pki: Pki, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        tls_mosquitto(tmp_path, pki.ca, pki.broker) as port,
        gateway(tmp_path, port, prefix, tls=True) as gw,
    ):
        await assert_refused(gw, caplog, "CERTIFICATE_VERIFY_FAILED")


@network
async def test_certificate_for_another_host_is_refused(
    tmp_path: Path, pki: Pki, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    elsewhere = issue(pki.ca, tmp_path / "certs", "elsewhere", server=True,
                      hosts=("mqtt.elsewhere.test",))
    async with (
        tls_mosquitto(tmp_path, pki.ca, elsewhere) as port,
        gateway(tmp_path, port, prefix, tls=True, ca_file=pki.ca.cert) as gw,
    ):
        await assert_refused(gw, caplog, "mismatch")


@network
async def test_tls_server_name_checks_the_configured_name(
    tmp_path: Path, pki: Pki, prefix: str, make_gateway: GatewayFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Connecting by IP to a broker whose certificate only names a host works with
    ``tls_server_name`` = that name, and a wrong name is still refused."""
    named = issue(pki.ca, tmp_path / "certs", "named", server=True, hosts=("mqtt.trygg.test",))
    async with tls_mosquitto(tmp_path, pki.ca, named) as port:
        mqtt = {"tls": True, "ca_file": pki.ca.cert, "tls_server_name": "mqtt.trygg.test"}
        async with make_gateway(("127.0.0.1", port), mqtt=mqtt) as gw:
            assert gw.link is not None and gw.link.connected
        async with gateway(
            tmp_path, port, prefix, **{**mqtt, "tls_server_name": "mqtt.other.test"}
        ) as gw:
            await assert_refused(gw, caplog, "mismatch")


@network
async def test_broker_requiring_client_certificates(
    tmp_path: Path, pki: Pki, prefix: str, make_gateway: GatewayFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with tls_mosquitto(tmp_path, pki.ca, pki.broker, require_client_cert=True) as port:
        mqtt = {"tls": True, "ca_file": pki.ca.cert}
        with_cert = {**mqtt, "cert_file": pki.gateway.cert, "key_file": pki.gateway.key}
        async with make_gateway(("127.0.0.1", port), mqtt=with_cert) as gw:
            assert gw.link is not None and gw.link.connected
        # With TLS 1.3 the broker refuses after the handshake, so the client only sees the
        # CONNACK time out (paho logs the broker's "certificate required" alert).
        async with gateway(tmp_path, port, prefix, **mqtt) as gw:
            await assert_refused(gw, caplog, "", attempts=1)
        assert "certificate required" in caplog.text


# -- configuration ---------------------------------------------------------------------------


def test_client_context_defaults(pki: Pki) -> None:
    assert MqttSettings().client_context() is None
    context = MqttSettings(tls=True, ca_file=pki.ca.cert).client_context()
    assert context is not None
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname


def refused(message: str) -> AbstractContextManager[pytest.ExceptionInfo[ValidationError]]:
    """``pytest.raises`` for a settings error containing ``message`` verbatim."""
    return pytest.raises(ValidationError, match=re.escape(message))


def test_certificate_without_key_is_refused(pki: Pki) -> None:
    with refused("mqtt.cert_file and mqtt.key_file must be set together"):
        MqttSettings(tls=True, cert_file=pki.gateway.cert)
    with refused("mqtt.cert_file and mqtt.key_file must be set together"):
        MqttSettings(tls=True, key_file=pki.gateway.key)


def test_tls_files_without_tls_are_refused(pki: Pki) -> None:
    """Refused rather than ignored: they mean TLS was intended (docs/configuration.md)."""
    with refused("mqtt.ca_file set but mqtt.tls is false"):
        MqttSettings(ca_file=pki.ca.cert)
    with refused("mqtt.tls_server_name set but mqtt.tls is false"):
        MqttSettings(tls_server_name="mqtt.trygg.test")


def test_unreadable_files_are_named_at_load(tmp_path: Path, pki: Pki) -> None:
    missing = tmp_path / "missing.pem"
    with refused(f"mqtt.ca_file {missing}: not a readable PEM CA bundle"):
        MqttSettings(tls=True, ca_file=missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with refused(f"mqtt.ca_file {garbage}: not a readable PEM CA bundle"):
        MqttSettings(tls=True, ca_file=garbage)
    with refused(f"mqtt.cert_file {pki.gateway.cert} / key_file {pki.broker.key}"):
        # Another certificate's key.
        MqttSettings(tls=True, ca_file=pki.ca.cert, cert_file=pki.gateway.cert,
                     key_file=pki.broker.key)
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(pki.gateway.key.read_bytes(), password=None)
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    with refused("the key is encrypted"):  # and no terminal prompt for a passphrase
        MqttSettings(tls=True, ca_file=pki.ca.cert, cert_file=pki.gateway.cert,
                     key_file=encrypted)
