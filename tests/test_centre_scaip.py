"""The SCAIP alarm-centre adapter against sipp acting as the centre, over real sockets.

Scenarios in tests/sipp/: ``centre_uas_mrs_in_200.xml`` (the <mrs> in the 200 OK),
``centre_uas_mrs_message.xml`` (200 OK, then the <mrs> in a MESSAGE of its own),
``centre_uas_silent.xml`` (never answers), ``centre_uas_pi.xml`` (answers a PI keepalive).
sipp checks the <mrq>'s shape itself (an ``ereg`` failure fails its call and its exit
code); the exact fields are read from its message log.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from alarms.model import AlarmType
from devices.scaip import ScaipRequest, parse_mrq
from devices.scaip_out import Verdict, centre_ref, parse_sip_uri
from gateway.centre_scaip import ScaipCentre
from tests.conftest import GatewayFactory
from tests.helpers import device
from tests.test_scaip_listener import SCENARIOS, SIPP, sipp_required

pytestmark = [pytest.mark.network, sipp_required]

# Timers scaled down (T1 = 50 ms, so Timer F = 3.2 s) so that "no answer" takes seconds,
# not 32; they are the same RFC 3261 rules. Bounds below are for waiting, not speed checks.
FAST_T1 = 0.05
WAIT = 20.0
ALARM = {"id": "019000000000a-abcdefabcdef", "device_id": "dev-a", "type": "smoke"}


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _bound(port: int, transport: str) -> bool:
    # sipp is ready once its socket is bound (TCP: listening); read the kernel's tables
    # rather than probe it, which would count as a call.
    table = Path("/proc/net/udp" if transport == "udp" else "/proc/net/tcp").read_text()
    for line in table.splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if int(local.split(":")[1], 16) == port and (transport == "udp" or state == "0A"):
            return True
    return False


@dataclass
class Sipp:
    """A running sipp centre: its port, process and work directory."""

    port: int
    process: asyncio.subprocess.Process
    work: Path

    async def finished(self) -> int:
        """Wait for sipp to end its call; its exit code (0: every check passed)."""
        await asyncio.wait_for(self.process.wait(), WAIT)
        return self.process.returncode or 0

    def received(self) -> list[ScaipRequest]:
        """The <mrq> documents sipp received, from its message log."""
        out = []
        for log in self.work.glob("*_messages.log"):
            for body in re.findall(rb"<mrq>.*?</mrq>", log.read_bytes()):
                parsed = parse_mrq(body)
                if isinstance(parsed, ScaipRequest):
                    out.append(parsed)
        return out

    def errors(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.work.glob("*_errors.log"))


@contextlib.asynccontextmanager
async def sipp_centre(scenario: str, transport: str, work: Path, *, snu: int = 0,
                      port: int | None = None) -> AsyncIterator[Sipp]:
    """sipp as a SCAIP centre (UAS) on 127.0.0.1, for one call."""
    assert SIPP is not None
    port = port or _free_port(socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM)
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        SIPP, "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1", "-p", str(port),
        "-t", "u1" if transport == "udp" else "t1", "-m", "1", "-key", "snu", str(snu),
        "-timeout", "60s", "-nostdin", "-trace_err", "-trace_msg",
        cwd=work, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with asyncio.timeout(WAIT):
            # A centre that already answered a retransmission and ended its call has been up.
            while not _bound(port, transport) and process.returncode is None:
                await asyncio.sleep(0.05)
        yield Sipp(port, process, work)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


Confirmed = list[tuple[str, int, str | None]]


def centre(port: int, transport: str, **kwargs: object) -> tuple[ScaipCentre, Confirmed]:
    confirmed: Confirmed = []

    async def confirm(alarm_id: str, attempt: int, reference: str | None) -> None:
        confirmed.append((alarm_id, attempt, reference))

    options: dict[str, object] = {"keepalive": "none", "t1": FAST_T1, "controller_id": "4711"}
    options.update(kwargs)
    adapter = ScaipCentre(target=parse_sip_uri(f"sip:larm@127.0.0.1:{port}"),
                          transport=transport, confirm=confirm, **options)  # type: ignore[arg-type]
    return adapter, confirmed


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("scenario", ["centre_uas_mrs_in_200.xml", "centre_uas_mrs_message.xml"])
async def test_sipp_centre_confirms(tmp_path: Path, transport: str, scenario: str) -> None:
    async with sipp_centre(scenario, transport, tmp_path) as sipp:
        adapter, confirmed = centre(sipp.port, transport)
        async with adapter:
            outcome = await adapter.deliver(ALARM, 3)
        assert (outcome.verdict, outcome.snu) == (Verdict.CONFIRMED, 0)
        assert await sipp.finished() == 0, sipp.errors()
        [mrq] = sipp.received()
    ref = centre_ref(ALARM["id"])
    assert confirmed == [(ALARM["id"], 3, f"scaip:{ref}")]
    # What the centre got: the alarm as its controller would send it (cid = device id).
    assert (mrq.ref, mrq.cid, mrq.dty, mrq.stc, mrq.did) == (ref, "4711", "0023", "0010", "dev-a")
    assert adapter.stats.mrs_messages == (1 if "message" in scenario else 0)
    assert adapter.link.up is True


@pytest.mark.parametrize(("snu", "verdict"), [(6, Verdict.RETRY), (2, Verdict.REFUSED)])
async def test_sipp_centre_busy_or_refusing(tmp_path: Path, snu: int, verdict: Verdict) -> None:
    faults: list[tuple[str, bool, str]] = []

    async def on_fault(kind: str, active: bool, detail: str) -> None:
        faults.append((kind, active, detail))

    async with sipp_centre("centre_uas_mrs_message.xml", "udp", tmp_path, snu=snu) as sipp:
        adapter, confirmed = centre(sipp.port, "udp", on_fault=on_fault,
                                    controller_id="4711")
        async with adapter:
            outcome = await adapter.deliver(ALARM, 1)
        assert await sipp.finished() == 0, sipp.errors()
        [mrq] = sipp.received()
    assert (outcome.verdict, outcome.snu) == (verdict, snu)
    assert confirmed == []  # the core asks again on its schedule
    assert (mrq.cid, mrq.did) == ("4711", "dev-a")
    refusals = [(active, detail) for kind, active, detail in faults if kind == "refused"]
    if verdict is Verdict.REFUSED:
        [(active, detail)] = refusals
        assert active
        assert "snu 2" in detail
    else:
        assert refusals == []
    # Busy or refusing, the centre answered: the link is up.
    assert [(k, a) for k, a, _ in faults if k == "link"] == [("link", False)]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_silent_centre_is_a_link_fault_cleared_when_it_answers(
    tmp_path: Path, transport: str
) -> None:
    faults: list[tuple[str, bool]] = []

    async def on_fault(kind: str, active: bool, detail: str) -> None:
        faults.append((kind, active))

    async with sipp_centre("centre_uas_silent.xml", transport, tmp_path / "silent") as sipp:
        port = sipp.port
        adapter, confirmed = centre(port, transport, on_fault=on_fault)
        async with adapter:
            outcome = await adapter.deliver(ALARM, 1)
            assert outcome.verdict is Verdict.NO_ANSWER
            assert faults == [("link", True)]
            # Over UDP the request was retransmitted (RFC 3261 Timer E) until Timer F.
            assert (adapter.stats.retransmissions > 3) is (transport == "udp")
            if transport == "tcp":
                await adapter._close_link()  # the silent centre's connection is dropped
    async with adapter:
        pass  # reusable: a new run of the same adapter
    async with sipp_centre("centre_uas_mrs_in_200.xml", transport, tmp_path / "back",
                           port=port) as sipp:
        async with adapter:
            outcome = await adapter.deliver(ALARM, 2)
        assert await sipp.finished() == 0, sipp.errors()
    assert outcome.verdict is Verdict.CONFIRMED
    assert faults == [("link", True), ("link", False), ("refused", False)]
    assert confirmed == [(ALARM["id"], 2, f"scaip:{centre_ref(ALARM['id'])}")]


async def test_nobody_listening_is_a_link_fault(tmp_path: Path) -> None:
    faults: list[tuple[str, bool]] = []

    async def on_fault(kind: str, active: bool, detail: str) -> None:
        faults.append((kind, active))

    adapter, _ = centre(_free_port(socket.SOCK_STREAM), "tcp", on_fault=on_fault)
    async with adapter:
        outcome = await adapter.deliver(ALARM, 1)
    assert outcome.verdict is Verdict.NO_ANSWER
    assert "cannot connect" in outcome.detail
    assert faults == [("link", True)]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_pi_keepalive_supervises_the_link(tmp_path: Path, transport: str) -> None:
    async with sipp_centre("centre_uas_pi.xml", transport, tmp_path) as sipp:
        adapter, _ = centre(sipp.port, transport, keepalive="pi", keepalive_s=3600.0,
                            controller_id="4711")
        async with adapter:
            async with asyncio.timeout(WAIT):
                while adapter.link.up is None:
                    await asyncio.sleep(0.02)
        assert adapter.link.up is True
        assert await sipp.finished() == 0, sipp.errors()
        [pi] = sipp.received()
    assert (pi.mty.value, pi.cid) == ("PI", "4711")


# -- the whole gateway ----------------------------------------------------------------------


async def test_gateway_escalates_to_the_scaip_centre_retries_and_raises_then_clears(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    port = _free_port(socket.SOCK_DGRAM)
    escalation = {
        "team_s": 0.2, "next_level_s": 0.4, "centre_s": 0.6, "centre_retry_s": 0.5,
        "centre_protocol": "scaip",
        "centre_scaip": {"uri": f"sip:larm@127.0.0.1:{port}", "transport": "udp",
                         "keepalive": "none", "controller_id": "4711"},
    }
    async with make_gateway(mosquitto, escalation=escalation) as gw, \
            device(mosquitto, prefix, "dev-a") as dev:
        assert isinstance(gw.services.centre, ScaipCentre)
        gw.services.centre._t1, gw.services.centre._t2 = FAST_T1, 8 * FAST_T1  # Timer F 3.2 s, as above
        # First the centre is silent: the delivery times out and a technical alarm says so.
        async with sipp_centre("centre_uas_silent.xml", "udp", tmp_path / "silent",
                               port=port):
            await dev.alarm("needs-the-centre", "fall")
            await dev.wait_ack("needs-the-centre")
            async with asyncio.timeout(WAIT):
                while not gw.open_technical("centre-link."):
                    await asyncio.sleep(0.05)
        [fault] = gw.open_technical("centre-link.")
        assert "does not answer" in (fault.detail or "")
        # Then it answers: the core's next attempt is confirmed and the fault cleared.
        async with sipp_centre("centre_uas_mrs_message.xml", "udp", tmp_path / "back",
                               port=port) as sipp:
            async with asyncio.timeout(WAIT):
                while True:
                    alarm = gw.core.find("dev-a", "needs-the-centre")
                    if alarm is not None and alarm.centre_confirmed_at is not None:
                        break
                    await asyncio.sleep(0.05)
            assert await sipp.finished() == 0, sipp.errors()
            [mrq] = sipp.received()
        assert alarm.centre_attempts >= 2
        assert alarm.centre_reference == f"scaip:{centre_ref(alarm.id)}"
        assert (mrq.ref, mrq.cid, mrq.dty) == (centre_ref(alarm.id), "4711", "0005")
        async with asyncio.timeout(WAIT):
            while gw.open_technical("centre-link."):
                await asyncio.sleep(0.05)
        assert alarm.type is AlarmType.FALL


def test_settings() -> None:
    from pydantic import ValidationError

    from gateway.config import EscalationSettings

    with pytest.raises(ValidationError, match="needs"):
        EscalationSettings(centre_protocol="scaip")
    with pytest.raises(ValidationError, match="URI"):
        EscalationSettings.model_validate({"centre_protocol": "scaip",
                                           "centre_scaip": {"uri": "http://x",
                                                            "controller_id": "1"}})
    with pytest.raises(ValidationError, match="centre code"):
        EscalationSettings.model_validate({"centre_protocol": "scaip", "centre_scaip": {
            "uri": "sip:a@b", "controller_id": "1", "codes": {"gas": {"dty": "1"}}}})
    with pytest.raises(ValidationError, match="transport = tls"):
        EscalationSettings.model_validate({"centre_protocol": "scaip", "centre_scaip": {
            "uri": "sip:a@b", "controller_id": "1", "tls_server_name": "x"}})
    ok = EscalationSettings.model_validate({"centre_protocol": "scaip", "centre_scaip": {
        "uri": "sip:larm@192.0.2.1:5070", "transport": "tcp", "controller_id": "4712",
        "codes": {"fall": {"dty": "0005"}}}})
    assert ok.centre_scaip is not None
    assert ok.centre_scaip.target().port == 5070
