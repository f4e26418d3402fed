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
    org.put_device(DeviceInfo("4711", "alarm_unit", "r-a", model="SCAIP controller"))
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
            assert alarm["device_id"] == "4711"
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
            a.device_id != "4711" for a in gw.core.alarms.values())


async def test_scaip_over_tls_with_client_certificates(
    mosquitto: tuple[str, int], make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    import ssl

    from devices.scaip import ScaipResponse, encode_mrq, parse_mrs
    from devices.sip import SipRequest, SipResponse, SipStreamReader, build_response
    from gateway.tls import create_ca, issue
    from tests.test_scaip_listener import sip_message

    pki = tmp_path / "pki"
    ca = create_ca(pki)
    server = issue(ca, pki, "gateway", server=True)
    client = issue(ca, pki, "4711", server=False)
    scaip = {"port": 0, "udp": False, "tls_cert": str(server.cert), "tls_key": str(server.key),
             "tls_client_ca": str(ca.cert)}
    async with make_gateway(mosquitto, scaip=scaip) as gw:
        assert gw.scaip is not None
        assert gw.scaip.tcp_port is not None
        context = ssl.create_default_context(cafile=ca.cert)
        context.load_cert_chain(client.cert, client.key)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", gw.scaip.tcp_port, ssl=context, server_hostname="127.0.0.1")
        try:
            body = encode_mrq(ref="tls1", cid="4711", dty="0004", stc="0010")
            writer.write(sip_message(body, user="4711", transport="TLS"))
            framer = SipStreamReader()
            received: list[object] = []
            async with asyncio.timeout(10):
                while len(received) < 2:
                    data = await reader.read(65536)
                    assert data, "the gateway closed the TLS connection"
                    received += framer.feed(data)
            ok, mrs_request = received
            assert isinstance(ok, SipResponse)
            assert ok.status == 200
            assert isinstance(mrs_request, SipRequest)
            mrs = parse_mrs(mrs_request.body)
            assert isinstance(mrs, ScaipResponse)
            assert (mrs.ref, mrs.snu) == ("tls1", 0)
            writer.write(build_response(200, request=mrs_request, to_tag="d"))
            await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()
        assert gw.core.find("4711", "tls1") is not None
        # Without a client certificate the connection is refused (with TLS 1.3 the client
        # learns it at its first read: an alert or an immediate close), and nothing stored.
        plain = ssl.create_default_context(cafile=ca.cert)
        answer = b"?"
        try:
            r2, w2 = await asyncio.open_connection(
                "127.0.0.1", gw.scaip.tcp_port, ssl=plain, server_hostname="127.0.0.1")
            w2.write(sip_message(encode_mrq(ref="tls2", cid="4711", dty="0004",
                                            stc="0010"), user="4711", transport="TLS"))
            await w2.drain()
            answer = await asyncio.wait_for(r2.read(65536), 10)
            w2.close()
        except (ssl.SSLError, ConnectionError):
            answer = b""
        assert answer == b""
        assert gw.core.find("4711", "tls2") is None
