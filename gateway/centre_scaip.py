"""The SCAIP alarm-centre adapter: alarms to a larmcentral as SIP MESSAGE + ``<mrq>``.

Same shape as ``gateway/centre.py`` (``send(alarm, attempt)``, receipts through
``confirm(alarm_id, attempt, reference)``) so the runtime can use either; the protocol work
is in ``devices/scaip_out.py`` and ``devices/sip.py``. See docs/scaip.md, "Sending to an
alarm centre".

One delivery: build the ``<mrq>`` (ref = a digest of the alarm id, the same on every
attempt), send the MESSAGE, run the client transaction (retransmit on UDP per RFC 3261
Timer E, give up at Timer F), take the ``<mrs>`` from the 200 OK body or from the
MESSAGE the centre sends back (matched by Call-ID, answered 200), and judge it: snu 0
confirms (the core records ``CentreConfirmed``); busy/hold/not treated are left for the
core's next attempt (30 s, doubling); a format refusal raises a technical alarm with the
centre's reason. Retries are the core's business: it asks again until confirmed, so a
restart loses nothing.

The link is supervised by every transaction and by a keepalive (a SCAIP ``PI``
heartbeat, as controllers send, or SIP OPTIONS): a centre that does not answer raises a
technical alarm, cleared when it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeAlias

from alarms.events import AlarmReceived, Event, TechnicalCleared
from alarms.model import GATEWAY_DEVICE, Alarm, AlarmType
from devices.scaip import CONTENT_TYPE, ScaipResponse, parse_mrs
from devices.scaip_out import (
    T1,
    T2,
    CentreCode,
    ClientTransaction,
    LinkMonitor,
    Origin,
    Outcome,
    SipUri,
    TxEvent,
    Verdict,
    alarm_mrq,
    centre_ref,
    heartbeat_mrq,
    judge_mrs,
    judge_status,
    options_request,
    scaip_message,
)
from devices.sip import (
    SipError,
    SipMessage,
    SipRequest,
    SipResponse,
    SipStreamReader,
    build_response,
    new_branch,
    new_tag,
    parse_message,
)
from gateway.centre import CentreAdapter, Confirm
from gateway.duties import ESCALATION
from gateway.ids import new_alarm_id
from gateway.ratelimit import LogLimiter

if TYPE_CHECKING:
    from gateway.config import CentreScaipSettings, EscalationSettings

_LOGGER = logging.getLogger(__name__)

# Deliveries waiting for a sender; each open alarm asks at most every 30 s, and the core
# asks again anyway, so a full queue only drops (counts) an attempt, never an alarm.
MAX_PENDING = 1000
# Deliveries in flight at once: one unanswered UDP transaction waits Timer F (32 s).
SENDERS = 8
_READ_SIZE = 65536

# (kind, active, detail): kind "link" (no answer) or "refused" (the centre refuses our
# <mrq>); active False clears it.
FaultReport: TypeAlias = Callable[[str, bool, str], Awaitable[None]]


class CentrePort(Protocol):
    """What the runtime needs of an alarm-centre adapter (HTTP JSON or SCAIP)."""

    def send(self, alarm: dict[str, Any], attempt: int) -> None:
        """Queue one delivery attempt; never blocks."""

    async def __aenter__(self) -> Any:
        """Start the adapter's tasks."""

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> Any:
        """Stop them."""

    async def wait(self) -> None:
        """Until its loops end."""


@dataclass(slots=True)
class CentreStats:
    """Counters for /metrics and tests."""

    sent: int = 0
    confirmed: int = 0
    retry: int = 0
    refused: int = 0
    no_answer: int = 0
    retransmissions: int = 0
    dropped: int = 0
    keepalives: int = 0
    mrs_messages: int = 0


