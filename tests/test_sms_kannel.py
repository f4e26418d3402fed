"""The SMS fallback against a real Kannel: bearerbox + smsbox with a fake SMSC, and fakesmsc
playing the staff phones (Debian's kannel and kannel-extras; scripts/test installs them).

Every message here really passes through smsbox's sendsms, bearerbox's queue and routing,
the fake SMSC link and back: delivery reports come from bearerbox, replies from fakesmsc
through bearerbox and smsbox's sms-service to the gateway's callback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from alarms.model import GATEWAY_DEVICE, Alarm, AlarmType, EscalationKind, NotificationStatus
from firmware_sim.smsphone import FakeSmsc, SmsPhone, reply_code
from gateway.audit import AUDIT_FILENAME, AuditLog
from gateway.config import load
from gateway.org import OrgStore, RecipientInfo
from gateway.runtime import Gateway
from gateway.sms import REF_PREFIX
from tests.conftest import free_port, seed_small
from tests.helpers import device, login
from tests.kannel import SENDER, Kannel, available

pytestmark = [
    pytest.mark.network,
    pytest.mark.slow,
    pytest.mark.skipif(not available(), reason="needs Debian's kannel and kannel-extras"),
]

SECRET = "callback-secret-" + "k" * 24
ANNA, BO, CLEO = "+46700000001", "+46700000002", "+46700000003"
STRANGER = "+46709999999"


@pytest.fixture
def http_port() -> int:
    return free_port()


@pytest.fixture
async def kannel(tmp_path: Path, http_port: int) -> AsyncIterator[Kannel]:
    kannel = Kannel(tmp_path / "kannel", gateway_url=f"http://127.0.0.1:{http_port}",
                    secret=SECRET)
    await kannel.start()
    try:
        yield kannel
    finally:
        await kannel.stop()


GatewayMaker = Callable[..., Any]


@pytest.fixture
def sms_gateway(tmp_path: Path, prefix: str, http_port: int, mosquitto: tuple[str, int],
                kannel: Kannel) -> GatewayMaker:
    """A seeded gateway whose [sms] is this Kannel; anna, bo (team-a), cleo (team-b) have
    phones; the recipient's entry information and action plan are sensitive on purpose."""

    @asynccontextmanager
    async def factory(**escalation: Any) -> AsyncIterator[Gateway]:
        data_dir = tmp_path / "gw"
        org = OrgStore(data_dir / "org.sqlite3")
        seed_small(org)
        for staff_id, phone in (("anna", ANNA), ("bo", BO), ("cleo", CLEO)):
            org.put_staff(dataclasses.replace(org.staff[staff_id], phone=phone))
        org.put_recipient(RecipientInfo("r-a", "Astrid Andersson", "Storgatan 1", "team-a",
                                        entry_info="Portkod 4711, nyckel i tub",
                                        action_plan="Diabetes typ 1, insulin"))
        settings = load(
            None, demo=True, data_dir=data_dir, gateway_id=f"gw-{uuid.uuid4().hex[:8]}",
            secret_key="test-secret-" + "x" * 40,
            mqtt={"host": mosquitto[0], "port": mosquitto[1], "prefix": prefix},
            http={"host": "127.0.0.1", "port": http_port},
            sms=kannel.settings(SECRET, app_url="https://trygg.test/app/",
                                check_interval_s=0.3),
            escalation={"team_s": 30.0, "next_level_s": 60.0, "centre_s": 90.0,
                        "sms": [{"after_s": 0.3, "max_priority": 2}], **escalation},
        )
        try:
            async with Gateway(settings, org=org) as gw:
                await asyncio.wait_for(gw.wait_connected(), 10)
                yield gw
        finally:
            org.close()

    return factory


