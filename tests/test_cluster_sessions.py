"""What a cluster shares beyond the journal (issue 22, part A), on two gateways in one
process sharing PostgreSQL and a real Mosquitto: sessions (no sticky proxy), the device
registry and broker credentials, and one owner per device for the sensor rules.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from devices.contract import TelemetryMessage
from gateway.broker_auth import (
    BrokerFiles,
    GatewayAccounts,
    accounts_with_gateway,
    mosquitto_conf,
    mosquitto_hash,
)
from gateway.config import OtherGateway
from gateway.partition import owner
from gateway.runtime import Gateway
from tests.conftest import PASSWORD, GatewayFactory, free_port
from tests.helpers import device, login, next_alarm
from tests.test_broker_takeover import _wait_port
from tests.test_cluster import until
from tests.test_journal_contract import pg_dsn  # noqa: F401 - the fixture

pytestmark = pytest.mark.network


@asynccontextmanager
async def cluster(
    make_gateway: GatewayFactory, broker: tuple[str, int], tmp_path: Path, dsn: str,
    count: int = 2,
) -> AsyncIterator[list[Gateway]]:
    """``count`` gateways in one cluster. Gateway ids (and so MQTT client ids) are this
    test's own: other runs share the machine's Mosquitto, and a broker drops the older of
    two sessions with one client id."""
    run = uuid.uuid4().hex[:6]
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(make_gateway(
                broker, data_dir=tmp_path / f"gw{n}", gateway_id=f"gw{n}-{run}",
                journal_dsn=dsn, cluster={"shared_group": f"g{run}", "lease_ttl_s": 1.0},
            ))
            for n in range(count)
        ]


async def _refresh_token(base: str, username: str) -> tuple[str, str]:
    """Log in: (access token, refresh token)."""
    async with httpx.AsyncClient(base_url=base) as client:
        answer = await client.post("/api/v1/auth/token",
                                   data={"username": username, "password": PASSWORD})
        answer.raise_for_status()
        body = answer.json()
        return body["access_token"], body["refresh_token"]


async def _refresh(base: str, token: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base) as client:
        return await client.post("/api/v1/auth/refresh", json={"refresh_token": token})


async def test_no_sticky_sessions(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory,
    pg_dsn: str,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    """A refresh token from gateway 1 rotates on gateway 2 (and its replay on gateway 1
    ends the session); a WebSocket on either gateway gets the same live alarm."""
    async with cluster(make_gateway, mosquitto, tmp_path, pg_dsn) as (one, two):
        base1, base2 = (f"http://127.0.0.1:{gw.http_port}" for gw in (one, two))
        _, token = await _refresh_token(base1, "anna")
        rotated = await _refresh(base2, token)
        assert rotated.status_code == 200, rotated.text
        successor = rotated.json()["refresh_token"]
        replay = await _refresh(base1, token)
        assert replay.status_code == 401
        assert "reused" in replay.json()["detail"]
        assert (await _refresh(base2, successor)).status_code == 401  # family revoked

        # Anna's phone and tablet, each landing on another gateway.
        anna = await login(base1, "anna")
        anna2 = await login(base2, "anna")
        async with anna.socket() as ws1, anna2.socket() as ws2:
            async with device(mosquitto, prefix, "dev-a") as dev:
                await dev.alarm("shared-1", "fall")
                assert (await dev.wait_ack("shared-1"))["status"] == "stored"
            seen = [await next_alarm(ws1), await next_alarm(ws2)]
        assert [a["ref"] for a in seen] == ["shared-1", "shared-1"]
        assert seen[0]["id"] == seen[1]["id"]
        await anna.http.aclose()
        await anna2.http.aclose()


async def test_sensor_rules_run_on_exactly_one_gateway_per_device(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory,
    pg_dsn: str,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    """Both gateways receive every sample; each device's samples go to the rules of its
    owner only, and the owners are the partition function's."""
    async with cluster(make_gateway, mosquitto, tmp_path, pg_dsn) as gateways:
        ids = frozenset(gw.settings.gateway_id for gw in gateways)
        await until(lambda: all(gw.membership is not None and gw.membership.members == ids
                                for gw in gateways))
        ruled: dict[str, set[str]] = {gw.settings.gateway_id: set() for gw in gateways}
        for gw in gateways:
            offer = gw.sensors.offer

            def spy(message: TelemetryMessage, gw: Gateway = gw, offer: Any = offer) -> None:
                ruled[gw.settings.gateway_id].add(message.device_id)
                offer(message)

            gw.sensors.offer = spy
        devices = [f"sim-{n:03d}" for n in range(20)]
        async with aiomqtt.Client(*mosquitto, identifier=f"t-{uuid.uuid4().hex[:8]}") as fleet:
            for n, device_id in enumerate(devices):
                body = {"ref": f"t-{n}", "ts": int(time.time() * 1000),
                        "metric": "temperature", "value": 21.5}
                await fleet.publish(f"{prefix}/{device_id}/telemetry", json.dumps(body), qos=1)
        await until(lambda: set().union(*ruled.values()) >= set(devices))
        first, second = ruled.values()
        assert first.isdisjoint(second)
        for gateway_id, owned in ruled.items():
            assert all(owner(d, ids) == gateway_id for d in owned)
        # Both gateways received every sample (each keeps its own graphs complete).
        def received_all(gw: Gateway) -> bool:
            return bool(gw.metrics.ingest.labels("telemetry")._value.get() >= len(devices))

        for gw in gateways:
            await until(functools.partial(received_all, gw))


