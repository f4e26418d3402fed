"""The SMS service's own duties on a fake host and a fake sendsms endpoint: the journaled
outbox is re-sent after a restart, only by the escalating gateway, never for an alarm that
was taken meanwhile; callbacks refuse addresses not allowed. (Kannel itself: test_sms_kannel.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from fastapi import FastAPI

from alarms.core import AlarmCore
from alarms.directory import Directory, Recipient, Staff
from alarms.escalation import TeamPolicy
from alarms.events import AcceptRequested, AlarmReceived, Event, StaffEvent, Tick
from alarms.model import Alarm, AlarmType, NotificationStatus
from gateway import sms as sms_module
from gateway.config import SmsSettings
from gateway.duties import ESCALATION
from gateway.org import OrgStore, RecipientInfo, StaffMember, Team
from gateway.sms import SmsService
from tests.conftest import free_port
from tests.helpers import running

T0 = 1_768_381_200.0
SECRET = "callback-secret-" + "s" * 24
DIRECTORY = Directory(
    device_recipient={"dev-a": "r-a"},
    recipients={"r-a": Recipient("r-a", "team-a")},
    staff={"anna": Staff("anna", frozenset({"team-a"}), sms=True),
           "bo": Staff("bo", frozenset({"team-a"}), sms=True)},
    policies={"team-a": TeamPolicy(sms_after_s=((2, 10.0),))},
)


class Audit:
    def __init__(self) -> None:
        self.entries: list[tuple[str, str, dict[str, Any]]] = []

    def record(self, kind: str, *, actor: str, subject: str,
               detail: Mapping[str, Any] | None = None, at: float | None = None) -> None:
        self.entries.append((kind, subject, dict(detail or {})))


class Host:
    """The gateway, as far as the SMS service sees it: a real core and organisation."""

    def __init__(self, org: OrgStore) -> None:
        self.core = AlarmCore(DIRECTORY)
        self.org = org
        self.audit = Audit()
        self.leases = {ESCALATION}

    def acts(self, lease: str) -> bool:
        return lease in self.leases

    def may_see(self, staff_id: str, alarm: Alarm) -> bool:
        return staff_id in alarm.targets

    def decide(self, event: Event, now: float) -> bool:
        decision = self.core.decide(event, now)
        self.core.apply_all(decision.records)
        return decision.refusal is None

    async def act(self, event: StaffEvent) -> Alarm:
        self.decide(event, T0 + 20)
        return self.core.alarms[event.alarm_id]

    def open_technical(self, ref_prefix: str) -> list[Alarm]:
        return []

    async def submit_internal(self, event: Event, attempt: int = 1) -> None:
        self.decide(event, T0 + 30)

    async def report(self, event: Event) -> bool:
        return self.decide(event, T0 + 15)


class Sendsms:
    """smsbox's sendsms, faked: records the queries, answers 202 as Kannel does."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.query))
        return web.Response(status=202, text="0: Accepted for delivery")