async def until(predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    async with asyncio.timeout(timeout):
        while not (found := predicate()):
            await asyncio.sleep(0.05)
    return found


def the_alarm(gw: Gateway, ref: str) -> Alarm:
    return next(a for a in gw.core.alarms.values() if a.ref == ref)


def statuses(alarm: Alarm) -> dict[str, NotificationStatus]:
    return {m.staff_id: m.status for m in alarm.messages().values()}


def audit(data_dir: Path, kind: str) -> list[dict[str, Any]]:
    log = AuditLog.open(data_dir / AUDIT_FILENAME)
    try:
        return [{"actor": r.actor, "subject": r.subject, **r.detail}
                for r in log.records() if r.kind == kind]
    finally:
        log.close()


async def test_sms_reaches_the_phones_and_delivery_reports_join_the_chain(
    sms_gateway: GatewayMaker, kannel: Kannel, mosquitto: tuple[str, int], prefix: str,
    tmp_path: Path,
) -> None:
    async with sms_gateway() as gw, FakeSmsc(kannel.fake_port) as phones, \
            device(mosquitto, prefix, "dev-a") as dev:
        await kannel.wait_smsc_online()
        await dev.alarm("sms-1", "fall")
        await dev.wait_ack("sms-1")
        # Nobody has the app open: no receipt, so the team on duty is texted.
        async with asyncio.timeout(15):
            to_anna = (await phones.wait_for(ANNA))[0]
            to_bo = (await phones.wait_for(BO))[0]
        alarm = the_alarm(gw, "sms-1")
        code = alarm.reply_code
        assert code is not None
        assert to_anna.sender == SENDER
        assert to_anna.text == (f"TRYGG Fall: Storgatan 1. Svara JA {code} för att ta larmet. "
                                "https://trygg.test/app/")
        assert to_bo.text == to_anna.text
        # The least that lets staff act: never the name, key codes or the diagnosis.
        for forbidden in ("Astrid", "Andersson", "4711", "nyckel", "Diabetes", "insulin"):
            assert forbidden not in to_anna.text
        assert CLEO not in {m.receiver for m in phones.messages}  # team-b is not texted
        # Kannel's answer (sent) and the delivery reports (delivered) are journaled.
        await until(lambda: set(statuses(the_alarm(gw, "sms-1")).values())
                    == {NotificationStatus.DELIVERED})
        alarm = the_alarm(gw, "sms-1")
        assert [e.kind for e in alarm.escalations] == [EscalationKind.SMS]
        chain = [(n.staff_id, n.status) for n in alarm.notifications if n.staff_id == "anna"]
        assert chain[0] == ("anna", NotificationStatus.QUEUED)
        assert chain[-1] == ("anna", NotificationStatus.DELIVERED)
        assert ("anna", NotificationStatus.SENT) in chain
        # Staff see the chain per channel in the API; no phone numbers in it.
        anna = await login(f"http://127.0.0.1:{gw.http_port}", "anna")
        body = (await anna.get(f"/alarms/{alarm.id}")).json()
        assert body["reply_code"] == code
        assert {(n["staff_id"], n["status"]) for n in body["notifications"]} >= {
            ("anna", "queued"), ("anna", "delivered"), ("bo", "delivered")}
        assert ANNA not in str(body)
        await anna.http.aclose()
        # The ladder keeps its pace: the SMS was delivered, the first rung is still 30 s off.
        deadline = gw.core.deadline_of(alarm.id)
        assert deadline is not None and deadline.kind is EscalationKind.TEAM
        data_dir = gw.settings.data_dir
    # Replayed from the journal, the chain is the same.
    org = OrgStore(data_dir / "org.sqlite3")
    replayed = Gateway(load(None, demo=True, data_dir=data_dir,
                            secret_key="test-secret-" + "x" * 40), org=org)
    records = await _load(replayed)
    org.close()
    assert any(type(r).__name__ == "NotificationRecorded" for r in records)
    sent = audit(data_dir, "sms_out")
    assert {(e["staff_id"], e["status"]) for e in sent} == {("anna", "sent"), ("bo", "sent")}
    assert all(e["text"] == to_anna.text for e in sent)
    assert {e["to"] for e in sent} == {ANNA, BO}
    assert {e["status"] for e in audit(data_dir, "sms_status")} >= {"delivered"}


async def _load(gateway: Gateway) -> list[Any]:
    async with gateway.journal:
        return await gateway.journal.load()


async def test_reply_from_the_phone_accepts_the_alarm_as_the_app_would(
    sms_gateway: GatewayMaker, kannel: Kannel, mosquitto: tuple[str, int], prefix: str,
) -> None:
    async with sms_gateway() as gw, FakeSmsc(kannel.fake_port) as phones, \
            device(mosquitto, prefix, "dev-a") as dev, asyncio.TaskGroup() as group:
        await kannel.wait_smsc_online()
        # The simulator's staff phone: anna answers after half a second; bo never does.
        anna = SmsPhone(phones, ANNA, delay_s=0.5)
        answering = group.create_task(anna.run(), name="anna's phone")
        await dev.alarm("sms-2")
        await dev.wait_ack("sms-2")
        alarm = await until(lambda: (a := the_alarm(gw, "sms-2")).owner and a)
        assert alarm.owner == "anna"
        accepted = next(h for h in alarm.hops if h.hop.value == "accepted")
        assert accepted.actor == "anna"
        assert anna.answered == [alarm.reply_code]
        # anna is told it worked; the ladder now waits for her on site, not for a rung.
        async with asyncio.timeout(15):
            confirmations = await phones.wait_for(ANNA, 2)
        assert confirmations[1].text.startswith(f"TRYGG: Du har larm {alarm.reply_code} (")
        deadline = gw.core.deadline_of(alarm.id)
        assert deadline is not None and deadline.kind is EscalationKind.LEAD
        # A second reply is harmless (already hers); bo's late reply is refused: taken.
        await phones.send(BO, SENDER, f"JA {alarm.reply_code}")
        async with asyncio.timeout(15):
            to_bo = await phones.wait_for(BO, 2)
        assert "redan taget" in to_bo[1].text
        assert the_alarm(gw, "sms-2").owner == "anna"
        answering.cancel()


async def test_wrong_sender_unknown_code_and_forged_callbacks_are_refused_and_audited(
    sms_gateway: GatewayMaker, kannel: Kannel, mosquitto: tuple[str, int], prefix: str,
) -> None:
    async with sms_gateway() as gw, FakeSmsc(kannel.fake_port) as phones, \
            device(mosquitto, prefix, "dev-a") as dev:
        await kannel.wait_smsc_online()
        await dev.alarm("sms-3")
        await dev.wait_ack("sms-3")
        async with asyncio.timeout(15):
            text = (await phones.wait_for(ANNA))[0].text
        code = reply_code(text)
        assert code is not None
        # cleo (team-b) may not see team-a's alarm: refused, told the same as a bad code.
        await phones.send(CLEO, SENDER, f"JA {code}")
        async with asyncio.timeout(15):
            to_cleo = (await phones.wait_for(CLEO))[0]
        assert to_cleo.text == "TRYGG: Okänd kod eller avslutat larm."
        # A stranger's reply changes nothing and gets no answer.
        await phones.send(STRANGER, SENDER, f"JA {code}")
        # anna names a code that is no alarm's, then answers "no".
        other = "Z9Z9" if code != "Z9Z9" else "Y8Y8"
        await phones.send(ANNA, SENDER, f"JA {other}")
        await phones.send(ANNA, SENDER, f"NEJ {code}")
        async with asyncio.timeout(15):
            to_anna = await phones.wait_for(ANNA, 3)
        assert {m.text for m in to_anna[1:]} == {
            "TRYGG: Okänd kod eller avslutat larm.",
            "TRYGG: Svara JA följt av larmets kod, t.ex. JA K7Q2."}
        await until(lambda: gw.sms is not None and gw.sms.stats.replies_refused >= 4)
        alarm = the_alarm(gw, "sms-3")
        assert alarm.owner is None and not any(h.hop.value == "accepted" for h in alarm.hops)
        assert STRANGER not in {m.receiver for m in phones.messages}
        # Callbacks without the secret, or with a DLR token for another message: 403.
        base = f"http://127.0.0.1:{gw.http_port}/api/v1/sms/kannel"
        async with httpx.AsyncClient() as client:
            forged = await client.get(f"{base}/mo", params={
                "secret": "guess", "from": ANNA, "text": f"JA {code}"})
            assert forged.status_code == 403
            forged_dlr = await client.get(f"{base}/dlr", params={
                "a": "eA", "m": "eA", "t": "0" * 32, "status": "2"})
            assert forged_dlr.status_code == 403
        assert the_alarm(gw, "sms-3").owner is None
        data_dir = gw.settings.data_dir
    replies = audit(data_dir, "sms_in")
    reasons = {(r["from"], r["reason"]) for r in replies}
    assert (CLEO, "may not see alarm") in reasons
    assert (STRANGER, "unknown sender") in reasons
    assert (ANNA, "unknown code") in reasons
    assert any(f == ANNA and r.startswith("not understood") for f, r in reasons)
    assert {r["outcome"] for r in replies} == {"refused"}
    assert len(audit(data_dir, "sms_callback_refused")) == 2


async def test_kannel_down_or_smsc_link_down_raises_a_technical_alarm_cleared_when_back(
    sms_gateway: GatewayMaker, kannel: Kannel,
) -> None:
    def sms_faults(gw: Gateway) -> list[Alarm]:
        return [a for a in gw.core.alarms.values()
                if a.type is AlarmType.TECHNICAL and a.ref.startswith(REF_PREFIX)]

    async with sms_gateway() as gw:
        # No phones connected yet: the fake SMSC link is down, and that is a fault.
        first = (await until(lambda: sms_faults(gw)))[0]
        assert first.device_id == GATEWAY_DEVICE and "SMSC link down" in (first.detail or "")
        async with FakeSmsc(kannel.fake_port):
            await until(lambda: all(a.state == "closed" for a in sms_faults(gw)))
            assert gw.sms is not None and gw.sms.fault is None
            # Kannel itself goes away.
            await kannel.stop()
            down = await until(lambda: [a for a in sms_faults(gw) if a.state == "open"])
            assert "Kannel unreachable" in (down[0].detail or "")
            # Technicians get it, like every technical alarm of the gateway's links.
            assert "tove" in down[0].targets
        await kannel.start()
        async with FakeSmsc(kannel.fake_port):
            await until(lambda: all(a.state == "closed" for a in sms_faults(gw)))
        assert len(sms_faults(gw)) == 2
        assert all(a.cause == "återställd / restored" for a in sms_faults(gw))


async def test_an_sms_that_is_not_delivered_in_time_escalates_at_once(
    sms_gateway: GatewayMaker, kannel: Kannel, mosquitto: tuple[str, int], prefix: str,
) -> None:
    # The phones are off (no fakesmsc): Kannel takes the SMS and queues it; no delivery
    # report comes. The first rung (30 s) must not wait for its time.
    async with sms_gateway(sms_delivery_timeout_s=1.5) as gw, \
            device(mosquitto, prefix, "dev-a") as dev:
        await dev.alarm("sms-4")
        await dev.wait_ack("sms-4")
        alarm = await until(lambda: (a := the_alarm(gw, "sms-4")).level >= 1 and a)
        sms, team = alarm.escalations[0], alarm.escalations[1]
        assert (sms.kind, team.kind) == (EscalationKind.SMS, EscalationKind.TEAM)
        assert 1.4 <= team.at - sms.at < 10  # the delivery timeout, not the 30 s rung
        assert set(statuses(alarm).values()) == {NotificationStatus.SENT}


async def test_kannel_unreachable_when_sending_fails_the_sms_and_escalates(
    sms_gateway: GatewayMaker, kannel: Kannel, mosquitto: tuple[str, int], prefix: str,
) -> None:
    await kannel.stop()
    async with sms_gateway() as gw, device(mosquitto, prefix, "dev-a") as dev:
        await dev.alarm("sms-5")
        await dev.wait_ack("sms-5")
        alarm = await until(lambda: (a := the_alarm(gw, "sms-5")).level >= 1 and a)
        assert set(statuses(alarm).values()) == {NotificationStatus.FAILED}
        failed = next(n for n in alarm.notifications if n.status is NotificationStatus.FAILED)
        assert "Kannel unreachable" in (failed.detail or "")
        assert [e.kind for e in alarm.escalations][:2] == [EscalationKind.SMS,
                                                           EscalationKind.TEAM]
    await kannel.start()  # the fixture stops it again


async def test_the_simulator_plays_a_staff_phone_that_answers_by_sms(
    sms_gateway: GatewayMaker, kannel: Kannel, mosquitto: tuple[str, int], prefix: str,
) -> None:
    async with sms_gateway() as gw, device(mosquitto, prefix, "dev-a") as dev:
        phone = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "sim", "sms-phone",
            "--port", str(kannel.fake_port), "--number", BO, "--delay", "0.2",
            "--duration", "30", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await kannel.wait_smsc_online()
            await dev.alarm("sms-6")
            await dev.wait_ack("sms-6")
            alarm = await until(lambda: (a := the_alarm(gw, "sms-6")).owner and a)
            assert alarm.owner == "bo"
        finally:
            phone.send_signal(signal.SIGINT)
            out, _ = await phone.communicate()
        # It read the alarm SMS (and perhaps already the confirmation) and answered its code.
        assert re.search(rf"\{BO}: received [12], answered {alarm.reply_code}\n", out.decode())
