"""Night camera supervision (digital nattillsyn): the service (its API: ``gateway.web.cameras``).

The rules live in ``alarms.nattillsyn`` (pure); this module carries them out:

- consents and schedules, changed through the API (each change audit-logged as
  ``config_change``), and every look and look window, kept in a ``CameraStore``
  (``gateway.stores.cameras``): ``DIR/nattillsyn.sqlite3`` for one gateway, the shared
  PostgreSQL database in a cluster, so that a look started through one gateway is seen,
  continued and finished through another and survives a restart;
- a look: access decided → ``cmd`` ``wake`` to the camera → its status ``awake@<stream
  ref>`` awaited (bounded) → a look token for that viewer, recipient and window, valid for
  the look's maximum duration → the camera's stream relayed to the token's holder only →
  end (outcome) or timeout → ``cmd`` ``standby``, and the camera must confirm it;
- a timer that ends looks at their expiry, checks standby confirmations and turns missed
  looks into a reminder and then a visit alarm.

Privacy is enforced here, not left to the client: frames pass through memory chunk by
chunk on their way to the one viewer and are never written (no files, no logs of content,
``Cache-Control: no-store`` so the browser does not keep them either). The audit log gets
time, duration, viewer and outcome of every allowed look and the reason of every refusal.

Wiring (the gateway does this): ``service = CameraService(host)``; its status listener
``service.on_status`` on the device status stream; ``async with service`` for its HTTP
session and ``service.run()`` under the gateway's supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import aiohttp

from alarms.events import AlarmReceived, Event, TechnicalCleared
from alarms.model import AlarmType
from alarms.nattillsyn import (
    DEFAULT_MAX_LOOK_S,
    DEFAULT_RETRY_S,
    AdHoc,
    Allowed,
    Consent,
    ConsentBook,
    ConsentScope,
    EndedBy,
    EscalateVisit,
    Look,
    LookError,
    LookState,
    MissedLooks,
    Outcome,
    RefusalCode,
    Refused,
    Remind,
    Schedule,
    Viewer,
    Window,
    decide_access,
)
from devices.contract import StatusMessage, encode_command
from gateway.audit import AuditKind
from gateway.errors import (
    ConflictError,
    DomainError,
    ForbiddenError,
    NotFoundError,
    UpstreamError,
    UpstreamTimeoutError,
)
from gateway.ids import new_alarm_id
from gateway.org import StaffMember
from gateway.ports import ServiceHost
from gateway.ratelimit import LogLimiter
from gateway.stores.cameras import (
    CameraStore,
    StoredLook,
    WindowMark,
    open_camera_store,
    token_hash,
)
from gateway.waiting import wait_set

_LOGGER = logging.getLogger(__name__)

# A look in progress whose gateway stopped (crash, restart) is ended by another gateway
# this long after it should have ended: the owner, if alive, ends it first.
ORPHAN_GRACE_S = 5.0
# In a cluster, the timer also wakes this often to pick up what other gateways changed
# (schedules, consents, looks ended elsewhere).
CLUSTER_POLL_S = 2.0
# Window marks are kept this long (the planner looks back a day and a retry).
WINDOW_MARKS_KEPT_S = 3 * 86400.0
# How long the camera has to answer a wake with its stream reference. A camera on the home
# network answers in well under a second; a few seconds cover a slow Wi-Fi. Past this, the
# look is impossible and a visit is needed at once (the viewer must not wait longer).
WAKE_TIMEOUT_S = 8.0
# How long the camera has to confirm standby before it is a technical alarm: a camera that
# stays awake is a privacy fault.
STANDBY_TIMEOUT_S = 10.0
# Connecting to the camera's stream (on the home network or loopback).
STREAM_CONNECT_S = 3.0
# The timer never sleeps less than this, whatever the deadlines say (guards against a
# deadline that a bug fails to consume spinning the loop).
MIN_TIMER_SLEEP_S = 0.05
# Content types a camera stream may have; anything else is not relayed.
_STREAM_TYPES = ("multipart/x-mixed-replace", "image/jpeg")
HTTP_OK = 200


def is_camera(device_type: str) -> bool:
    """Whether a provisioned device type is a night camera."""
    return "camera" in device_type.lower() or device_type.lower().startswith("cam")


def parse_stream_ref(state: str) -> str | None:
    """``awake@host:port/path`` -> ``http://host:port/path``; None if absent or unsafe.

    The gateway connects to whatever a camera names, so only IP literals on loopback or a
    private network are accepted: a device cannot aim the gateway at the internet.
    """
    _, sep, ref = state.partition("@")
    if not sep or not ref:
        return None
    hostport, slash, path = ref.partition("/")
    host, colon, port = hostport.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if not (address.is_loopback or address.is_private):
        return None
    return f"http://{hostport}{slash}{path}"


# -- the service -----------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Active:
    """A look the service is carrying out (the look itself is an immutable ``Look``)."""

    look: Look
    token: str  # empty for a look adopted from the store: only its hash is known here
    stream_url: str | None = None
    relays: set[aiohttp.ClientResponse] = field(default_factory=set)
    token_hash: str = ""

    def __post_init__(self) -> None:
        if self.token and not self.token_hash:
            self.token_hash = token_hash(self.token)


@dataclass(frozen=True, slots=True)
class Reminder:
    """A reminder sent for a missed window (kept for the UI and tests)."""

    window: Window
    at: float
    staff_ids: frozenset[str]


class CameraService:
    """Night camera looks for one gateway. ``async with`` runs its one timer task."""

    def __init__(
        self,
        gateway: ServiceHost,
        clock: Callable[[], float] = time.time,
        *,
        max_look_s: float = DEFAULT_MAX_LOOK_S,
        retry_s: float = DEFAULT_RETRY_S,
        wake_timeout_s: float = WAKE_TIMEOUT_S,
        standby_timeout_s: float = STANDBY_TIMEOUT_S,
    ) -> None:
        self.gateway = gateway
        self._clock = clock
        self.max_look_s = max_look_s
        self.wake_timeout_s = wake_timeout_s
        self.standby_timeout_s = standby_timeout_s
        self.retry_s = retry_s
        self.store: CameraStore | None = None  # opened on entry
        # What the store holds, as of the last refresh (the timer and routing read these).
        self.consents = ConsentBook()
        self.schedules: dict[str, Schedule] = {}
        self.missed = MissedLooks(start=clock(), retry_s=retry_s)
        self.looks: dict[str, Look] = {}  # looks seen by this gateway, by id (metadata only)
        self.reminders: list[Reminder] = []
        self.standby_confirmed: set[str] = set()  # look ids
        self.standby_failed: set[str] = set()  # look ids
        self._active: dict[str, _Active] = {}  # by look id
        self._waking: dict[str, asyncio.Future[str | None]] = {}  # by device id
        self._standby_due: dict[str, tuple[str, float]] = {}  # device -> (look id, deadline)
        self._standby_alarm: dict[str, str] = {}  # device -> ref of its open standby alarm
        self._events: list[Event] = []  # raised from sync code, journaled by the timer
        self._wakeup = asyncio.Event()
        self._changed = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        # One line per kind a minute: a fleet of cameras failing together (a network
        # outage at night) must not flood the log; each failure is a technical alarm anyway.
        self._log = LogLimiter(60.0)

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._session is not None:
            raise RuntimeError("CameraService is already running")
        store = await asyncio.to_thread(open_camera_store, self.gateway.settings)
        self.store = store
        try:
            since = await asyncio.to_thread(store.since, self._clock())
            self.missed = MissedLooks(start=since, retry_s=self.retry_s)
            await self._refresh()
        except BaseException:
            await asyncio.to_thread(store.close)
            self.store = None
            raise
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=STREAM_CONNECT_S)
        )
        return self

    async def wait(self) -> None:
        """The looks' timer (a supervised task while the service is open)."""
        await self._run_timer()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for active in self._active.values():
            self._close_relays(active)
        for waiter in self._waking.values():
            waiter.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.store is not None:
            await asyncio.to_thread(self.store.close)
            self.store = None

    async def _run_timer(self) -> None:
        while True:
            self._wakeup.clear()
            await self.check()
            deadline = self.next_deadline()
            timeout = None if deadline is None else max(
                MIN_TIMER_SLEEP_S, deadline - self._clock()
            )
            if self._store().shared:
                timeout = CLUSTER_POLL_S if timeout is None else min(timeout, CLUSTER_POLL_S)
            await wait_set(self._wakeup, timeout)

    def _poke(self) -> None:
        self._wakeup.set()
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds after some state change (callers bound it)."""
        while not predicate():
            await self._changed.wait()

    def next_deadline(self) -> float | None:
        """The earliest thing the timer must do."""
        now = self._clock()
        candidates = [
            a.look.expires_at for a in self._active.values() if a.look.expires_at is not None
        ]
        candidates += [deadline for _, deadline in self._standby_due.values()]
        planned = self.missed.next_deadline(self.schedules.values(), now)
        if planned is not None:
            candidates.append(planned)
        if self._events:
            candidates.append(now)
        return min(candidates, default=None)

    # -- the store ---------------------------------------------------------------------------

    def _store(self) -> CameraStore:
        if self.store is None:
            raise RuntimeError("CameraService is not running")
        return self.store

    async def _refresh(self) -> None:
        """Consents, schedules and looked-in windows as the store has them now (other
        gateways may have changed them)."""
        store = self._store()
        consents, schedules, done = await asyncio.to_thread(
            lambda: (store.consents(), store.schedules(), store.windows(WindowMark.DONE)))
        self.consents = ConsentBook(consents)
        self.schedules = schedules
        for key in done:
            self.missed.done(key)

    async def _persist(self, look: Look, token: str | None = None, stream_url: str | None = None,
                       *, unless_ended: bool = False) -> bool:
        """Write a look's new state; False if (with ``unless_ended``) it had already ended."""
        store = self._store()
        stored = await asyncio.to_thread(store.look, look.id)
        digest = token_hash(token) if token is not None else (
            stored.token_hash if stored is not None else "")
        url = stream_url if stream_url is not None else (
            stored.stream_url if stored is not None else None)
        return await asyncio.to_thread(store.save_look, StoredLook(look, digest, url),
                                       unless_ended=unless_ended)

    async def find_look(self, look_id: str) -> Look | None:
        """A look, wherever it was started (this gateway, another, or before a restart)."""
        stored = await asyncio.to_thread(self._store().look, look_id)
        if stored is not None:
            self.looks[look_id] = stored.look
            return stored.look
        return self.looks.get(look_id)

    async def looks_in_progress(self) -> list[Look]:
        """Every look not ended, through any gateway."""
        stored = await asyncio.to_thread(self._store().looks, in_progress=True)
        return [s.look for s in stored]

    async def consent_history(self, recipient_id: str) -> list[Consent]:
        """Every consent of a recipient, oldest first."""
        await self._refresh()
        return self.consents.history(recipient_id)

    async def schedule(self, recipient_id: str) -> Schedule | None:
        """A recipient's schedule."""
        await self._refresh()
        return self.schedules.get(recipient_id)

    async def _adopt(self, stored: StoredLook) -> _Active:
        """Take over a look started elsewhere (another gateway, or before a restart)."""
        active = self._active.get(stored.look.id)
        if active is None:
            # The token itself is not stored (only its hash): the viewer presents it.
            active = _Active(stored.look, "", stored.stream_url, token_hash=stored.token_hash)
            self._active[stored.look.id] = active
        self.looks[stored.look.id] = stored.look
        return active

    async def _orphans(self, now: float) -> None:
        """End looks whose gateway stopped; drop local looks another gateway ended."""
        stored = await asyncio.to_thread(self._store().looks, in_progress=True)
        open_ids = {s.look.id for s in stored}
        for active in list(self._active.values()):
            if active.look.id not in open_ids and active.look.state is not LookState.REQUESTED:
                # Ended through another gateway: stop relaying at once.
                self._active.pop(active.look.id, None)
                self._close_relays(active)
                found = await asyncio.to_thread(self._store().look, active.look.id)
                if found is not None:
                    self.looks[found.look.id] = found.look
        for orphan in stored:
            look = orphan.look
            if look.id in self._active or look.device_id in self._waking:
                continue
            due = (look.expires_at if look.expires_at is not None
                   else look.requested_at + self.wake_timeout_s)
            if due + ORPHAN_GRACE_S <= now:
                _LOGGER.warning("ending look %s: the gateway that ran it stopped", look.id)
                await self._end(await self._adopt(orphan), now, EndedBy.TIMEOUT)

    async def check(self) -> None:
        """Do everything due at the clock's ``now``: expiries, standby checks, missed looks."""
        now = self._clock()
        await self._refresh()
        await self._orphans(now)
        for active in list(self._active.values()):
            expires = active.look.expires_at
            if expires is not None and expires <= now:
                await self._end(active, now, EndedBy.TIMEOUT)
        for device_id, (look_id, deadline) in list(self._standby_due.items()):
            if deadline <= now:
                del self._standby_due[device_id]
                self.standby_failed.add(look_id)
                ref = f"camstandby.{look_id}"
                self._standby_alarm[device_id] = ref
                self._log.log(_LOGGER, logging.WARNING, "standby",
                              "camera %s did not confirm standby after look %s",
                              device_id, look_id)
                self._events.append(self._technical(
                    device_id, ref, now,
                    "Kameran bekräftade inte viloläge / camera did not confirm standby"))
        store = self._store()
        for action in self.missed.tick(self.schedules.values(), now):
            # Whichever gateway claims the window first reminds or escalates it; the
            # others (and this one after a restart) leave it.
            kind = WindowMark.REMINDED if isinstance(action, Remind) else WindowMark.ESCALATED
            if not await asyncio.to_thread(store.claim_window, action.window.key, kind, now):
                continue
            if isinstance(action, Remind):
                self._remind(action.window, now)
            elif isinstance(action, EscalateVisit):
                window = action.window
                self._visit(window.recipient_id, now, f"missed.{int(window.planned_at)}",
                            f"Nattillsyn {window.local} ej gjord – besök / "
                            "camera look missed, visit needed")
        self.missed.prune(now)
        await asyncio.to_thread(store.prune_windows, now - WINDOW_MARKS_KEPT_S)
        events, self._events = self._events, []
        for event in events:
            await self.gateway.submit_internal(event)
        self._poke_changed()

    def _poke_changed(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- device status -----------------------------------------------------------------------

    def on_status(self, message: StatusMessage) -> None:
        """A ``Gateway.status_listeners`` hook: camera awake/standby reports."""
        state = message.state
        device_id = message.device_id
        if state == "awake" or state.startswith("awake@"):
            waiter = self._waking.get(device_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(parse_stream_ref(state))
        elif state == "standby":
            due = self._standby_due.pop(device_id, None)
            if due is not None:
                self.standby_confirmed.add(due[0])
            ref = self._standby_alarm.pop(device_id, None)
            if ref is not None:
                self._events.append(TechnicalCleared(device_id, ref, "standby confirmed"))
            self._poke()

    # -- helpers -----------------------------------------------------------------------------

    def camera_of(self, recipient_id: str) -> str | None:
        """The recipient's night camera, if one is provisioned."""
        cameras = sorted(
            d.id for d in self.gateway.org.devices.values()
            if d.recipient_id == recipient_id and is_camera(d.type)
        )
        return cameras[0] if cameras else None

    def _visit_device(self, recipient_id: str) -> str | None:
        camera = self.camera_of(recipient_id)
        if camera is not None:
            return camera
        devices = sorted(
            d.id for d in self.gateway.org.devices.values() if d.recipient_id == recipient_id
        )
        return devices[0] if devices else None

    def _open_alarm_ids(self, recipient_id: str) -> frozenset[str]:
        return frozenset(
            a.id for a in self.gateway.core.open_of_recipient(recipient_id)
            if a.type not in (AlarmType.TECHNICAL, AlarmType.TEST)
        )

    def _camera_offline(self, device_id: str) -> bool:
        return any(
            a.device_id == device_id and a.type is AlarmType.TECHNICAL
            and a.ref.startswith("offline.")
            for a in self.gateway.core.open_in_order()
        )

    @staticmethod
    def _technical(device_id: str, ref: str, now: float, detail: str) -> AlarmReceived:
        return AlarmReceived(device_id, ref, AlarmType.TECHNICAL, int(now * 1000), new_alarm_id(),
                             detail=detail)

    def _visit(self, recipient_id: str, now: float, tag: str, detail: str) -> None:
        """Queue a visit alarm for the recipient through the normal chain.

        Type ``inactivity``: "nobody has seen that this person is all right" is what it
        means, it routes to the recipient's care team (the night patrol at night) with the
        on-site deadline, and it attaches to an alarm already open for the person.
        """
        device_id = self._visit_device(recipient_id)
        if device_id is None:
            self._log.log(_LOGGER, logging.ERROR, "no_device",
                          "no device for recipient %s: cannot raise the visit alarm (%s)",
                          recipient_id, detail)
            return
        self._events.append(AlarmReceived(
            device_id, f"nattillsyn.{tag}", AlarmType.INACTIVITY, int(now * 1000), new_alarm_id(),
            detail=detail,
        ))
        self._wakeup.set()

    def _remind(self, window: Window, now: float) -> None:
        staff = frozenset(
            s.id for s in self.gateway.org.staff.values() if window.team_id in s.team_ids
        )
        self.reminders.append(Reminder(window, now, staff))
        self.gateway.hub.send(staff, {
            "type": "notice", "code": "nattillsyn_reminder", "level": "warning",
            "recipient_id": window.recipient_id, "window": window.local,
            "text": f"Nattillsyn {window.local} ej gjord / camera look not done",
            "at": now,
        })

    def _command(self, device_id: str, command: str, **args: str | int | float | bool) -> bool:
        ref = f"cam-{uuid.uuid4().hex[:12]}"
        return self.gateway.send_command(device_id, encode_command(ref, command, **args))

    def _audit(self, actor: str, subject: str, detail: dict[str, Any]) -> None:
        self.gateway.audit.record(AuditKind.CAMERA_VIEW, actor=actor, subject=subject,
                                  detail=detail)

    def _refuse(self, viewer: str, recipient_id: str, refusal: Refused, now: float,
                http_status: int, **extra: Any) -> DomainError:
        self._audit(viewer, recipient_id, {
            "event": "refused", "code": refusal.code.value, "reason": refusal.reason,
            "at": now, **extra,
        })
        return DomainError({"code": refusal.code.value, "reason": refusal.reason},
                           status=http_status)

    def _close_relays(self, active: _Active) -> None:
        for response in list(active.relays):
            response.close()
        active.relays.clear()

    async def _end(self, active: _Active, now: float, by: EndedBy,
                   outcome: Outcome | None = None) -> Look:
        """End a look: stop the relay, command standby, audit, act on the outcome."""
        look = active.look.ended(now, by, outcome)
        self._active.pop(look.id, None)
        self._close_relays(active)
        if not await self._persist(look, unless_ended=True):
            # Another gateway ended it first: that one commanded standby and audited it.
            stored = await self.find_look(look.id)
            return stored if stored is not None else look
        self.looks[look.id] = look
        if by is not EndedBy.CAMERA_FAILED:
            self._standby_due[look.device_id] = (look.id, now + self.standby_timeout_s)
            self._command(look.device_id, "standby")
        self._audit(look.viewer_id, look.recipient_id, {"event": "ended", **look.audit_detail()})
        if outcome is not None:
            await self._outcome(look, now)
        self._poke()
        return look

    async def _outcome(self, look: Look, now: float) -> None:
        assert look.outcome is not None
        if look.window_key is not None:
            self.missed.done(look.window_key)
            await asyncio.to_thread(self._store().claim_window, look.window_key,
                                    WindowMark.DONE, now)
        if look.outcome.needs_visit:
            self._visit(look.recipient_id, now, f"look.{look.id}",
                        f"Nattillsyn: {look.outcome.value} – besök / camera look: visit needed")

    # -- operations (the router calls these) -------------------------------------------------

    async def request_look(
        self, member: StaffMember, recipient_id: str, *, reason: str | None = None,
        alarm_id: str | None = None, duration_s: float | None = None,
    ) -> tuple[Look, str]:
        """Decide, wake the camera and wait for it; the look and its token, or a DomainError."""
        now = self._clock()
        recipient = self.gateway.org.recipients.get(recipient_id)
        if recipient is None:
            raise NotFoundError("unknown recipient")
        await self._refresh()
        schedule = self.schedules.get(recipient_id)
        teams = {recipient.team_id} | ({schedule.team_id} if schedule is not None else set())
        if member.role != "admin" and not teams & set(member.team_ids):
            # Another team's recipient answers exactly as a missing one (docs/security.md):
            # whether they exist, have a camera, a consent or a schedule is not this viewer's
            # to learn. The attempt is still audited as a refusal.
            self._refuse(member.id, recipient_id, Refused(
                RefusalCode.WRONG_TEAM,
                "tillsynen hör till ett annat team / look belongs to another team"), now, 404)
            raise NotFoundError("unknown recipient")
        device_id = self.camera_of(recipient_id)
        if device_id is None:
            raise self._refuse(member.id, recipient_id, Refused(
                RefusalCode.NO_CAMERA, "ingen kamera hos brukaren / no camera"), now,
                409)
        ad_hoc = AdHoc(reason or "", alarm_id) if reason or alarm_id else None
        decision = decide_access(
            viewer=Viewer(member.id, frozenset(member.team_ids)),
            recipient_id=recipient_id,
            recipient_team_id=recipient.team_id,
            consent=self.consents.current(recipient_id),
            schedule=schedule,
            now=now,
            ad_hoc=ad_hoc,
            open_alarm_ids=self._open_alarm_ids(recipient_id),
            done_windows=self.missed.done_windows,
            look_active=any(a.look.recipient_id == recipient_id for a in self._active.values())
            or device_id in self._waking,
            duration_s=duration_s,
            max_look_s=self.max_look_s,
        )
        if isinstance(decision, Refused):
            raise self._refuse(member.id, recipient_id, decision, now, 403,
                               device_id=device_id, ad_hoc=ad_hoc is not None)
        return await self._wake(member, recipient_id, device_id, decision, now)

    async def _wake(self, member: StaffMember, recipient_id: str, device_id: str,
                    allowed: Allowed, now: float) -> tuple[Look, str]:
        look = Look(
            id=uuid.uuid4().hex[:16], recipient_id=recipient_id, device_id=device_id,
            viewer_id=member.id, requested_at=now, max_s=allowed.duration_s,
            window_key=None if allowed.window is None else allowed.window.key,
            ad_hoc=allowed.ad_hoc, reason=allowed.reason,
        )
        token = secrets.token_urlsafe(32)
        if not await asyncio.to_thread(self._store().begin_look,
                                       StoredLook(look, token_hash(token))):
            # Another gateway started a look at this recipient a moment ago.
            raise self._refuse(member.id, recipient_id, Refused(
                RefusalCode.LOOK_ACTIVE, "en titt pågår redan / a look is in progress"),
                now, 403, device_id=device_id)
        self.looks[look.id] = look
        self._audit(member.id, recipient_id, {
            "event": "allowed", "flagged": allowed.flagged, **look.audit_detail()})
        waiter: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waking[device_id] = waiter
        stream_url: str | None = None
        failure = "kameran svarar inte / camera does not answer"
        try:
            if self._camera_offline(device_id):
                failure = "kameran är offline / camera is offline"
            elif self._command(device_id, "wake", duration_s=int(allowed.duration_s) + 5,
                               look=look.id):
                with contextlib.suppress(TimeoutError):
                    stream_url = await asyncio.wait_for(waiter, self.wake_timeout_s)
                    if stream_url is None:
                        failure = "kameran gav ingen ström / camera gave no stream"
            else:
                failure = "kan inte nå kameran (MQTT) / cannot reach the camera"
        finally:
            self._waking.pop(device_id, None)
        now = self._clock()
        active = _Active(look, token)
        if stream_url is None:
            await self._camera_failed(active, now, failure)
            raise UpstreamTimeoutError({
                "code": "camera_failed", "reason": failure, "look_id": look.id,
                "visit": "besök beställt / visit requested"})
        active.look = look.woken(now)
        active.stream_url = stream_url
        self._active[look.id] = active
        self.looks[look.id] = active.look
        await self._persist(active.look, token, stream_url)
        self._poke()
        return active.look, active.token

    async def _camera_failed(self, active: _Active, now: float, failure: str) -> None:
        """Technical alarm and a visit, both at once: nobody saw the person."""
        look = active.look
        self._log.log(_LOGGER, logging.WARNING, "wake",
                      "night camera %s failed to wake for look %s: %s",
                      look.device_id, look.id, failure)
        self._events.append(self._technical(
            look.device_id, f"camwake.{look.id}", now, f"Nattkamera: {failure}"))
        await self._end(active, now, EndedBy.CAMERA_FAILED, Outcome.COULD_NOT_SEE)

    async def check_token(self, member: StaffMember, look_id: str, token: str | None
                          ) -> _Active:
        """The active look a token opens, or an audited refusal. A look started through
        another gateway (or before a restart) is taken over here."""
        now = self._clock()
        active = self._active.get(look_id)
        if active is None:
            stored = await asyncio.to_thread(self._store().look, look_id)
            if stored is not None and stored.in_progress and stored.stream_url is not None:
                active = await self._adopt(stored)
        ended = self.looks.get(look_id)
        subject = ended.recipient_id if ended is not None else "?"
        if active is None:
            code = RefusalCode.LOOK_ENDED if ended is not None else RefusalCode.TOKEN_INVALID
            raise self._refuse(member.id, subject, Refused(code, "ingen pågående titt / no "
                               "look in progress"), now, 403,
                               look_id=look_id)
        if token is None or not hmac.compare_digest(token_hash(token).encode(),
                                                    active.token_hash.encode()):
            raise self._refuse(member.id, subject, Refused(
                RefusalCode.TOKEN_INVALID, "ogiltig titt-token / invalid look token"), now,
                403, look_id=look_id)
        if member.id != active.look.viewer_id:
            raise self._refuse(member.id, subject, Refused(
                RefusalCode.WRONG_VIEWER, "titten är någon annans / another viewer's look"),
                now, 403, look_id=look_id)
        expires = active.look.expires_at
        if expires is None or now >= expires:
            raise self._refuse(member.id, subject, Refused(
                RefusalCode.TOKEN_EXPIRED, "titten har gått ut / look expired"), now,
                403, look_id=look_id)
        return active

    async def open_stream(self, active: _Active) -> tuple[str, AsyncIterator[bytes]]:
        """Connect to the camera; its content type and a relay of its stream (frames stay in
        memory, chunk by chunk)."""
        assert self._session is not None
        assert active.stream_url is not None
        try:
            upstream = await self._session.get(active.stream_url)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"camera stream unreachable: {type(exc).__name__}") from None
        content_type = upstream.headers.get("Content-Type", "")
        if upstream.status != HTTP_OK or not content_type.startswith(_STREAM_TYPES):
            upstream.close()
            raise UpstreamError("camera stream refused")
        active.relays.add(upstream)
        streaming = active.look.streaming(self._clock())
        if streaming != active.look:
            active.look = streaming
            self.looks[streaming.id] = streaming
            await self._persist(streaming)
        self._poke()
        return content_type, self._relay(active, upstream)

    async def _relay(self, active: _Active, upstream: aiohttp.ClientResponse
                     ) -> AsyncIterator[bytes]:
        try:
            while active.look.state is not LookState.ENDED:
                expires = active.look.expires_at
                remaining = 0.0 if expires is None else expires - self._clock()
                if remaining <= 0:
                    break
                try:
                    chunk = await asyncio.wait_for(upstream.content.readany(), remaining)
                except (TimeoutError, aiohttp.ClientError):
                    break
                if not chunk:
                    break
                yield chunk
        finally:
            active.relays.discard(upstream)
            upstream.close()

    async def end_look(self, member: StaffMember, look_id: str, outcome: Outcome) -> Look:
        """The viewer ends a look (or gives the outcome of one that timed out)."""
        now = self._clock()
        active = self._active.get(look_id)
        if active is None:
            stored = await asyncio.to_thread(self._store().look, look_id)
            if stored is not None and stored.in_progress:
                if stored.look.viewer_id != member.id:
                    raise ForbiddenError("another viewer's look")
                active = await self._adopt(stored)
        if active is not None:
            if active.look.viewer_id != member.id:
                raise ForbiddenError("another viewer's look")
            return await self._end(active, now, EndedBy.VIEWER, outcome)
        look = await self.find_look(look_id)
        if look is None:
            raise NotFoundError("no such look")
        if look.viewer_id != member.id:
            raise ForbiddenError("another viewer's look")
        try:
            look = look.with_outcome(now, outcome)
        except LookError as exc:
            raise ConflictError(str(exc)) from None
        self.looks[look.id] = look
        await self._persist(look)
        self._audit(member.id, look.recipient_id, {"event": "outcome", **look.audit_detail()})
        await self._outcome(look, now)
        self._poke()
        return look

    async def register_consent(self, member: StaffMember, recipient_id: str,
                               given_by: str, scope: frozenset[ConsentScope],
                               consented_at: float | None) -> Consent:
        """Register a consent (replacing the current one)."""
        now = self._clock()
        consent = Consent(recipient_id, given_by, now if consented_at is None else consented_at,
                          scope, member.id, now)
        await asyncio.to_thread(self._store().add_consent, consent)
        await self._refresh()
        self.gateway.audit.record(AuditKind.CONFIG_CHANGE, actor=member.id,
                                  subject=f"nattillsyn.consent:{recipient_id}",
                                  detail={"action": "consent_registered", **consent.to_json()})
        return consent

    async def withdraw_consent(self, member: StaffMember, recipient_id: str) -> Consent:
        """Withdraw consent at once: any look in progress ends now."""
        now = self._clock()
        withdrawn = await asyncio.to_thread(self._store().withdraw_consent, recipient_id,
                                            by=member.id, now=now)
        if withdrawn is None:
            raise NotFoundError("no consent in force")
        await self._refresh()
        # Looks in progress through any gateway end now (the others drop their relays on
        # their next check).
        stored = await asyncio.to_thread(self._store().looks, in_progress=True)
        for look in [s for s in stored if s.look.recipient_id == recipient_id]:
            await self._end(await self._adopt(look), now, EndedBy.CONSENT_WITHDRAWN)
        self.gateway.audit.record(AuditKind.CONFIG_CHANGE, actor=member.id,
                                  subject=f"nattillsyn.consent:{recipient_id}",
                                  detail={"action": "consent_withdrawn", **withdrawn.to_json()})
        return withdrawn

    async def set_schedule(self, member: StaffMember, schedule: Schedule | None,
                           recipient_id: str) -> None:
        """Set (or with None, remove) a recipient's schedule."""
        store = self._store()
        if schedule is None:
            if not await asyncio.to_thread(store.remove_schedule, recipient_id):
                raise NotFoundError("no schedule")
        else:
            await asyncio.to_thread(store.put_schedule, schedule)
        await self._refresh()
        self.gateway.audit.record(
            AuditKind.CONFIG_CHANGE, actor=member.id,
            subject=f"nattillsyn.schedule:{recipient_id}",
            detail={"action": "schedule_removed" if schedule is None else "schedule_set",
                    **({} if schedule is None else schedule.to_json())})
        self._poke()

    # -- the HTTP API ------------------------------------------------------------------------

