"""The SMS fallback's I/O shell: send through Kannel, take delivery reports and replies back,
supervise Kannel. The decisions are the core's (``alarms/``); the wire format and texts are
``gateway/smscodec.py``; this module moves bytes and reports what happened.

- **Sending.** ``SmsService.notify`` is a notifier hook like Web Push's (``Gateway.notifiers``):
  called with every changed alarm, it picks up the alarm's *queued* SMS (journaled by the
  core when its SMS step fell due) and hands them to a bounded queue; sender tasks submit
  each to smsbox's ``sendsms`` with a ``dlr-url`` back to the gateway, and report Kannel's
  answer (``sent`` or ``failed``) to the core, which journals it. The queued records are the
  outbox: a sweep re-sends what is still queued after a restart, a full queue or a lease
  take-over. Only the gateway that escalates (the escalation lease) sends.
- **Callbacks.** ``GET /api/v1/sms/kannel/dlr`` (delivery reports, a per-message token) and
  ``GET /api/v1/sms/kannel/mo`` (replies, the shared secret); optionally restricted to
  Kannel's addresses. A reply ``JA <code>`` from the number of a staff member who may see
  that alarm becomes their ``AcceptRequested``, exactly as the app's accept button.
- **Supervision.** bearerbox's ``status.xml`` is polled; Kannel unreachable, not running,
  without smsbox or without an online SMSC link raises a technical alarm (ref ``sms.<ms>``),
  closed when SMS can flow again.

Every SMS out and every reply in is audited (``sms_out``, ``sms_in``, ``sms_status``).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime.
import asyncio
import contextlib
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

import httpx
from fastapi import APIRouter, Request, Response

from alarms.events import (
    AcceptRequested,
    AlarmReceived,
    Event,
    NotificationReported,
    StaffEvent,
    TechnicalCleared,
)
from alarms.model import (
    GATEWAY_DEVICE,
    SMS_CHANNEL,
    Alarm,
    AlarmType,
    NotificationStatus,
)
from gateway.config import SmsSettings
from gateway.duties import ESCALATION, SUPERVISION
from gateway.errors import RefusedError, UnavailableError
from gateway.ids import new_alarm_id
from gateway.org import OrgStore
from gateway.ratelimit import LogLimiter
from gateway.smscodec import (
    ALARM_TITLES,
    AlarmFacts,
    CallbackRefused,
    MoMessage,
    Reply,
    ReplyOutcome,
    StatusRefused,
    alarm_text,
    dlr_url,
    mask_number,
    parse_dlr,
    parse_mo,
    parse_reply,
    parse_status,
    reply_text,
    sendsms_outcome,
    sendsms_params,
)

if TYPE_CHECKING:
    from alarms.core import AlarmCore
    from gateway.config import Settings
    from gateway.metrics import Metrics

_LOGGER = logging.getLogger(__name__)

# Messages waiting for a sender. An SMS round is a handful of messages per alarm; a thousand
# means Kannel is gone, and the journaled outbox keeps what does not fit.
QUEUE_SIZE = 1000
# Requests to smsbox at once: enough that one slow answer does not hold up a round, few
# enough for a single smsbox.
SENDERS = 4
# How often the outbox is swept for queued messages nobody is sending (after a restart, a
# full queue or a lease take-over). Short: a message found here is already late.
OUTBOX_SWEEP_S = 5.0
# Message ids handed to a sender by this process (so each change of an alarm does not send
# its queued SMS again). Oldest forgotten first; a forgotten one still queued is re-sent.
SUBMITTED_MEMORY = 20_000
# Consecutive failed status checks before Kannel counts as down: one slow answer or a
# bearerbox restart of a second is not a fault worth an alarm.
DOWN_AFTER = 2
# The technical alarm's ref prefix (``sms.<ms>``), as the MQTT link's is ``mqtt.``.
REF_PREFIX = "sms."

Report = Callable[[Event], Awaitable[bool]]


class AuditSink(Protocol):
    """The audit log's writer (``gateway.auditor.Auditor``)."""

    def record(self, kind: str, *, actor: str, subject: str,
               detail: Mapping[str, Any] | None = None, at: float | None = None) -> None:
        """Queue one audit entry."""


