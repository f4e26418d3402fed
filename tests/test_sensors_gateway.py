"""Sensor telemetry becomes an alarm through the same chain, with its evidence."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.org import DeviceInfo, OrgStore
from tests.conftest import GatewayFactory, seed_small
from tests.helpers import device, login, next_alarm

pytestmark = pytest.mark.network


@pytest.fixture(autouse=True)
def _smoke_detector(tmp_path: Path) -> None:
    org = OrgStore(tmp_path / "gw" / "org.sqlite3")
    seed_small(org)
    org.put_device(DeviceInfo("smoke-a", "smoke", "r-a"))
    org.close()


async def test_smoke_reading_raises_a_smoke_alarm_once_with_evidence(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto) as gw, device(mosquitto, prefix, "smoke-a") as dev:
        anna = await login(f"http://127.0.0.1:{gw.http_port}", "anna")
        async with anna.socket() as ws:
            now = int(time.time() * 1000)
            for n, value in enumerate([0, 0, 1, 1, 1]):
                await dev.publish("telemetry", {"ref": f"s{n}", "ts": now - 4000 + n * 1000,
                                                "metric": "smoke", "value": value})
            alarm = await next_alarm(ws, timeout=15)
        assert alarm["type"] == "smoke"
        assert alarm["priority"] == 1
        assert alarm["device_id"] == "smoke-a"
        assert alarm["detail"]
        assert [h["hop"] for h in alarm["hops"]] == ["raised", "stored", "routed"]
        await gw.telemetry.flush()
        evidence = (await anna.get(f"/alarms/{alarm['id']}/evidence")).json()
        assert evidence["metric"] == "smoke"
        assert [v for _, v in evidence["points"]][-3:] == [1.0, 1.0, 1.0]
        # One episode, one alarm — not one per sample.
        smoke = [a for a in gw.core.alarms.values() if a.type.value == "smoke"]
        assert len(smoke) == 1
        await anna.http.aclose()
