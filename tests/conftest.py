"""Shared fixtures: brokers (real Mosquitto and the embedded one), gateways, clients."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.auth import hash_password
from gateway.broker import EmbeddedBroker
from gateway.config import Settings, load
from gateway.org import DeviceInfo, OrgStore, RecipientInfo, StaffMember, Team
from gateway.runtime import Gateway

MOSQUITTO = ("127.0.0.1", 1883)
PASSWORD = "correct horse battery"
# A signing secret that passes the strength check outside demo mode (gateway.strength).
TEST_SECRET = "O22Y--reqdMGxJjIPiqmGaH0Uz1hnM6AF1-kNVuUdk31eqsY"
# Hashing is deliberately slow; hash once per test session.
_HASH: list[str] = []


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def mosquitto_up() -> bool:
    """Whether the machine's Mosquitto answers on 127.0.0.1:1883."""
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(MOSQUITTO) == 0


@pytest.fixture(autouse=True)
def _fail_on_logged_exceptions(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A logged exception is a failure even if nothing raised (cf. Home Assistant)."""
    yield
    errors = [r for r in caplog.get_records("call") if r.exc_info and r.levelno >= logging.ERROR]
    assert not errors, f"logged exceptions: {[r.getMessage() for r in errors]}"


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test's own on a shared broker."""
    return f"test/{uuid.uuid4().hex[:12]}/trygg/v1"


@pytest.fixture
async def embedded_broker() -> AsyncIterator[tuple[str, int]]:
    """The in-process amqtt broker on a free loopback port."""
    port = free_port()
    async with EmbeddedBroker("127.0.0.1", port):
        yield ("127.0.0.1", port)


@pytest.fixture
def mosquitto() -> tuple[str, int]:
    """The real Mosquitto that .ci/run guarantees on 127.0.0.1:1883."""
    if not mosquitto_up():
        pytest.fail("Mosquitto is not running on 127.0.0.1:1883 (.ci/run starts it)")
    return MOSQUITTO


@pytest.fixture(params=["mosquitto", "embedded"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, int]]:
    """Each broker the gateway must work with."""
    if request.param == "mosquitto":
        yield request.getfixturevalue("mosquitto")
    else:
        port = free_port()
        async with EmbeddedBroker("127.0.0.1", port):
            yield ("127.0.0.1", port)


def seed_small(org: OrgStore) -> None:
    """Two teams; team-a has anna and bo, team-b has cleo; one device per recipient."""
    if not _HASH:
        _HASH.append(hash_password(PASSWORD))
    org.put_team(Team("team-a", "Lag A"))
    org.put_team(Team("team-b", "Lag B"))
    for sid, team in (("anna", "team-a"), ("bo", "team-a"), ("cleo", "team-b")):
        org.put_staff(StaffMember(sid, sid, sid.title(), "staff", (team,), _HASH[0]))
    org.put_staff(StaffMember("tove", "tove", "Tove", "technician", (), _HASH[0]))
    org.put_recipient(RecipientInfo("r-a", "Astrid A", "Storgatan 1", "team-a"))
    org.put_recipient(RecipientInfo("r-b", "Bengt B", "Kyrkvägen 2", "team-b"))
    org.put_device(DeviceInfo("dev-a", "alarm_unit", "r-a"))
    org.put_device(DeviceInfo("dev-b", "alarm_unit", "r-b"))
    # Simulated fleet devices, each protecting a recipient of its own (odd: team-a, even:
    # team-b), so that a burst is many alarms rather than repeats attached to one.
    for n in range(100):
        team = "team-a" if n % 2 else "team-b"
        org.put_recipient(RecipientInfo(f"r-sim-{n:03d}", f"Sim {n}", f"Simgatan {n}", team))
        org.put_device(DeviceInfo(f"sim-{n:03d}", "alarm_unit", f"r-sim-{n:03d}"))

def settings_for(
    data_dir: Path, broker: tuple[str, int], prefix: str, **overrides: Any
) -> Settings:
    """Gateway settings for tests: loopback, ephemeral HTTP port, a private prefix.

    ``mqtt={...}`` adds to (or overrides) the broker's host, port and prefix.
    """
    overrides.setdefault("gateway_id", f"gw-{uuid.uuid4().hex[:8]}")
    return load(
        None,
        demo=True,
        data_dir=data_dir,
        secret_key="test-secret-" + "x" * 40,
        mqtt={"host": broker[0], "port": broker[1], "prefix": prefix, **overrides.pop("mqtt", {})},
        http={"host": "127.0.0.1", "port": 0},
        **overrides,
    )


GatewayFactory = Callable[..., Any]


@pytest.fixture
def make_gateway(tmp_path: Path, prefix: str) -> GatewayFactory:
    """Start a seeded gateway on a broker: ``async with make_gateway(broker) as gw``."""

    @asynccontextmanager
    async def factory(
        broker: tuple[str, int], data_dir: Path | None = None, *,
        clock: Callable[[], float] | None = None, **overrides: Any
    ) -> AsyncIterator[Gateway]:
        directory = data_dir or tmp_path / "gw"
        org = OrgStore(directory / "org.sqlite3")
        if org.is_empty():
            seed_small(org)
        try:
            settings = settings_for(directory, broker, prefix, **overrides)
            options: dict[str, Any] = {} if clock is None else {"clock": clock}
            async with Gateway(settings, org=org, **options) as gw:
                await asyncio.wait_for(gw.wait_connected(), 10)
                yield gw
        finally:
            org.close()

    return factory