# -- broker credentials through the shared registry -----------------------------------------

GW1, GW2 = "trygg-gw1", "trygg-gw2"
GW_PASSWORD = "Vinbar-Moln-Gata-47"


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[tuple[int, BrokerFiles, int]]:
    """A private Mosquitto on the files gateway 1 writes: (port, files, pid)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    files = BrokerFiles(tmp_path / "broker" / "passwd", tmp_path / "broker" / "acl")
    other = OtherGateway(username=GW2, password_hash=mosquitto_hash(GW_PASSWORD))
    files.write(accounts_with_gateway([], GW1, GW_PASSWORD, others=[other]), "trygg/v1",
                [GatewayAccounts.named(GW1), GatewayAccounts.named(GW2)])
    config = tmp_path / "mosquitto.conf"
    as_root = "user root\n" if os.geteuid() == 0 else ""
    config.write_text(mosquitto_conf(files, port=port) + as_root + "persistence false\n")
    proc = subprocess.Popen([binary, "-c", str(config)], stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc)
        yield port, files, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


async def test_a_device_enrolled_through_gateway_2_connects_at_once(
    private_broker: tuple[int, BrokerFiles, int], make_gateway: GatewayFactory,
    pg_dsn: str,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    """Registered, given a claim code and redeemed through gateway 2 (which writes no broker
    files); gateway 1 rewrites the files and reloads Mosquitto, and the device connects and
    gets its alarm stored — nothing restarted, nothing copied."""
    port, files, pid = private_broker
    broker = ("127.0.0.1", port)
    cluster_settings = {"shared_group": f"g{uuid.uuid4().hex[:6]}", "lease_ttl_s": 1.0}
    async with AsyncExitStack() as stack:
        one = await stack.enter_async_context(make_gateway(
            broker, data_dir=tmp_path / "gw1", gateway_id="gw1", journal_dsn=pg_dsn,
            cluster=cluster_settings, mqtt={"username": GW1, "password": GW_PASSWORD,
                                            "prefix": "trygg/v1"},
            broker_auth={"password_file": str(files.password_file),
                         "acl_file": str(files.acl_file), "pid": pid,
                         "gateway_username": GW1,
                         "other_gateways": [{"username": GW2, "password_hash":
                                             mosquitto_hash(GW_PASSWORD)}]}))
        two = await stack.enter_async_context(make_gateway(
            broker, data_dir=tmp_path / "gw2", gateway_id="gw2", journal_dsn=pg_dsn,
            cluster=cluster_settings, mqtt={"username": GW2, "password": GW_PASSWORD,
                                            "prefix": "trygg/v1"}))
        registry = two.registry
        assert registry.broker.files is None
        await asyncio.to_thread(lambda: registry.register(
            device_id="new-1", type="alarm_unit", serial="SN-NEW-1", actor="tove",
            recipient_id="r-a"))
        claim = await asyncio.to_thread(registry.issue_claim, "new-1", actor="tove")
        answer = await asyncio.to_thread(registry.redeem, claim.code)
        mqtt = answer["mqtt"]
        assert mqtt["username"] == "new-1"
        # Gateway 1 heard of it and rewrote its files.
        await until(lambda: "new-1:" in files.password_file.read_text())
        assert "new-1" in dict(one.registry.store.credentials())
        acked: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        async with asyncio.timeout(15):
            while True:  # until the broker has re-read its files (SIGHUP is asynchronous)
                try:
                    client = aiomqtt.Client("127.0.0.1", port, username="new-1",
                                            password=mqtt["password"], identifier="new-1")
                    await client.__aenter__()
                    break
                except aiomqtt.MqttError:
                    await asyncio.sleep(0.1)
        try:
            await client.subscribe("trygg/v1/new-1/ack", qos=1)

            async def listen() -> None:
                async for message in client.messages:
                    body = json.loads(bytes(message.payload))
                    if body.get("ref") == "enrolled-1" and not acked.done():
                        acked.set_result(body)

            listener = asyncio.create_task(listen())
            await client.publish("trygg/v1/new-1/alarm", json.dumps(
                {"ref": "enrolled-1", "ts": int(time.time() * 1000), "type": "manual"}), qos=1)
            assert (await asyncio.wait_for(acked, 15))["status"] == "stored"
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        finally:
            await client.__aexit__(None, None, None)
        await until(lambda: any(a.ref == "enrolled-1" for a in one.core.alarms.values()))
        await until(lambda: any(a.ref == "enrolled-1" for a in two.core.alarms.values()))