class ScaipCentre:
    """Sends alarms to a SCAIP alarm centre over UDP, TCP or TLS. Not re-entrant."""

    def __init__(
        self,
        *,
        target: SipUri,
        transport: str,
        confirm: Confirm,
        on_fault: FaultReport | None = None,
        local_host: str = "127.0.0.1",
        local_port: int = 0,
        user: str = "trygg",
        controller_id: str = "",
        codes: Mapping[AlarmType, CentreCode] | None = None,
        keepalive: str = "pi",
        keepalive_s: float = 60.0,
        down_after: int = 1,
        tls: ssl.SSLContext | None = None,
        tls_server_name: str | None = None,
        t1: float = T1,
    ) -> None:
        if transport not in ("udp", "tcp", "tls"):
            raise ValueError("transport must be udp, tcp or tls")
        if transport == "tls" and tls is None:
            raise ValueError("transport tls needs a TLS context")
        if keepalive not in ("pi", "options", "none"):
            raise ValueError("keepalive must be pi, options or none")
        if not re.fullmatch(r"[0-9]{1,16}", controller_id):
            # The message model's <cid>: 1-16 digits (docs/scaip.md). Device ids are not
            # that, so the gateway speaks as one controller and names the device in <did>.
            raise ValueError("controller_id must be the 1-16 digit <cid> the centre knows")
        self.target = target
        self.transport = transport
        self._confirm = confirm
        self._on_fault = on_fault
        self._local = (local_host, local_port)
        self._user = user
        self._controller_id = controller_id
        self._codes = dict(codes) if codes is not None else None
        self._keepalive = keepalive
        self._keepalive_s = keepalive_s
        self._tls = tls
        self._tls_server_name = tls_server_name
        # T1 is RFC 3261's 0.5 s in production; tests shrink it with every timer it scales.
        self._t1 = t1
        self._t2 = T2 * t1 / T1
        self.link = LinkMonitor(down_after)
        self._refusing: bool | None = None  # None: not known yet (see deliver)
        self.stats = CentreStats()
        self._queue: asyncio.Queue[tuple[dict[str, Any], int]] = asyncio.Queue(MAX_PENDING)
        self._runner: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._responses: dict[str, asyncio.Queue[SipResponse]] = {}
        self._mrs: dict[str, asyncio.Future[bytes]] = {}  # by Call-ID
        self._call_ids: dict[str, str] = {}  # Call-ID by <ref>
        self._udp: asyncio.DatagramTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._connect_lock = asyncio.Lock()
        self._origin = Origin(local_host, local_port, transport.upper())
        self._log_limiter = LogLimiter(interval_s=60.0)

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._runner is not None:
            raise RuntimeError("ScaipCentre is already running; it is not re-entrant")
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self.run(ready), name="scaip centre")
        await ready
        return self

    async def wait(self) -> None:
        """Until the adapter's loops end (on close, or if they die)."""
        assert self._runner is not None
        await asyncio.shield(self._runner)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        await self._close_link()
        self._tg = None

    async def run(self, ready: asyncio.Future[None] | None = None) -> None:
        """The senders and the keepalive, in one TaskGroup, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            for n in range(SENDERS):
                tg.create_task(self._sender(), name=f"scaip centre sender {n}")
            if self._keepalive != "none" and self._keepalive_s > 0:
                tg.create_task(self._keepalive_loop(), name="scaip centre keepalive")
            if ready is not None:
                ready.set_result(None)

    # -- the adapter API (same as CentreAdapter) ---------------------------------------------

    def send(self, alarm: dict[str, Any], attempt: int) -> None:
        """Queue one delivery attempt (never blocks)."""
        try:
            self._queue.put_nowait((alarm, attempt))
        except asyncio.QueueFull:
            self.stats.dropped += 1  # the core asks again; counted so monitoring sees it

    async def _sender(self) -> None:
        while True:
            alarm, attempt = await self._queue.get()
            try:
                await self.deliver(alarm, attempt)
            except Exception:
                # One delivery's bug must not stop the others; the core asks again.
                if self._log_limiter.allow("deliver"):
                    _LOGGER.exception("SCAIP delivery of alarm %s failed%s", alarm.get("id"),
                                      self._log_limiter.suppressed_note("deliver"))

    async def deliver(self, alarm: dict[str, Any], attempt: int) -> Outcome:
        """Send one alarm, wait for the centre's verdict, confirm it or report."""
        alarm_id = str(alarm["id"])
        device_id = str(alarm["device_id"])
        ref = centre_ref(alarm_id)
        try:
            alarm_type = AlarmType(alarm["type"])
        except ValueError:
            alarm_type = AlarmType.MANUAL
        cid = self._controller_id
        body = alarm_mrq(
            ref=ref, cid=cid, alarm_type=alarm_type, device_id=device_id,
            **({"codes": self._codes} if self._codes is not None else {}),
        )
        outcome = await self._exchange(body, ref, from_user=cid)
        self.stats.sent += 1
        await self._observe(outcome)
        if outcome.verdict is Verdict.CONFIRMED:
            self.stats.confirmed += 1
            if self._refusing is not False:
                # Also at the first confirmation: a refusal fault left open by a previous
                # run is cleared once the centre takes alarms again.
                self._refusing = False
                await self._report("refused", False, "larmcentralen tar emot larm igen / "
                                                     "the alarm centre accepts alarms again")
            await self._confirm(alarm_id, attempt, f"scaip:{ref}")
        elif outcome.verdict is Verdict.REFUSED:
            self.stats.refused += 1
            self._log_limiter.log(_LOGGER, logging.WARNING, "refused",
                                  "alarm centre refused alarm %s (attempt %d): %s", alarm_id,
                                  attempt, outcome.detail)
            self._refusing = True
            await self._report("refused", True,
                               f"Larmcentralen vägrar larmet / the alarm centre refuses "
                               f"the alarm: {outcome.detail}")
        elif outcome.verdict is Verdict.RETRY:
            self.stats.retry += 1
            self._log_limiter.log(_LOGGER, logging.INFO, "retry",
                                  "alarm centre asks to retry alarm %s (attempt %d): %s",
                                  alarm_id, attempt, outcome.detail)
        else:
            self.stats.no_answer += 1
            self._log_limiter.log(_LOGGER, logging.WARNING, "no_answer",
                                  "alarm centre did not answer alarm %s (attempt %d): %s",
                                  alarm_id, attempt, outcome.detail)
        return outcome

    async def _keepalive_loop(self) -> None:
        # At once, then every keepalive_s: a dead centre is noticed before an alarm needs it.
        while True:
            self.stats.keepalives += 1
            try:
                if self._keepalive == "pi":
                    ref = uuid.uuid4().hex[:16]
                    cid = self._controller_id
                    outcome = await self._exchange(heartbeat_mrq(ref=ref, cid=cid), ref, cid)
                else:
                    outcome = await self._options()
                await self._observe(outcome)
            except Exception:
                if self._log_limiter.allow("keepalive"):
                    _LOGGER.exception("SCAIP centre keepalive failed%s",
                                      self._log_limiter.suppressed_note("keepalive"))
            await asyncio.sleep(self._keepalive_s)

    async def _observe(self, outcome: Outcome) -> None:
        change = self.link.observe(outcome.answered, outcome.detail)
        if change is None:
            return
        if change.up:
            _LOGGER.info("alarm centre %s answers", self.target.uri)
            await self._report("link", False, "larmcentralen svarar igen / the alarm centre "
                                              "answers again")
        else:
            _LOGGER.error("alarm centre %s does not answer: %s", self.target.uri, change.detail)
            await self._report("link", True, f"Larmcentralen svarar inte / the alarm centre "
                                             f"does not answer: {change.detail}")

    async def _report(self, kind: str, active: bool, detail: str) -> None:
        if self._on_fault is not None:
            await self._on_fault(kind, active, detail)

    # -- one transaction ---------------------------------------------------------------------

    async def _exchange(self, body: bytes, ref: str, from_user: str) -> Outcome:
        """One MESSAGE transaction and its <mrs>: the verdict."""
        call_id = f"{uuid.uuid4().hex}@{self._origin.host}"
        branch = new_branch()
        responses: asyncio.Queue[SipResponse] = asyncio.Queue()
        mrs: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._responses[branch] = responses
        self._mrs[call_id] = mrs
        self._call_ids[ref] = call_id
        try:
            try:
                origin = await self._link()
            except (OSError, ssl.SSLError) as exc:
                return Outcome(Verdict.NO_ANSWER, f"cannot connect: {exc}")
            request = scaip_message(target=self.target, origin=origin, from_user=from_user,
                                    body=body, call_id=call_id, branch=branch,
                                    from_tag=new_tag())
            final = await self._transact(request, responses)
            if final is None:
                return Outcome(Verdict.NO_ANSWER, "no SIP answer (timer F)")
            if not 200 <= final.status < 300:
                return judge_status(final.status, final.reason)
            if final.body:
                verdict = judge_mrs(parse_mrs(final.body), ref)
                if verdict is not None:
                    return verdict
            # The <mrs> follows in a MESSAGE of its own; give it as long as a transaction.
            try:
                async with asyncio.timeout(64 * self._t1):
                    while True:
                        verdict = judge_mrs(parse_mrs(await asyncio.shield(mrs)), ref)
                        if verdict is not None:
                            return verdict
                        mrs = self._mrs[call_id] = asyncio.get_running_loop().create_future()
            except TimeoutError:
                return Outcome(Verdict.NO_ANSWER, "200 OK but no <mrs>")
        finally:
            self._responses.pop(branch, None)
            self._mrs.pop(call_id, None)
            self._call_ids.pop(ref, None)

    async def _options(self) -> Outcome:
        branch = new_branch()
        responses: asyncio.Queue[SipResponse] = asyncio.Queue()
        self._responses[branch] = responses
        try:
            try:
                origin = await self._link()
            except (OSError, ssl.SSLError) as exc:
                return Outcome(Verdict.NO_ANSWER, f"cannot connect: {exc}")
            request = options_request(target=self.target, origin=origin, from_user=self._user,
                                      call_id=f"{uuid.uuid4().hex}@{origin.host}",
                                      branch=branch, from_tag=new_tag())
            final = await self._transact(request, responses)
        finally:
            self._responses.pop(branch, None)
        if final is None:
            return Outcome(Verdict.NO_ANSWER, "no answer to OPTIONS (timer F)")
        return Outcome(Verdict.CONFIRMED, f"OPTIONS: SIP {final.status}")

    async def _transact(self, request: bytes,
                        responses: asyncio.Queue[SipResponse]) -> SipResponse | None:
        # The transaction runs on the loop's monotonic clock, the one asyncio.timeout uses:
        # a timer then never fires "early" against the transaction's own deadline.
        loop = asyncio.get_running_loop()
        tx = ClientTransaction(reliable=self.transport != "udp", now=loop.time(),
                               t1=self._t1, t2=self._t2)
        if not self._write(request):
            return None
        while (deadline := tx.deadline) is not None:
            try:
                async with asyncio.timeout_at(deadline):
                    response = await responses.get()
            except TimeoutError:
                event = tx.on_timer(loop.time())
                if event is TxEvent.TIMEOUT:
                    return None
                if event is TxEvent.RETRANSMIT:
                    self.stats.retransmissions += 1
                    self._write(request)
                continue
            if tx.on_response(response.status, loop.time()):
                return response
        return None

    # -- the link ----------------------------------------------------------------------------

    async def _link(self) -> Origin:
        """Open the socket or connection if needed; our address as the centre sees it."""
        async with self._connect_lock:
            if self.transport == "udp":
                if self._udp is None or self._udp.is_closing():
                    loop = asyncio.get_running_loop()
                    transport, _ = await loop.create_datagram_endpoint(
                        lambda: _UdpProtocol(self), local_addr=self._local,
                        remote_addr=(self.target.host, self.target.port or 5060),
                    )
                    self._udp = transport
                    self._set_origin(transport.get_extra_info("sockname"))
                return self._origin
            if self._writer is None or self._writer.is_closing():
                port = self.target.port or (5061 if self.transport == "tls" else 5060)
                reader, writer = await asyncio.open_connection(
                    self.target.host, port, ssl=self._tls,
                    server_hostname=self._tls_server_name if self._tls else None,
                    local_addr=self._local if self._local[1] else None,
                )
                self._writer = writer
                self._set_origin(writer.get_extra_info("sockname"))
                if self._tg is not None:
                    self._tg.create_task(self._read(reader, writer), name="scaip centre reader")
            return self._origin

    def _set_origin(self, sockname: tuple[Any, ...]) -> None:
        self._origin = Origin(str(sockname[0]), int(sockname[1]), self.transport.upper())

    def _write(self, data: bytes) -> bool:
        if self.transport == "udp":
            if self._udp is None or self._udp.is_closing():
                return False
            self._udp.sendto(data)
            return True
        if self._writer is None or self._writer.is_closing():
            return False
        self._writer.write(data)
        return True

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = SipStreamReader()
        try:
            while data := await reader.read(_READ_SIZE):
                for item in framer.feed(data):
                    self._dispatch(item)
        except (ConnectionError, OSError) as exc:
            _LOGGER.info("alarm centre connection closed: %s", exc)
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
                await writer.wait_closed()

    async def _close_link(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
                await writer.wait_closed()

    def _dispatch(self, message: SipMessage | SipError) -> None:
        """One message from the centre: a response to us, or its <mrs> MESSAGE."""
        if isinstance(message, SipError):
            if self._log_limiter.allow("sip_error"):
                _LOGGER.info("unreadable SIP from the alarm centre: %s%s", message.detail,
                             self._log_limiter.suppressed_note("sip_error"))
            return
        if isinstance(message, SipResponse):
            queue = self._responses.get(message.branch or "")
            if queue is not None:
                queue.put_nowait(message)
            return
        self._on_request(message)

    def _on_request(self, request: SipRequest) -> None:
        if request.method == "ACK":
            return
        if request.method == "OPTIONS":
            self._write(build_response(200, request=request, to_tag=new_tag(),
                                       extra_headers=[("Allow", "MESSAGE, OPTIONS")]))
            return
        if request.method != "MESSAGE":
            self._write(build_response(405, request=request, to_tag=new_tag(),
                                       extra_headers=[("Allow", "MESSAGE, OPTIONS")]))
            return
        if request.content_type != CONTENT_TYPE:
            self._write(build_response(415, request=request, to_tag=new_tag(),
                                       extra_headers=[("Accept", CONTENT_TYPE)]))
            return
        self.stats.mrs_messages += 1
        # Answered 200 whatever it says: the SIP layer has it (it stops the centre's
        # retransmissions); its content is judged by the delivery waiting for it.
        self._write(build_response(200, request=request, to_tag=new_tag()))
        future = self._mrs.get(request.call_id)
        if future is None:
            future = self._mrs_by_ref(request.body)
        if future is not None and not future.done():
            future.set_result(request.body)

    def _mrs_by_ref(self, body: bytes) -> asyncio.Future[bytes] | None:
        # A centre that does not reuse our Call-ID: match on the <ref> instead.
        parsed = parse_mrs(body)
        if not isinstance(parsed, ScaipResponse) or parsed.ref is None:
            return None
        call_id = self._call_ids.get(parsed.ref)
        return self._mrs.get(call_id) if call_id is not None else None


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, centre: ScaipCentre) -> None:
        self._centre = centre

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._centre._dispatch(parse_message(data))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable: the centre is not listening. Timer F reports it.
        _LOGGER.debug("alarm centre UDP error: %s", exc)