class SmsHost(Protocol):
    """What the SMS fallback needs of the gateway: a narrow port the shell provides."""

    @property
    def core(self) -> "AlarmCore":
        """The alarm core (read only: find a code, an alarm, the open alarms)."""

    @property
    def org(self) -> OrgStore:
        """The organisation (staff phones, recipients' addresses)."""

    @property
    def audit(self) -> AuditSink:
        """The audit log."""

    def acts(self, lease: str) -> bool:
        """Whether this gateway does the work of ``lease``."""

    def may_see(self, staff_id: str, alarm: Alarm) -> bool:
        """Whether a staff member may see an alarm."""

    def act(self, event: StaffEvent) -> Awaitable[Alarm]:
        """A staff action, durably (raises RefusedError / UnavailableError)."""

    def open_technical(self, ref_prefix: str) -> list[Alarm]:
        """Open technical alarms whose ref starts with ``ref_prefix``."""

    def submit_internal(self, event: Event) -> Awaitable[None]:
        """Journal an event the gateway raises itself."""


class SmsGateway(SmsHost, Protocol):
    """A gateway the service is built for: its settings, metrics and HTTP port."""

    @property
    def settings(self) -> "Settings":
        """The ``[sms]`` settings and the HTTP address (for Kannel's callbacks)."""

    @property
    def metrics(self) -> "Metrics":
        """The registry the SMS counters join."""

    @property
    def http_port(self) -> int:
        """The bound HTTP port."""


@dataclass(frozen=True, slots=True)
class SmsJob:
    """One SMS to hand to Kannel: an alarm message (tracked by ``message_id``, delivery
    reports wanted) or an answer to a reply (``message_id`` None)."""

    alarm_id: str
    staff_id: str
    text: str
    message_id: str | None = None


@dataclass(slots=True)
class SmsStats:
    """Counters for operations and tests (also exported as ``trygg_sms_events_total``)."""

    sent: int = 0  # Kannel took the message
    failed: int = 0  # Kannel refused it or could not be reached
    cancelled: int = 0  # the alarm was accepted or closed before the message went out
    dropped: int = 0  # the queue was full (the outbox sweep sends it later)
    delivery_reports: int = 0
    replies_accepted: int = 0
    replies_refused: int = 0
    callbacks_refused: int = 0


