"""The technician workflow through the API, and the registry's broker files."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import httpx
import pytest

from gateway.broker_auth import BrokerFiles, verify_mosquitto_hash
from gateway.org import OrgStore, StaffMember
from gateway.provisioning import BrokerAccount, DeviceRegistry, ProvisioningError, main_devices
from gateway.runtime import Gateway
from gateway.web import create_app
from tests.conftest import _HASH, PASSWORD, GatewayFactory, seed_small

pytestmark = pytest.mark.network


@pytest.fixture
async def gw(make_gateway: GatewayFactory, mosquitto: tuple[str, int]) -> AsyncIterator[Gateway]:
    async with make_gateway(mosquitto) as gateway:
        gateway.org.put_staff(StaffMember("ada", "ada", "Ada", "admin", (), _HASH[0]))
        yield gateway


@asynccontextmanager
async def client_for(gw: Gateway, username: str) -> AsyncIterator[httpx.AsyncClient]:
    """A logged-in in-process client."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(gw)),
                                 base_url="http://gw") as client:
        response = await client.post("/api/v1/auth/token",
                                     data={"username": username, "password": PASSWORD})
        response.raise_for_status()
        client.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
        yield client


async def test_register_bind_swap_decommission(gw: Gateway) -> None:
    async with client_for(gw, "tove") as tove:
        r = await tove.post("/api/v1/devices", json={
            "id": "new-1", "type": "alarm_unit", "serial": "SN1", "model": "M", "firmware": "1.0"})
        assert r.status_code == 201, r.text
        assert r.json()["health"]["supervised"] is False
        r = await tove.post("/api/v1/devices/new-1/bind", json={"recipient_id": "r-a"})
        assert r.status_code == 200
        assert r.json()["recipient"] == {"id": "r-a", "name": "Astrid A",
                                         "address": "Storgatan 1"}
        assert gw.watch.supervisor.is_watched("new-1")
        assert gw.core.directory.knows_device("new-1")

        assert (await tove.post("/api/v1/devices", json={
            "id": "new-2", "type": "alarm_unit", "serial": "SN2"})).status_code == 201
        r = await tove.post("/api/v1/devices/new-1/swap", json={"new_device_id": "new-2"})
        assert r.status_code == 200, r.text
        assert r.json()["recipient"]["id"] == "r-a"
        assert r.json()["replaces"] == "new-1"
        assert gw.watch.supervisor.is_watched("new-2")
        assert not gw.watch.supervisor.is_watched("new-1")
        assert not gw.core.directory.knows_device("new-1")
        assert gw.core.directory.knows_device("new-2")
        history = (await tove.get("/api/v1/devices/new-2/history")).json()
        assert [e["event"] for e in history][:2] == ["registered", "bound"]
        assert "swapped_in" in [e["event"] for e in history]

        assert (await tove.post("/api/v1/devices/new-2/decommission")).status_code == 200
        assert not gw.core.directory.knows_device("new-2")
        assert (await tove.post("/api/v1/devices/new-2/bind",
                                json={"recipient_id": "r-a"})).status_code == 404


async def test_claim_code_gives_credentials_once(gw: Gateway) -> None:
    async with client_for(gw, "tove") as tove, httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(gw)),
                                       base_url="http://gw") as device:
        claim = (await tove.post("/api/v1/devices/dev-a/claim-code")).json()
        assert claim["qr"].startswith("TRYGG:1;D=dev-a;C=")
        first = await device.post("/api/v1/provisioning/claim", json={"code": claim["qr"]})
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["mqtt"]["username"] == "dev-a"
        assert body["topics"]["subscribe"] == [f"{gw.settings.mqtt.prefix}/dev-a/ack",
                                               f"{gw.settings.mqtt.prefix}/dev-a/cmd"]
        again = await device.post("/api/v1/provisioning/claim", json={"code": claim["code"]})
        assert again.status_code == 404
        assert (await tove.get("/api/v1/devices/dev-a")).json()["credentials"] is True


async def test_test_alarm_publishes_command(gw: Gateway, mosquitto: tuple[str, int]) -> None:
    prefix = gw.settings.mqtt.prefix
    async with aiomqtt.Client(*mosquitto) as listener:
        await listener.subscribe(f"{prefix}/dev-a/cmd", qos=1)
        async with client_for(gw, "tove") as tove:
            r = await tove.post("/api/v1/devices/dev-a/test-alarm")
            assert r.status_code == 202
        async for message in listener.messages:
            assert isinstance(message.payload, bytes)
            assert json.loads(message.payload)["cmd"] == "test_alarm"
            break


async def test_staff_cannot_provision(gw: Gateway) -> None:
    async with client_for(gw, "anna") as anna:
        r = await anna.post("/api/v1/devices", json={"id": "x", "type": "alarm_unit",
                                                       "serial": "s"})
        assert r.status_code == 403
        assert (await anna.get("/api/v1/devices")).status_code == 403


def test_registry_writes_broker_files_and_revokes(tmp_path: Path) -> None:
    org = OrgStore(tmp_path / "org.sqlite3")
    try:
        seed_small(org)
        files = BrokerFiles(tmp_path / "b" / "passwd", tmp_path / "b" / "acl")
        registry = DeviceRegistry(tmp_path, org, BrokerAccount(
            files, prefix="p/v1", gateway_username="gw", gateway_password="gw-password"))
        claim = registry.issue_claim("dev-a", actor="tove")
        password = registry.redeem(claim.code)["mqtt"]["password"]
        lines = dict(line.split(":", 1) for line in files.password_file.read_text().split())
        # One account per broker lane of the gateway (each lane's username is its client id).
        assert set(lines) == {"gw", "gw-telemetry", "dev-a"}
        assert verify_mosquitto_hash(lines["dev-a"], password)
        assert verify_mosquitto_hash(lines["gw-telemetry"], "gw-password")
        acl = files.acl_file.read_text()
        assert "pattern write p/v1/%u/alarm" in acl
        assert "user gw-telemetry\ntopic read p/v1/+/telemetry\n" in acl
        # A device may not be registered under a gateway account's name.
        for name in ("gw", "gw-telemetry"):
            with pytest.raises(ProvisioningError, match="unusable device id"):
                registry.register(device_id=name, type="alarm_unit", serial="s", actor="tove")
        with pytest.raises(ProvisioningError):
            registry.redeem(claim.code)
        registry.decommission("dev-a", actor="tove")
        assert "dev-a" not in files.password_file.read_text()
        with pytest.raises(ProvisioningError):
            registry.issue_claim("dev-a", actor="tove")
    finally:
        org.close()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    org = OrgStore(tmp_path / "org.sqlite3")
    seed_small(org)
    org.close()
    base = ["--data-dir", str(tmp_path)]
    assert main_devices([*base, "register", "cli-1", "--type", "alarm_unit",
                         "--serial", "S", "--recipient", "r-a"]) == 0
    assert main_devices([*base, "register", "cli-2", "--type", "alarm_unit",
                         "--serial", "T"]) == 0
    assert main_devices([*base, "swap", "cli-1", "cli-2"]) == 0
    assert main_devices([*base, "claim-code", "cli-2"]) == 0
    capsys.readouterr()
    assert main_devices([*base, "list"]) == 0
    listed = {d["device_id"]: d for d in json.loads(capsys.readouterr().out)}
    assert listed["cli-1"]["state"] == "decommissioned"
    assert listed["cli-2"]["recipient_id"] == "r-a"
    assert main_devices([*base, "bind", "cli-1", "r-a"]) == 1