# -- wiring ---------------------------------------------------------------------------------


class TechnicalPort(Protocol):
    """What ``report_fault`` needs of the gateway (``Gateway`` has all of it)."""

    def acts(self, lease: str) -> bool:
        """Whether this gateway does the work guarded by ``lease``."""

    def open_technical(self, ref_prefix: str) -> list[Alarm]:
        """Open technical alarms whose ref starts with ``ref_prefix``."""

    def submit_internal(self, event: Event) -> Awaitable[None]:
        """Journal an event the gateway raises itself."""


async def report_fault(port: TechnicalPort, kind: str, active: bool, detail: str) -> None:
    """Raise (once) or clear the technical alarm ``centre-<kind>.<ms>`` of the gateway.

    Only the gateway that talks to the centre (the escalation lease holder) reports.
    """
    if not port.acts(ESCALATION):
        return
    prefix = f"centre-{kind}."
    open_now = port.open_technical(prefix)
    if active and not open_now:
        now = time.time()
        ms = int(now * 1000)
        await port.submit_internal(AlarmReceived(
            GATEWAY_DEVICE, f"{prefix}{ms}", AlarmType.TECHNICAL, ms, new_alarm_id(),
            detail=detail[:200]))
    elif not active:
        for alarm in open_now:
            await port.submit_internal(TechnicalCleared(GATEWAY_DEVICE, alarm.ref, detail[:200]))


def make_centre(settings: EscalationSettings, confirm: Confirm,
                on_fault: FaultReport) -> CentrePort:
    """The adapter ``[escalation] centre_protocol`` chooses."""
    scaip = settings.centre_scaip
    if settings.centre_protocol != "scaip" or scaip is None:
        return CentreAdapter(settings.centre_url, confirm)
    return scaip_centre(scaip, confirm, on_fault)


def scaip_centre(settings: CentreScaipSettings, confirm: Confirm,
                 on_fault: FaultReport | None) -> ScaipCentre:
    """A ``ScaipCentre`` from ``[escalation.centre_scaip]``."""
    return ScaipCentre(
        target=settings.target(), transport=settings.transport, confirm=confirm,
        on_fault=on_fault, local_host=settings.local_host, local_port=settings.local_port,
        user=settings.user, controller_id=settings.controller_id, codes=settings.code_table(),
        keepalive=settings.keepalive, keepalive_s=settings.keepalive_s,
        down_after=settings.down_after, tls=settings.client_context(),
        tls_server_name=settings.tls_server_name,
    )