class SmsService:
    """Sends alarm SMS through Kannel, takes its callbacks, supervises it.

    ``async with service:`` opens it (reusable, not re-entrant); the gateway's supervisor
    runs its loops (``wait``). ``notify`` is the notifier hook, ``router`` Kannel's
    callbacks (mounted by ``gateway.web.app``).
    """

    def __init__(
        self,
        settings: SmsSettings,
        host: SmsHost,
        *,
        report: Report,
        callback_base: Callable[[], str],
        registry: Any = None,
    ) -> None:
        self.settings = settings
        self.host = host
        self._report = report
        self._callback_base = callback_base
        self.stats = SmsStats()
        self._queue: asyncio.Queue[SmsJob] = asyncio.Queue(QUEUE_SIZE)
        self._submitted: OrderedDict[str, None] = OrderedDict()
        self._log = LogLimiter(interval_s=60.0)
        self._wake_check = asyncio.Event()
        self._lock = asyncio.Lock()
        self._failures = 0
        # Why SMS cannot flow right now (None: it can), from the last status check.
        self.fault: str | None = None
        self.checks = 0
        self._allowed = [ipaddress.ip_network(a, strict=False) for a in settings.callback_allow]
        self._events: Any = None
        if registry is not None:
            from prometheus_client import Counter

            self._events = Counter("trygg_sms_events", "SMS fallback events by kind",
                                   ["event"], registry=registry)
        self.router = self._create_router()

    @classmethod
    def for_gateway(cls, gateway: SmsGateway, *, report: Report) -> "SmsService":
        """The service for a gateway: its ``[sms]`` settings, metrics, HTTP address."""
        settings = gateway.settings.sms
        assert settings is not None

        def callback_base() -> str:
            if settings.callback_url:
                return settings.callback_url
            host = gateway.settings.http.host
            if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard bind, not a bind here
                host = "127.0.0.1"
            return f"http://{host}:{gateway.http_port}"

        return cls(settings, gateway, report=report, callback_base=callback_base,
                   registry=gateway.metrics.registry)

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._lock.locked():
            raise RuntimeError("SmsService is already running")
        await self._lock.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release()

    async def wait(self) -> None:
        """The service's loops (a supervised task while the service is open)."""
        await self.run()

    async def run(self) -> None:
        """Senders, the outbox sweep and the Kannel supervision, until cancelled."""
        timeout = httpx.Timeout(self.settings.timeout_s)
        async with httpx.AsyncClient(timeout=timeout) as client, asyncio.TaskGroup() as group:
            for n in range(SENDERS):
                group.create_task(self._sender(client), name=f"sms sender {n}")
            group.create_task(self._sweep(), name="sms outbox")
            if self.settings.status_url is not None:
                group.create_task(self._supervise(client), name="sms supervision")

    # -- the notifier hook -------------------------------------------------------------------

    def notify(self, alarm: dict[str, Any], staff_ids: frozenset[str]) -> None:
        """An alarm changed: queue its SMS the core queued and nobody here sent yet.

        Never blocks (it runs on the commit follower). The alarm's JSON is only the trigger:
        the messages are read from the core's typed alarm.
        """
        found = self.host.core.alarms.get(str(alarm.get("id")))
        if found is not None and found.notifications and self.host.acts(ESCALATION):
            self._enqueue(self._pending(found))

    def _pending(self, alarm: Alarm) -> list[SmsJob]:
        jobs = []
        for message in alarm.messages(SMS_CHANNEL).values():
            if message.status is NotificationStatus.QUEUED and message.message_id not in (
                self._submitted
            ):
                jobs.append(SmsJob(alarm.id, message.staff_id, "", message.message_id))
        return jobs

    def _enqueue(self, jobs: Iterable[SmsJob]) -> None:
        for job in jobs:
            try:
                self._queue.put_nowait(job)
            except asyncio.QueueFull:
                self.stats.dropped += 1
                self._count("dropped")
                if self._log.allow("full"):
                    _LOGGER.warning("SMS queue full (%d); %s for alarm %s left to the outbox%s",
                                    QUEUE_SIZE, job.message_id or "an answer", job.alarm_id,
                                    self._log.suppressed_note("full"))
                return
            if job.message_id is not None:
                self._submitted[job.message_id] = None
                while len(self._submitted) > SUBMITTED_MEMORY:
                    self._submitted.popitem(last=False)

    async def _sweep(self) -> None:
        """Re-send what the journal says is queued and this process is not sending."""
        while True:
            try:
                if self.host.acts(ESCALATION):
                    for alarm in self.host.core.open_in_order():
                        if alarm.notifications:
                            self._enqueue(self._pending(alarm))
            except Exception as exc:  # noqa: BLE001 - the next sweep must still run
                if self._log.allow("sweep"):
                    _LOGGER.warning("SMS outbox sweep failed: %r%s", exc,
                                    self._log.suppressed_note("sweep"))
            await asyncio.sleep(OUTBOX_SWEEP_S)

    # -- sending -----------------------------------------------------------------------------

    async def _sender(self, client: httpx.AsyncClient) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._send(client, job)
            except Exception as exc:  # noqa: BLE001 - one bad message must not stop sending
                self.stats.failed += 1
                if self._log.allow("send-bug"):
                    _LOGGER.warning("SMS %s for alarm %s could not be handled: %r%s",
                                    job.message_id, job.alarm_id, exc,
                                    self._log.suppressed_note("send-bug"))
            finally:
                self._queue.task_done()

    async def drain(self) -> None:
        """Wait until everything queued so far was handed to Kannel (or failed)."""
        await self._queue.join()

    async def _send(self, client: httpx.AsyncClient, job: SmsJob) -> None:
        callback = None
        message_id = job.message_id
        if message_id is not None:
            alarm = self.host.core.alarms.get(job.alarm_id)
            if alarm is None:
                return
            if alarm.state == "closed" or alarm.owner is not None:
                # Taken in the app (or closed) between the decision and now: texting people
                # about an alarm someone has would only send them running for nothing.
                self.stats.cancelled += 1
                self._count("cancelled")
                await self._status(job.alarm_id, message_id, NotificationStatus.CANCELLED,
                                   "alarm accepted or closed before sending")
                return
            job = SmsJob(job.alarm_id, job.staff_id, self._alarm_text(alarm), message_id)
            callback = dlr_url(self._callback_base(), self.settings.callback_secret,
                               job.alarm_id, message_id)
        member = self.host.org.staff.get(job.staff_id)
        phone = member.phone if member is not None else None
        if phone is None:
            await self._failed(job, None, "no phone number")
            return
        params = sendsms_params(
            username=self.settings.username, password=self.settings.password,
            sender=self.settings.sender, to=phone, text=job.text, dlr_url=callback,
        )
        try:
            response = await client.get(self.settings.sendsms_url, params=params)
        except httpx.HTTPError as exc:
            self._wake_check.set()  # probably down: check now, not at the next interval
            await self._failed(job, phone, f"Kannel unreachable: {exc!r}"[:200])
            return
        outcome = sendsms_outcome(response.status_code, response.text)
        if outcome.status is not NotificationStatus.SENT:
            await self._failed(job, phone, outcome.detail)
            return
        self.stats.sent += 1
        self._count("sent")
        self._audit_out(job, phone, "sent", outcome.detail)
        if job.message_id is not None:
            await self._status(job.alarm_id, job.message_id, NotificationStatus.SENT,
                               outcome.detail)

    async def _failed(self, job: SmsJob, phone: str | None, reason: str) -> None:
        self.stats.failed += 1
        self._count("failed")
        if self._log.allow("failed"):
            _LOGGER.warning("SMS about alarm %s to %s (%s) failed: %s%s", job.alarm_id,
                            job.staff_id, mask_number(phone or "-"), reason,
                            self._log.suppressed_note("failed"))
        self._audit_out(job, phone, "failed", reason)
        if job.message_id is not None:
            await self._status(job.alarm_id, job.message_id, NotificationStatus.FAILED, reason)

    async def _status(self, alarm_id: str, message_id: str, status: NotificationStatus,
                      detail: str | None) -> None:
        await self._report(NotificationReported(alarm_id, SMS_CHANNEL, message_id, status,
                                                detail))

    def _alarm_text(self, alarm: Alarm) -> str:
        recipient = self.host.org.recipients.get(alarm.recipient_id or "")
        facts = AlarmFacts(alarm.id, alarm.type.value, alarm.reply_code or "",
                           address=recipient.address if recipient else None,
                           recipient_id=alarm.recipient_id)
        return alarm_text(facts, field=self.settings.recipient_field,
                          app_url=self.settings.app_url)

    def _audit_out(self, job: SmsJob, phone: str | None, status: str, detail: str) -> None:
        # The text itself is audited: what was disclosed, to which number, is the question
        # an audit of an SMS must answer.
        self.host.audit.record("sms_out", actor="gateway", subject=job.alarm_id, detail={
            "staff_id": job.staff_id, "to": phone, "message_id": job.message_id,
            "kind": "alarm" if job.message_id else "answer", "text": job.text,
            "status": status, "detail": detail,
        })

    def _count(self, event: str) -> None:
        if self._events is not None:
            self._events.labels(event).inc()

    # -- supervision -------------------------------------------------------------------------

    async def _supervise(self, client: httpx.AsyncClient) -> None:
        assert self.settings.status_url is not None
        while True:
            self._wake_check.clear()
            try:
                fault = await self._check(client)
                self.checks += 1
                self._failures = self._failures + 1 if fault else 0
                if fault is None or self._failures >= DOWN_AFTER:
                    await self._settle(fault)
            except Exception as exc:  # noqa: BLE001 - supervision must keep running
                if self._log.allow("supervise"):
                    _LOGGER.warning("SMS supervision check failed: %r%s", exc,
                                    self._log.suppressed_note("supervise"))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.check_interval_s):
                    await self._wake_check.wait()

    async def _check(self, client: httpx.AsyncClient) -> str | None:
        assert self.settings.status_url is not None
        params = {}
        if self.settings.status_password:
            params["password"] = self.settings.status_password
        try:
            response = await client.get(self.settings.status_url, params=params)
        except httpx.HTTPError as exc:
            return f"Kannel svarar inte / Kannel unreachable ({type(exc).__name__})"
        if response.status_code != 200:
            return f"Kannels statussida svarar {response.status_code} / Kannel status page " \
                   f"answers {response.status_code}"
        status = parse_status(response.content)
        if isinstance(status, StatusRefused):
            return f"Kannels statussida oläslig / Kannel status unreadable: {status.reason}"
        return status.fault()

    async def _settle(self, fault: str | None) -> None:
        """Raise the technical alarm when SMS cannot flow; close it when it can again."""
        was, self.fault = self.fault, fault
        if fault != was:
            if fault is None:
                _LOGGER.warning("SMS gateway works again")
            else:
                _LOGGER.error("SMS gateway fault: %s", fault)
        if not self.host.acts(SUPERVISION):
            return
        open_alarms = self.host.open_technical(REF_PREFIX)
        if fault is None:
            for alarm in open_alarms:
                await self.host.submit_internal(TechnicalCleared(
                    GATEWAY_DEVICE, alarm.ref, "SMS fungerar igen / SMS flows again"))
        elif not open_alarms:
            now = time.time()
            await self.host.submit_internal(AlarmReceived(
                GATEWAY_DEVICE, f"{REF_PREFIX}{int(now * 1000)}", AlarmType.TECHNICAL,
                int(now * 1000), new_alarm_id(),
                detail=f"SMS-reserven fungerar inte / SMS fallback down: {fault}",
            ))

    # -- callbacks ---------------------------------------------------------------------------

    def _create_router(self) -> APIRouter:
        # Kannel's, not the staff API's: kept out of the OpenAPI schema (docs/sms.md).
        router = APIRouter(include_in_schema=False)

        @router.get("/api/v1/sms/kannel/dlr")
        async def delivery_report(request: Request) -> Response:
            return await self._callback(request, "dlr", self._on_dlr)

        @router.get("/api/v1/sms/kannel/mo")
        async def reply(request: Request) -> Response:
            return await self._callback(request, "mo", self._on_mo)

        return router

    async def _callback(
        self, request: Request, kind: str,
        handle: Callable[[Mapping[str, str]], Awaitable[CallbackRefused | None]],
    ) -> Response:
        address = request.client.host if request.client else "?"
        if self._allowed and not self._address_allowed(address):
            return self._refused(kind, address, CallbackRefused("address not allowed", True))
        try:
            refused = await handle(request.query_params)
        except Exception as exc:  # noqa: BLE001 - one bad callback must not stop the next
            refused = CallbackRefused(f"could not be handled: {exc!r}"[:200])
        if refused is not None:
            return self._refused(kind, address, refused)
        return Response(status_code=200)

    def _address_allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._allowed)

    def _refused(self, kind: str, address: str, refused: CallbackRefused) -> Response:
        self.stats.callbacks_refused += 1
        self._count("callback_refused")
        key = f"callback-{kind}"
        if self._log.allow(key):
            _LOGGER.warning("SMS %s callback from %s refused: %s%s", kind, address,
                            refused.reason, self._log.suppressed_note(key))
        if refused.forbidden:
            self.host.audit.record("sms_callback_refused", actor=address, subject=kind,
                                   detail={"reason": refused.reason})
            return Response(status_code=403)
        # Checked but unusable: Kannel retrying it would not help, so it is answered.
        return Response(status_code=200)

    async def _on_dlr(self, query: Mapping[str, str]) -> CallbackRefused | None:
        found = parse_dlr(query, self.settings.callback_secret)
        if isinstance(found, CallbackRefused):
            return found
        self.stats.delivery_reports += 1
        self._count("delivery_report")
        self.host.audit.record("sms_status", actor="kannel", subject=found.alarm_id, detail={
            "message_id": found.message_id, "dlr": found.value, "answer": found.answer,
            "status": None if found.status is None else found.status.value,
        })
        if found.status is not None:
            await self._report(NotificationReported(
                found.alarm_id, SMS_CHANNEL, found.message_id, found.status,
                f"DLR {found.value}" + (f": {found.answer}" if found.answer else ""),
            ))
        return None

    async def _on_mo(self, query: Mapping[str, str]) -> CallbackRefused | None:
        found = parse_mo(query, self.settings.callback_secret)
        if isinstance(found, CallbackRefused):
            return found
        await self.on_reply(found)
        return None

    async def on_reply(self, message: MoMessage) -> ReplyOutcome | None:
        """A reply from a phone: accept the alarm it names, if its sender may. Returns the
        outcome (None: an unknown number, which is audited and not answered)."""
        member = self.host.org.staff_by_phone(message.sender)
        if member is None:
            # Not answered: the gateway does not text strangers, nor tell them it exists.
            self._reply_audit(message, None, None, "refused", "unknown sender")
            return None
        parsed = parse_reply(message.text)
        if not isinstance(parsed, Reply):
            self._reply_audit(message, member.id, parsed.code, "refused", parsed.reason)
            self._answer(member.id, None, ReplyOutcome.NOT_UNDERSTOOD, None)
            return ReplyOutcome.NOT_UNDERSTOOD
        alarm = self.host.core.find_code(parsed.code)
        if alarm is None:
            self._reply_audit(message, member.id, parsed.code, "refused", "unknown code")
            self._answer(member.id, None, ReplyOutcome.UNKNOWN, parsed.code)
            return ReplyOutcome.UNKNOWN
        if not self.host.may_see(member.id, alarm):
            # A wrong sender is told the same as for an unknown code: the answer must not
            # reveal that the code names somebody else's alarm.
            self._reply_audit(message, member.id, parsed.code, "refused", "may not see alarm",
                              alarm.id)
            self._answer(member.id, None, ReplyOutcome.UNKNOWN, parsed.code)
            return ReplyOutcome.NOT_YOURS
        outcome, reason = await self._accept(alarm, member.id)
        self._reply_audit(message, member.id, parsed.code,
                          "accepted" if outcome is ReplyOutcome.ACCEPTED else "refused", reason,
                          alarm.id)
        self._answer(member.id, alarm.id, outcome, parsed.code,
                     ALARM_TITLES.get(alarm.type.value))
        return outcome

    async def _accept(self, alarm: Alarm, staff_id: str) -> tuple[ReplyOutcome, str]:
        try:
            await self.host.act(AcceptRequested(alarm.id, staff_id))
        except RefusedError as exc:
            return (ReplyOutcome.TAKEN if exc.code == 409 else ReplyOutcome.UNKNOWN), exc.reason
        except UnavailableError as exc:
            return ReplyOutcome.UNAVAILABLE, str(exc) or "journal unavailable"
        return ReplyOutcome.ACCEPTED, "accepted"

    def _reply_audit(self, message: MoMessage, staff_id: str | None, code: str | None,
                     outcome: str, reason: str, alarm_id: str | None = None) -> None:
        if outcome == "accepted":
            self.stats.replies_accepted += 1
        else:
            self.stats.replies_refused += 1
        self._count(f"reply_{outcome}")
        if outcome != "accepted" and self._log.allow("reply"):
            _LOGGER.info("SMS reply from %s refused: %s%s", mask_number(message.sender), reason,
                         self._log.suppressed_note("reply"))
        self.host.audit.record("sms_in", actor=staff_id or message.sender,
                               subject=alarm_id or code or "-", detail={
            "from": message.sender, "text": message.text[:160], "code": code,
            "outcome": outcome, "reason": reason, "kannel_id": message.kannel_id,
        })

    def _answer(self, staff_id: str, alarm_id: str | None, outcome: ReplyOutcome,
                code: str | None, title: str | None = None) -> None:
        if not self.settings.confirm_replies:
            return
        text = reply_text(outcome, code, title=title, app_url=self.settings.app_url)
        self._enqueue([SmsJob(alarm_id or "-", staff_id, text)])
