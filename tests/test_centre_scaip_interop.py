"""SCAIP out against SCAIP in: the sender (gateway/centre_scaip.py) talking to this
project's own receiver (gateway/sip.py) over UDP, TCP and TLS with certificate checks.

sipp is the independent peer (tests/test_centre_scaip.py); this proves the two halves of
trygg agree, and covers TLS, which the sipp tests do not.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from devices.scaip import MessageType, ScaipRequest, Snu
from devices.scaip_out import Verdict, centre_ref, parse_sip_uri
from devices.sip import SipRequest
from gateway.centre import Confirm
from gateway.centre_scaip import ScaipCentre, scaip_centre
from gateway.config import CentreScaipSettings, ScaipSettings
from gateway.sip import ScaipListener
from gateway.tls import create_ca, issue

pytestmark = pytest.mark.network

ALARM = {"id": "019000000000b-abcdefabcdef", "device_id": "dev-a", "type": "manual"}


class Centre:
    """A SCAIP centre made of trygg's own listener: records each <mrq>, answers ``snu``."""

    def __init__(self, snu: int = Snu.OK) -> None:
        self.snu = snu
        self.received: list[tuple[ScaipRequest, SipRequest]] = []

    async def __call__(self, request: ScaipRequest, sip: SipRequest) -> int:
        self.received.append((request, sip))
        return self.snu


def _confirmations() -> tuple[list[tuple[str, int, str | None]], Confirm]:
    confirmed: list[tuple[str, int, str | None]] = []

    async def confirm(alarm_id: str, attempt: int, reference: str | None) -> None:
        confirmed.append((alarm_id, attempt, reference))

    return confirmed, confirm


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("in_200", [False, True])
async def test_sender_and_listener_agree(transport: str, in_200: bool) -> None:
    centre = Centre()
    confirmed, confirm = _confirmations()
    async with ScaipListener(centre, port=0, mrs_in_response={"4711"} if in_200 else ()) as rx:
        port = rx.udp_port if transport == "udp" else rx.tcp_port
        sender = ScaipCentre(target=parse_sip_uri(f"sip:trygg@127.0.0.1:{port}"),
                             transport=transport, confirm=confirm,
                             keepalive="none", t1=0.05, controller_id="4711")
        async with sender:
            outcome = await sender.deliver(ALARM, 1)
            again = await sender.deliver(ALARM, 2)  # a retry: same ref, a new transaction
    assert outcome.verdict is Verdict.CONFIRMED
    assert again.verdict is Verdict.CONFIRMED
    ref = centre_ref(ALARM["id"])
    assert [(r.ref, r.cid, r.mty) for r, _ in centre.received] == [
        (ref, "4711", MessageType.ALARM)] * 2
    assert all(r.did == "dev-a" for r, _ in centre.received)
    # The listener checks From user == cid and would have answered snu 3 otherwise.
    assert all(sip.from_user == "4711" for _, sip in centre.received)
    assert confirmed == [(ALARM["id"], 1, f"scaip:{ref}"), (ALARM["id"], 2, f"scaip:{ref}")]
    assert sender.stats.mrs_messages == (0 if in_200 else 2)


async def test_busy_listener_is_a_retry() -> None:
    centre = Centre(Snu.BUSY)
    confirmed, confirm = _confirmations()
    async with ScaipListener(centre, port=0, tcp=False) as rx:
        sender = ScaipCentre(target=parse_sip_uri(f"sip:trygg@127.0.0.1:{rx.udp_port}"),
                             transport="udp", confirm=confirm,
                             keepalive="none", t1=0.05, controller_id="4711")
        async with sender:
            outcome = await sender.deliver(ALARM, 1)
    assert (outcome.verdict, outcome.snu) == (Verdict.RETRY, Snu.BUSY)
    assert confirmed == []


async def test_tls_with_a_verified_centre_and_pi_keepalive(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    ca = await asyncio.to_thread(create_ca, pki)
    server = await asyncio.to_thread(issue, ca, pki, "larm.example", server=True,
                                     hosts=("larm.example", "127.0.0.1"))
    centre = Centre()
    confirmed, confirm = _confirmations()
    listener_tls = ScaipSettings(udp=False, tls_cert=server.cert,
                                 tls_key=server.key).server_context()
    async with ScaipListener(centre, port=0, udp=False, tls=listener_tls) as rx:
        settings = CentreScaipSettings(
            uri=f"sip:larm@127.0.0.1:{rx.tcp_port}", transport="tls", ca_file=ca.cert,
            tls_server_name="larm.example", controller_id="4711", keepalive="pi",
            keepalive_s=3600.0)
        sender = scaip_centre(settings, confirm, None)
        async with sender:
            async with asyncio.timeout(20):
                while sender.link.up is None:  # the PI keepalive at start
                    await asyncio.sleep(0.02)
            outcome = await sender.deliver(ALARM, 1)
    assert sender.link.up is True
    assert outcome.verdict is Verdict.CONFIRMED
    pi, alarm = centre.received
    assert (pi[0].mty, pi[0].cid) == (MessageType.HEARTBEAT, "4711")
    assert (alarm[0].cid, alarm[0].did) == ("4711", "dev-a")
    assert len(confirmed) == 1


async def test_tls_refuses_a_centre_it_cannot_verify(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    ca = await asyncio.to_thread(create_ca, pki)
    other = await asyncio.to_thread(create_ca, tmp_path / "other")
    server = await asyncio.to_thread(issue, ca, pki, "larm.example", server=True)
    listener_tls = ScaipSettings(udp=False, tls_cert=server.cert,
                                 tls_key=server.key).server_context()
    faults: list[tuple[str, bool]] = []

    async def on_fault(kind: str, active: bool, detail: str) -> None:
        faults.append((kind, active))

    async with ScaipListener(Centre(), port=0, udp=False, tls=listener_tls) as rx:
        settings = CentreScaipSettings(uri=f"sip:larm@127.0.0.1:{rx.tcp_port}",
                                       transport="tls", ca_file=other.cert, keepalive="none",
                                       controller_id="4711")
        _, confirm = _confirmations()
        sender = scaip_centre(settings, confirm, on_fault)
        async with sender:
            outcome = await sender.deliver(ALARM, 1)
    assert outcome.verdict is Verdict.NO_ANSWER
    assert "cannot connect" in outcome.detail
    assert faults == [("link", True)]