@pytest.fixture
async def sendsms() -> AsyncIterator[tuple[Sendsms, str]]:
    fake = Sendsms()
    app = web.Application()
    app.router.add_get("/cgi-bin/sendsms", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield fake, f"http://127.0.0.1:{port}/cgi-bin/sendsms"
    await runner.cleanup()


@pytest.fixture
def host(tmp_path: Path) -> Host:
    org = OrgStore(tmp_path / "org.sqlite3")
    org.put_team(Team("team-a", "Lag A"))
    for staff_id, phone in (("anna", "+46700000001"), ("bo", "+46700000002")):
        org.put_staff(StaffMember(staff_id, staff_id, staff_id.title(), "staff", ("team-a",),
                                  "x", phone=phone))
    org.put_recipient(RecipientInfo("r-a", "Astrid", "Storgatan 1", "team-a",
                                    entry_info="Portkod 4711"))
    found = Host(org)
    found.decide(AlarmReceived("dev-a", "r1", AlarmType.MANUAL, 0, "A1"), T0)
    found.decide(Tick(), T0 + 10)  # the SMS step: two queued messages, nobody sent them
    return found


def settings(url: str, **extra: Any) -> SmsSettings:
    return SmsSettings(sendsms_url=url, username="u", password="p", sender="+46700999000",
                       status_url=None, callback_secret=SECRET, **extra)


def service(host: Host, url: str, **extra: Any) -> SmsService:
    return SmsService(settings(url, **extra), host, report=host.report,
                      callback_base=lambda: "http://gw.test:8080")


def statuses(host: Host) -> set[NotificationStatus]:
    return {m.status for m in host.core.alarms["A1"].messages().values()}


async def until(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_queued_sms_left_by_a_restart_are_sent_from_the_journal(
    host: Host, sendsms: tuple[Sendsms, str]
) -> None:
    fake, url = sendsms
    assert statuses(host) == {NotificationStatus.QUEUED}
    async with running(service(host, url)):
        await until(lambda: statuses(host) == {NotificationStatus.SENT})
    assert sorted(r["to"] for r in fake.requests) == ["+46700000001", "+46700000002"]
    request = fake.requests[0]
    assert request["dlr-mask"] == "27" and request["from"] == "+46700999000"
    assert request["dlr-url"].startswith("http://gw.test:8080/api/v1/sms/kannel/dlr?a=")
    assert "Storgatan 1" in request["text"] and "4711" not in request["text"]
    assert [k for k, _, _ in host.audit.entries] == ["sms_out", "sms_out"]


async def test_only_the_escalating_gateway_sends(
    host: Host, sendsms: tuple[Sendsms, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, url = sendsms
    monkeypatch.setattr(sms_module, "OUTBOX_SWEEP_S", 0.05)
    host.leases = set()
    sms = service(host, url)
    async with running(sms):
        sms.notify({"id": "A1"}, frozenset({"anna"}))
        await asyncio.sleep(0.3)
        assert fake.requests == []  # another gateway of the cluster escalates
        host.leases = {ESCALATION}  # ... until this one takes the lease over
        await until(lambda: len(fake.requests) == 2)
        await until(lambda: statuses(host) == {NotificationStatus.SENT})
        sms.notify({"id": "A1"}, frozenset({"anna"}))  # a later change: nothing to resend
        await sms.drain()
    assert len(fake.requests) == 2


async def test_an_alarm_taken_before_sending_cancels_its_sms(
    host: Host, sendsms: tuple[Sendsms, str]
) -> None:
    fake, url = sendsms
    host.decide(AcceptRequested("A1", "anna"), T0 + 11)
    async with running(service(host, url)):
        await until(lambda: statuses(host) == {NotificationStatus.CANCELLED})
    assert fake.requests == []


async def test_the_queue_is_bounded_and_the_outbox_keeps_what_does_not_fit(
    host: Host, sendsms: tuple[Sendsms, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, url = sendsms
    monkeypatch.setattr(sms_module, "QUEUE_SIZE", 1)
    monkeypatch.setattr(sms_module, "OUTBOX_SWEEP_S", 0.05)
    sms = service(host, url)
    sms.notify({"id": "A1"}, frozenset())  # before the senders run: one fits, one drops
    assert sms.stats.dropped == 1
    async with running(sms):
        await until(lambda: statuses(host) == {NotificationStatus.SENT})
    assert len(fake.requests) == 2


async def test_callbacks_from_addresses_not_allowed_are_refused(
    host: Host, sendsms: tuple[Sendsms, str]
) -> None:
    _, url = sendsms
    sms = service(host, url, callback_allow=["10.0.0.0/8"])
    app = FastAPI()
    app.include_router(sms.router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 1)),
                                 base_url="http://gw") as client:
        answer = await client.get("/api/v1/sms/kannel/mo",
                                  params={"secret": SECRET, "from": "+46700000001",
                                          "text": "JA K7Q2"})
    assert answer.status_code == 403
    assert sms.stats.callbacks_refused == 1
    assert host.audit.entries[-1][0] == "sms_callback_refused"
    assert not host.core.alarms["A1"].owner


async def test_a_delivery_report_through_the_callback_reaches_the_chain(
    host: Host, sendsms: tuple[Sendsms, str]
) -> None:
    fake, url = sendsms
    sms = service(host, url)
    async with running(sms):
        await until(lambda: len(fake.requests) == 2)
        await until(lambda: statuses(host) == {NotificationStatus.SENT})
    app = FastAPI()
    app.include_router(sms.router)
    dlr = fake.requests[0]["dlr-url"].replace("%d", "1").replace("%A", "")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gw.test:8080") as client:
        assert (await client.get(dlr)).status_code == 200
        # Tampered: the token no longer matches the message.
        tampered = dlr.replace("&t=", "&t=0")
        assert (await client.get(tampered)).status_code == 403
    delivered = [m for m in host.core.alarms["A1"].messages().values()
                 if m.status is NotificationStatus.DELIVERED]
    assert len(delivered) == 1 and delivered[0].detail == "DLR 1"


async def test_the_service_is_reusable_but_not_reentrant(
    host: Host, sendsms: tuple[Sendsms, str]
) -> None:
    fake, url = sendsms
    sms = service(host, url)
    async with running(sms):
        with pytest.raises(RuntimeError, match="already running"):
            await sms.__aenter__()
        await until(lambda: statuses(host) == {NotificationStatus.SENT})
    async with running(sms):  # again, after a clean exit
        pass
    assert len(fake.requests) == 2
