"""SCAIP end to end: a real SIP peer (sipp) raises an alarm that reaches a staff phone.

sipp sends a SIP MESSAGE with an <mrq> over UDP and over TCP; the scenario requires the
200 OK and then the gateway's own MESSAGE carrying <mrs> with snu 0, which the gateway sends
only after the alarm is durably stored. The staff WebSocket must then show the alarm.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from alarms.directory import Directory
from gateway.org import DeviceInfo, OrgStore
from tests.conftest import GatewayFactory, seed_small
from tests.helpers import login, next_alarm
from tests.test_scaip_listener import run_sipp, sipp_required

pytestmark = [pytest.mark.network, sipp_required]


@pytest.fixture(autouse=True)
def _scaip_controller(tmp_path: Path) -> None:
    """The scenario's controller id (cid) is provisioned as a device of team-a."""
    org = OrgStore(tmp_path / "gw" / "org.sqlite3")
    seed_small(org)
    org.put_device(DeviceInfo("sipp4711", "alarm_unit", "r-a", model="SCAIP controller"))
    org.close()


@pytest.mark.parametrize(("transport", "scenario"), [
    ("u1", "scaip_uac_udp.xml"), ("t1", "scaip_uac_tcp.xml")])
async def test_scaip_alarm_from_sipp_reaches_staff(
    mosquitto: tuple[str, int], make_gateway: GatewayFactory, tmp_path: Path,
    transport: str, scenario: str,
) -> None:
    async with make_gateway(mosquitto, scaip={"port": 0}) as gw:
        assert gw.scaip is not None
        port = gw.scaip.udp_port if transport == "u1" else gw.scaip.tcp_port
        anna = await login(f"http://127.0.0.1:{gw.http_port}", "anna")
        async with anna.socket() as ws:
            work = tmp_path / "sipp"
            work.mkdir()
            code, errors = await run_sipp(scenario, transport, port, work)
            assert code == 0, errors
            alarm = await next_alarm(ws)
            assert alarm["device_id"] == "sipp4711"
            assert alarm["ref"] == "sipp1"
            assert alarm["type"] == "manual"
            assert [h["hop"] for h in alarm["hops"]] == ["raised", "stored", "routed"]
        await anna.http.aclose()


async def test_unknown_controller_is_refused(
    mosquitto: tuple[str, int], make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    org = OrgStore(tmp_path / "gw" / "org.sqlite3")
    org.close()
    async with make_gateway(mosquitto, scaip={"port": 0}) as gw:
        gw.core.directory = Directory()  # nobody provisioned
        assert gw.scaip is not None
        work = tmp_path / "sipp"
        work.mkdir()
        code, _ = await asyncio.wait_for(
            run_sipp("scaip_uac_udp.xml", "u1", gw.scaip.udp_port, work), 90)
        assert code != 0, "the scenario requires snu 0, which an unknown cid must not get"
        assert gw.core.alarms == {} or all(
            a.device_id != "sipp4711" for a in gw.core.alarms.values())
