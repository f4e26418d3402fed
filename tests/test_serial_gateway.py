"""Serial end to end: a receiver on a pty line raises alarms that reach staff; an unknown
device behind it is refused for good; the line vanishing raises a technical alarm."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from alarms.model import AlarmType
from firmware_sim import Backoff
from firmware_sim.serial_device import SerialReceiverSim
from gateway.org import DeviceInfo, OrgStore
from tests.conftest import GatewayFactory, seed_small
from tests.helpers import login, next_alarm

pytestmark = pytest.mark.network


@pytest.fixture(autouse=True)
def _serial_devices(tmp_path: Path) -> None:
    org = OrgStore(tmp_path / "gw" / "org.sqlite3")
    seed_small(org)
    org.put_device(DeviceInfo("rx-a", "alarm_unit", "r-a"))
    org.put_device(DeviceInfo("rx-b", "alarm_unit", "r-b"))
    org.close()


async def test_serial_alarms_reach_staff_and_unknown_devices_are_refused(
    mosquitto: tuple[str, int], make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    sim = SerialReceiverSim(["rx-a", "rx-b", "rx-ghost"], link_path=tmp_path / "ttyRX",
                            backoff=Backoff(0.05, 0.2), seed=3)
    async with sim:
        line = {"name": "rx1", "url": str(sim.path), "baudrate": 115200}
        async with make_gateway(mosquitto, serial=[line]) as gw:
            link = gw.serial_links["rx1"]
            await asyncio.wait_for(link.wait_up(), 5)
            anna = await login(f"http://127.0.0.1:{gw.http_port}", "anna")
            async with anna.socket() as ws:
                sent = [sim.raise_alarm("rx-a", AlarmType.FALL),
                        sim.raise_alarm("rx-ghost", AlarmType.MANUAL)]
                assert await sim.wait_settled(sent, timeout=10)
                alarm = await next_alarm(ws)
                assert (alarm["device_id"], alarm["type"]) == ("rx-a", "fall")
            assert sent[0].status == "stored"
            assert sent[1].status != "stored"  # refused for good: nobody will come
            assert not sent[1].pending
            await anna.http.aclose()


async def test_serial_line_unplugged_raises_and_clears_a_technical_alarm(
    mosquitto: tuple[str, int], make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    sim = SerialReceiverSim(["rx-a"], link_path=tmp_path / "ttyRX",
                            backoff=Backoff(0.05, 0.2), seed=4)
    async with sim:
        line = {"name": "rx1", "url": str(sim.path), "baudrate": 115200}
        async with make_gateway(mosquitto, serial=[line]) as gw:
            await asyncio.wait_for(gw.serial_links["rx1"].wait_up(), 5)
            tove = await login(f"http://127.0.0.1:{gw.http_port}", "tove")

            async def line_alarm(state: str) -> dict[str, object]:
                async with asyncio.timeout(15):
                    while True:
                        for alarm in (await tove.get("/alarms?state=all")).json():
                            if alarm["ref"].startswith("serial-rx1.") and alarm["state"] == state:
                                return dict(alarm)
                        await asyncio.sleep(0.05)

            sim.unplug()
            raised = await line_alarm("open")
            assert raised["type"] == "technical"
            sim.plug()
            cleared = await line_alarm("closed")
            assert cleared["id"] == raised["id"]
            await tove.http.aclose()
