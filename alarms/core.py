"""The alarm state machine.

``decide(event, now)`` reads the state and returns a ``Decision``: the records to persist,
the actions to carry out once they are durable, or a refusal. It never changes state.
``apply(record)`` changes state, and is called only for records that are durable — both
live (after the journal commit) and on replay at start. State is therefore always exactly
what the journal says.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from alarms import shortcode
from alarms.actions import AckDevice, Action, Notify, NotifyCentre
from alarms.causes import RESTORED_CAUSE, TEST_FAILED_CAUSE, TEST_PASSED_CAUSE, match_cause
from alarms.dedupe import Claim, content_key, is_resend
from alarms.directory import Directory
from alarms.escalation import Due, due
from alarms.events import (
    AcceptRequested,
    AlarmReceived,
    CentreConfirmed,
    CloseRequested,
    Event,
    FaultCleared,
    FaultReported,
    ForwardRequested,
    HandBackRequested,
    NotificationReported,
    OnSiteRequested,
    PositionReported,
    Presence,
    ReceiptConfirmed,
    StaffConnected,
    StaffDisconnected,
    StatusReported,
    TakeOverRequested,
    TechnicalCleared,
    TestCompleted,
    Tick,
)
from alarms.model import (
    GATEWAY_DEVICE,
    HOP_ORDER,
    LADDER_KINDS,
    MAX_POSITIONS,
    NOTIFICATION_RANK,
    PRIORITY,
    SMS_CHANNEL,
    Alarm,
    AlarmType,
    AttachedRef,
    DeviceNote,
    DeviceStatus,
    EscalationEntry,
    EscalationKind,
    Handover,
    HandoverKind,
    Hop,
    HopEntry,
    NotificationEntry,
    NotificationStatus,
    Position,
    PositionEntry,
    changed,
    technical_kind,
)
from alarms.records import (
    AlarmOpened,
    CentreConfirmation,
    DeviceNoted,
    Escalated,
    HopAdded,
    NotificationRecorded,
    OwnerChanged,
    PositionAdded,
    Record,
    RefAttached,
)
from alarms.routing import Availability, first_targets, step_targets

# Device clocks drift and some reset to 1970. The ``raised`` hop uses the device's time only
# when it is plausible; otherwise the time of receipt. The raw value stays on the alarm.
MAX_CLOCK_SKEW_S = 24 * 3600.0

# A recipient whose button or sensor flaps raises alarm after alarm. They attach to the open
# alarm; staff are told again at most this often, so a flapping sensor cannot become a
# notification storm while a second press a few minutes later still reaches them.
ATTACH_NOTIFY_GAP_S = 60.0

# A tick after a long outage may find several deadlines of one alarm passed (re-alert, next
# level, centre). Each step writes an entry dated ``now`` and pushes the next deadline past
# it, so the loop ends by itself; the cap guards against a policy bug spinning forever.
MAX_STEPS_PER_TICK = 16


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused. ``code`` follows HTTP semantics for the API layer."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    """What the core decided: records to persist first, then actions; or a refusal."""

    records: tuple[Record, ...] = ()
    actions: tuple[Action, ...] = ()
    refusal: Refusal | None = None


class AlarmCore:
    """All alarms, the dedupe index and the deadlines. Not thread-safe: one owner drives it."""

    def __init__(self, directory: Directory | None = None, *, track_presence: bool = False) -> None:
        self.alarms: dict[str, Alarm] = {}
        self._by_ref: dict[tuple[str, str], str] = {}
        # What each (device, ref) was last stored with, for the resend rule (alarms.dedupe):
        # its content key and, for a ref attached to an alarm, when (an opened alarm's time
        # is its ``stored`` hop).
        self._claims: dict[tuple[str, str], tuple[str | None, float | None]] = {}
        # Open alarm ids in opening order, and each one's next deadline. Both are caches of
        # what the records say, kept so that ticks and routing need not scan closed alarms.
        self._open: dict[str, None] = {}
        self._due: dict[str, Due] = {}
        # (deadline, alarm id), possibly outdated: see next_deadline.
        self._due_heap: list[tuple[float, str]] = []
        # Indexes over the open alarms, kept by ``_refresh``, so that attaching a repeat and
        # asking who is busy cost O(1) per alarm instead of a scan of everything open:
        # open alarm ids per recipient (opening order), and the owners of open alarms.
        self._open_by_recipient: dict[str, dict[str, None]] = {}
        self._owner_of: dict[str, str] = {}
        self._owners: Counter[str] = Counter()
        # Reply codes of open alarms (SMS fallback): a reply names its alarm by one, and a
        # new code must differ from every open alarm's.
        self._codes: dict[str, str] = {}
        # Presence is not journaled: after a restart every client reconnects anyway, and a
        # replayed "connected" would be a lie. Routing writes its result into the journal, so
        # replay never needs presence. Counted, because one person may have two devices.
        self.track_presence = track_presence
        self._connections: Counter[str] = Counter()
        # Staff connected to the other gateways of a cluster (gateway.cluster keeps it).
        self.remote_connected: frozenset[str] = frozenset()
        self._directory = directory or Directory()

    @property
    def directory(self) -> Directory:
        """The routing view of the organisation."""
        return self._directory

    @directory.setter
    def directory(self, directory: Directory) -> None:
        # Deadlines depend on team policies: recompute them for the new organisation.
        self._directory = directory
        for alarm_id in self._open:
            self._refresh(alarm_id)

    # -- presence --------------------------------------------------------------------------

    def observe(self, event: Presence) -> None:
        """Presence changed: who is connected, here (per connection) or on other gateways."""
        if isinstance(event, StaffConnected):
            self._connections[event.staff_id] += 1
        elif isinstance(event, StaffDisconnected):
            if self._connections[event.staff_id] <= 1:
                del self._connections[event.staff_id]
            else:
                self._connections[event.staff_id] -= 1
        else:
            self.remote_connected = event.staff_ids

    def connected(self) -> frozenset[str] | None:
        """Staff with at least one client connected; None if presence is not tracked."""
        if not self.track_presence:
            return None
        return frozenset(self._connections) | self.remote_connected

    def busy(self) -> frozenset[str]:
        """Staff who own an open alarm."""
        return frozenset(self._owners)

    # -- queries ---------------------------------------------------------------------------

    def find(self, device_id: str, ref: str) -> Alarm | None:
        """The alarm a (device, ref) pair was stored as or attached to, if any."""
        alarm_id = self._by_ref.get((device_id, ref))
        return None if alarm_id is None else self.alarms[alarm_id]

    def claim(self, device_id: str, ref: str) -> Claim | None:
        """What a (device, ref) pair was last stored with, for ``alarms.dedupe.is_resend``."""
        key = (device_id, ref)
        alarm_id = self._by_ref.get(key)
        if alarm_id is None:
            return None
        content, attached_at = self._claims.get(key, (None, None))
        alarm = self.alarms[alarm_id]
        stored_at = attached_at
        if stored_at is None:
            stored_at = alarm.at(Hop.STORED) or (alarm.hops[0].at if alarm.hops else 0.0)
        return Claim(alarm_id, content, stored_at)

    def open_from_device(self, device_id: str) -> list[Alarm]:
        """Open alarms that ``device_id`` raised or had attached, in the order they opened."""
        recipient_id, _ = self.directory.team_of_device(device_id)
        if recipient_id is not None:
            candidates = self.open_of_recipient(recipient_id)
        else:
            candidates = self.open_in_order()
        return [a for a in candidates if a.from_device(device_id)]

    def open_technical_of(self, device_id: str, kind: str) -> list[Alarm]:
        """Open technical alarms of ``device_id`` whose ref names fault ``kind``."""
        prefix = f"{kind}."
        return [
            a
            for a in self.open_from_device(device_id)
            if a.type is AlarmType.TECHNICAL and a.device_id == device_id
            and a.ref.startswith(prefix)
        ]

    def open_alarms(self) -> list[Alarm]:
        """Open alarms, most urgent first, then oldest first."""
        found = [self.alarms[a] for a in self._open]
        found.sort(key=lambda a: (a.priority, a.hops[0].at))
        return found

    def open_in_order(self) -> list[Alarm]:
        """Open alarms in the order they opened: no sort, for scans that need no ranking."""
        return [self.alarms[a] for a in self._open]

    def open_of_recipient(self, recipient_id: str) -> list[Alarm]:
        """A recipient's open alarms, in the order they opened (an index, not a scan)."""
        return [self.alarms[a] for a in self._open_by_recipient.get(recipient_id, {})]

    def find_code(self, code: str) -> Alarm | None:
        """The open alarm whose SMS carried reply code ``code`` (upper case), if any."""
        alarm_id = self._codes.get(code)
        return None if alarm_id is None else self.alarms[alarm_id]

    def deadline_of(self, alarm_id: str) -> Due | None:
        """What happens next to an alarm and when; None once it is closed."""
        return self._due.get(alarm_id)

    def next_deadline(self) -> float | None:
        """The earliest deadline of all open alarms: when the gateway should feed ``Tick``.

        A heap with lazy deletion: asked after every commit, it must not scan every open alarm
        (thousands in a storm); entries a later refresh outdated are dropped as they surface.
        """
        heap, current = self._due_heap, self._due
        while heap:
            at, alarm_id = heap[0]
            found = current.get(alarm_id)
            if found is not None and found.at == at:
                return at
            heapq.heappop(heap)
        return None

    def allowed_causes(self, alarm: Alarm) -> tuple[str, ...]:
        """The close causes staff may choose for ``alarm``."""
        causes = self.directory.close_causes
        if alarm.type is AlarmType.TECHNICAL and RESTORED_CAUSE not in causes:
            causes = (*causes, RESTORED_CAUSE)
        return causes

    # -- decisions -------------------------------------------------------------------------

    def decide(self, event: Event, now: float) -> Decision:
        """Decide what ``event`` means at time ``now``. Pure: the state is not changed."""
        if isinstance(event, AlarmReceived):
            return self._decide_alarm(event, now)
        if isinstance(event, TechnicalCleared):
            return self._decide_cleared(event, now)
        if isinstance(event, Tick):
            return self._decide_tick(now)
        if isinstance(event, StatusReported):
            return self._decide_status(event, now)
        if isinstance(event, PositionReported):
            return self._decide_position(event, now)
        if isinstance(event, FaultReported):
            return self._decide_fault(event, now)
        if isinstance(event, FaultCleared):
            return self._decide_fault_cleared(event, now)
        alarm = self.alarms.get(event.alarm_id)
        if alarm is None:
            return Decision(refusal=Refusal(404, f"no alarm {event.alarm_id!r}"))
        if isinstance(event, CentreConfirmed):
            return self._decide_centre_confirmed(alarm, event, now)
        if isinstance(event, NotificationReported):
            return self._decide_notification(alarm, event, now)
        if isinstance(event, TestCompleted):
            return self._decide_test_completed(alarm, event, now)
        if not self._may_act(event.staff_id, alarm):
            return Decision(refusal=Refusal(403, "alarm belongs to another team"))
        if isinstance(event, ReceiptConfirmed):
            return self._decide_receipt(alarm, event.staff_id, now)
        if isinstance(event, AcceptRequested):
            return self._decide_accept(alarm, event.staff_id, now)
        if isinstance(event, OnSiteRequested):
            return self._decide_on_site(alarm, event.staff_id, now)
        if isinstance(event, ForwardRequested):
            return self._decide_forward(alarm, event, now)
        if isinstance(event, HandBackRequested):
            return self._decide_hand_back(alarm, event.staff_id, now)
        if isinstance(event, TakeOverRequested):
            return self._decide_take_over(alarm, event.staff_id, now)
        return self._decide_close(alarm, event, now)

    def _may_act(self, staff_id: str, alarm: Alarm) -> bool:
        # Whoever the alarm was escalated to (night patrol, a neighbouring team) may act on
        # it too, or escalating to them would be pointless.
        if staff_id not in self.directory.staff:
            return False
        return (
            self.directory.may_handle(staff_id, alarm.team_id)
            or staff_id in alarm.targets
            or staff_id == alarm.owner
        )

    def _decide_alarm(self, event: AlarmReceived, now: float) -> Decision:
        content = alarm_content(event)
        claim = self.claim(event.device_id, event.ref)
        if claim is not None:
            existing = self.alarms[claim.alarm_id]
            if is_resend(claim, content, alarm_open=existing.state == "open", now=now):
                # The device did not get (or lost) our answer: answer again, store nothing
                # but a position it did not report before.
                return self._resend(existing, event, now)
        technical = event.type is AlarmType.TECHNICAL
        if not self.directory.knows_device(event.device_id) and not (
            technical and event.device_id == GATEWAY_DEVICE
        ):
            return Decision(
                actions=(
                    AckDevice(event.device_id, event.ref, "rejected", "unknown device"),
                ),
                refusal=Refusal(404, "unknown device"),
            )
        recipient_id, team_id = self.directory.team_of_device(event.device_id)
        open_alarm = self._attachable(recipient_id, team_id, event.type)
        if open_alarm is not None:
            return self._attach(open_alarm, event, content, now)
        raised_at = event.device_ts_ms / 1000.0
        if not now - MAX_CLOCK_SKEW_S <= raised_at <= now:
            raised_at = now
        targets = tuple(
            sorted(
                first_targets(
                    self.directory,
                    alarm_type=event.type,
                    device_id=event.device_id,
                    team_id=team_id,
                    now=now,
                    kind=technical_kind(event.ref) if technical else None,
                    # Who is busy costs a scan of the open alarms: only when the team asks.
                    availability=Availability(
                        self.connected(),
                        self.busy()
                        if self.directory.policy(team_id).busy_excludes
                        else frozenset(),
                    ),
                )
            )
        )
        alarm_id = event.new_id
        records: tuple[Record, ...] = (
            AlarmOpened(
                alarm_id=alarm_id,
                device_id=event.device_id,
                ref=event.ref,
                type=event.type,
                priority=PRIORITY[event.type],
                recipient_id=recipient_id,
                team_id=team_id,
                device_ts_ms=event.device_ts_ms,
                battery=event.battery,
                detail=event.detail,
                content=content,
            ),
            HopAdded(alarm_id, Hop.RAISED, raised_at, event.device_id),
            HopAdded(alarm_id, Hop.STORED, now, "gateway"),
            HopAdded(alarm_id, Hop.ROUTED, now, f"team:{team_id or '*'}", targets=targets),
        )
        if event.position is not None:
            records = (*records, PositionAdded(alarm_id, now, event.device_id, event.position))
        actions: tuple[Action, ...] = (
            AckDevice(event.device_id, event.ref, "stored"),
            Notify(alarm_id, frozenset(targets)),
        )
        if event.type in self.directory.policy(team_id).centre_immediately:
            # Configured types (typically fire) go to the alarm centre at once, not after
            # the ladder: the centre can call the fire brigade while staff are on the way.
            records = (*records, Escalated(alarm_id, EscalationKind.CENTRE, 0, now, attempt=1))
            actions = (*actions, NotifyCentre(alarm_id, 1))
        return Decision(records=records, actions=actions)

    def _attachable(
        self, recipient_id: str | None, team_id: str | None, kind: AlarmType
    ) -> Alarm | None:
        """The open alarm of this recipient a new alarm of ``kind`` attaches to, if any.

        Only person alarms attach: technical alarms are about devices, and a test alarm must
        prove the chain on its own. A more urgent type (fire while a fall is open) is a new
        alarm, since it changes who must come and how fast.
        """
        if recipient_id is None or kind in (AlarmType.TECHNICAL, AlarmType.TEST):
            return None
        if not self.directory.policy(team_id).attach_repeats:
            return None
        for alarm_id in reversed(self._open_by_recipient.get(recipient_id, {})):
            alarm = self.alarms[alarm_id]
            if (
                alarm.type not in (AlarmType.TECHNICAL, AlarmType.TEST)
                and PRIORITY[kind] >= alarm.priority
            ):
                return alarm
        return None

    def _attach(self, alarm: Alarm, event: AlarmReceived, content: str, now: float) -> Decision:
        records: list[Record] = [
            RefAttached(alarm.id, event.device_id, event.ref, event.type, now, content)
        ]
        actions: list[Action] = [AckDevice(event.device_id, event.ref, "stored")]
        last = max([alarm.hops[0].at, *(a.at for a in alarm.attached)])
        moved = self._new_position(alarm, event.position)
        if moved is not None:
            records.append(PositionAdded(alarm.id, now, event.device_id, moved))
        if now - last >= ATTACH_NOTIFY_GAP_S or moved is not None:
            actions.append(Notify(alarm.id, self._audience(alarm)))
        return Decision(records=tuple(records), actions=tuple(actions))

    def _resend(self, alarm: Alarm, event: AlarmReceived, now: float) -> Decision:
        ack = AckDevice(event.device_id, event.ref, "stored")
        moved = self._new_position(alarm, event.position) if alarm.state == "open" else None
        if moved is None:
            return Decision(actions=(ack,))
        # A mobile alarm resent with where the person is now: keep the track.
        record = PositionAdded(alarm.id, now, event.device_id, moved)
        return Decision(records=(record,), actions=(ack, Notify(alarm.id, self._audience(alarm))))

    @staticmethod
    def _new_position(alarm: Alarm, position: Position | None) -> Position | None:
        """``position`` unless it is the fix the alarm already shows last."""
        if position is None:
            return None
        last = alarm.position
        if last is not None and position.same_fix(last.position):
            return None
        return position

    # -- device status (not alarms) --------------------------------------------------------

    def _care_alarms_of(self, device_id: str) -> list[Alarm]:
        return [
            a
            for a in self.open_from_device(device_id)
            if a.type not in (AlarmType.TECHNICAL, AlarmType.TEST)
        ]

    def _decide_status(self, event: StatusReported, now: float) -> Decision:
        records: list[Record] = []
        actions: list[Action] = []
        for alarm in self._care_alarms_of(event.device_id):
            if any(n.device_id == event.device_id and n.ref == event.ref
                   for n in alarm.device_notes):
                continue  # the same report again (a resend)
            record: Record
            if event.status is DeviceStatus.PRESENCE and alarm.reached(Hop.ON_SITE):
                continue
            if (
                event.status is DeviceStatus.PRESENCE
                and alarm.owner is not None
                and alarm.state == "open"
            ):
                # Staff registered at the unit: the on_site hop of whoever has the alarm.
                record = HopAdded(alarm.id, Hop.ON_SITE, now, f"device:{event.device_id}")
            else:
                # Presence before anybody accepted (the hops cannot skip "accepted"), and
                # every reset or completion: noted for staff, who close with a cause.
                record = DeviceNoted(
                    alarm.id, event.status, now, event.device_id, event.ref, event.text
                )
            records.append(record)
            actions.append(Notify(alarm.id, self._audience(alarm)))
        return Decision(records=tuple(records), actions=tuple(actions))

    def _decide_position(self, event: PositionReported, now: float) -> Decision:
        records: list[Record] = []
        actions: list[Action] = []
        for alarm in self._care_alarms_of(event.device_id):
            moved = self._new_position(alarm, event.position)
            if moved is None:
                continue
            records.append(PositionAdded(alarm.id, now, event.device_id, moved))
            actions.append(Notify(alarm.id, self._audience(alarm)))
        return Decision(records=tuple(records), actions=tuple(actions))

    def _decide_fault(self, event: FaultReported, now: float) -> Decision:
        if self.open_technical_of(event.device_id, event.kind):
            return Decision()  # already raised and not cleared: a reminder adds nothing
        return self._decide_alarm(
            AlarmReceived(
                event.device_id,
                f"{event.kind}.{event.ref}",
                AlarmType.TECHNICAL,
                event.device_ts_ms,
                event.new_id,
                detail=event.detail,
            ),
            now,
        )

    def _decide_fault_cleared(self, event: FaultCleared, now: float) -> Decision:
        records: list[Record] = []
        actions: list[Action] = []
        for alarm in self.open_technical_of(event.device_id, event.kind):
            record = HopAdded(
                alarm.id, Hop.CLOSED, now, "gateway", cause=RESTORED_CAUSE, note=event.note
            )
            records.append(record)
            actions.append(Notify(alarm.id, alarm.targets))
        return Decision(records=tuple(records), actions=tuple(actions))

    def _audience(self, alarm: Alarm) -> frozenset[str]:
        owner = alarm.owner
        return alarm.targets | (frozenset({owner}) if owner else frozenset())

    def _decide_tick(self, now: float) -> Decision:
        records: list[Record] = []
        actions: list[Action] = []
        for alarm_id, first in sorted(self._due.items(), key=lambda item: item[1].at):
            if first.at > now:
                continue
            alarm = self.alarms[alarm_id]
            policy = self.directory.policy(alarm.team_id)
            alerted: set[str] = set()
            urgent = False
            centre_attempt = 0
            for _ in range(MAX_STEPS_PER_TICK):
                step = due(alarm, policy)
                if step is None or step.at > now:
                    break
                targets = step_targets(self.directory, alarm, step.kind, now)
                record = Escalated(
                    alarm.id, step.kind, step.level, now, tuple(sorted(targets)), step.attempt
                )
                climbed = step.level > alarm.level
                alarm = evolve(alarm, record)
                records.append(record)
                if step.kind is EscalationKind.SMS:
                    for queued in self._queue_sms(alarm, step.attempt, targets, now):
                        alarm = evolve(alarm, queued)
                        records.append(queued)
                if step.kind is EscalationKind.CENTRE and step.attempt > 0:
                    centre_attempt = step.attempt
                if step.kind is EscalationKind.CENTRE and not climbed:
                    continue  # a retry to the centre alone tells staff nothing new
                urgent = True
                owner = alarm.owner
                if step.kind is EscalationKind.REMINDER and owner is not None:
                    alerted |= {owner}
                else:
                    alerted |= targets | self._audience(alarm)
            if urgent:
                actions.append(Notify(alarm.id, frozenset(alerted), urgent=True))
            if centre_attempt:
                actions.append(NotifyCentre(alarm.id, centre_attempt))
        return Decision(records=tuple(records), actions=tuple(actions))

    def _decide_centre_confirmed(
        self, alarm: Alarm, event: CentreConfirmed, now: float
    ) -> Decision:
        if alarm.centre_attempts == 0:
            return Decision(refusal=Refusal(409, "alarm was never sent to the alarm centre"))
        if alarm.centre_confirmed_at is not None:
            return Decision()  # the centre confirms each attempt; the first one counts
        if not 1 <= event.attempt <= alarm.centre_attempts:
            return Decision(refusal=Refusal(422, f"no delivery attempt {event.attempt}"))
        record = CentreConfirmation(alarm.id, now, event.attempt, event.reference)
        return Decision(records=(record,), actions=(Notify(alarm.id, self._audience(alarm)),))

    def _queue_sms(
        self, alarm: Alarm, attempt: int, targets: frozenset[str], now: float
    ) -> list[NotificationRecorded]:
        """One queued SMS per target, all carrying the alarm's reply code (assigned now if
        this is its first SMS). The queued records are the sender's outbox."""
        code = alarm.reply_code or shortcode.assign(alarm.id, self._codes)
        return [
            NotificationRecorded(
                alarm.id, SMS_CHANNEL, f"{alarm.id}.{attempt}.{staff_id}", staff_id,
                NotificationStatus.QUEUED, now, attempt, code,
            )
            for staff_id in sorted(targets)
        ]

    def _decide_notification(
        self, alarm: Alarm, event: NotificationReported, now: float
    ) -> Decision:
        current = alarm.messages(event.channel).get(event.message_id)
        if current is None:
            return Decision(refusal=Refusal(404, f"no message {event.message_id!r}"))
        if event.status is NotificationStatus.QUEUED:
            return Decision(refusal=Refusal(422, "only the core queues messages"))
        if NOTIFICATION_RANK[event.status] <= NOTIFICATION_RANK[current.status]:
            # A report that does not move the message on: a repeated delivery report, or
            # Kannel's answer arriving after the delivery report it caused.
            return Decision()
        record = NotificationRecorded(
            alarm.id, event.channel, event.message_id, current.staff_id, event.status, now,
            current.attempt, detail=None if event.detail is None else event.detail[:200],
        )
        # Staff clients show the chain; the new status changes what they show. Not urgent.
        return Decision(records=(record,), actions=(Notify(alarm.id, self._audience(alarm)),))

    def _decide_forward(self, alarm: Alarm, event: ForwardRequested, now: float) -> Decision:
        refusal = self._owner_refusal(alarm, event.staff_id)
        if refusal is not None:
            return Decision(refusal=refusal)
        to = event.to_staff_id
        if to == event.staff_id:
            return Decision(refusal=Refusal(422, "cannot forward an alarm to yourself"))
        colleague = self.directory.staff.get(to)
        if colleague is None:
            return Decision(refusal=Refusal(422, f"no colleague {to!r}"))
        if not self._may_act(to, alarm):
            return Decision(
                refusal=Refusal(422, f"{to} does not answer alarms of team {alarm.team_id}")
            )
        if not colleague.on_duty:
            return Decision(refusal=Refusal(422, f"{to} is not on duty"))
        record = OwnerChanged(alarm.id, HandoverKind.FORWARDED, now, event.staff_id, to)
        return Decision(
            records=(record,),
            actions=(Notify(alarm.id, self._audience(alarm) | {to}, urgent=True),),
        )

    def _decide_hand_back(self, alarm: Alarm, staff_id: str, now: float) -> Decision:
        refusal = self._owner_refusal(alarm, staff_id)
        if refusal is not None:
            return Decision(refusal=refusal)
        if alarm.reached(Hop.ON_SITE):
            return Decision(
                refusal=Refusal(409, "already on site: close the alarm or forward it")
            )
        record = OwnerChanged(alarm.id, HandoverKind.HANDED_BACK, now, staff_id, None)
        # Nobody has it any more: everyone who had it must see that, loudly.
        return Decision(
            records=(record,),
            actions=(Notify(alarm.id, self._audience(alarm), urgent=True),),
        )

    def _decide_take_over(self, alarm: Alarm, staff_id: str, now: float) -> Decision:
        if alarm.state == "closed":
            return Decision(refusal=Refusal(409, "alarm is closed"))
        owner = alarm.owner
        if owner is None:
            return self._decide_accept(alarm, staff_id, now)  # nobody to take it from
        if owner == staff_id:
            return Decision()
        record = OwnerChanged(alarm.id, HandoverKind.TAKEN_OVER, now, staff_id, staff_id)
        return Decision(
            records=(record,),
            actions=(Notify(alarm.id, self._audience(alarm) | {staff_id}),),
        )

    def _decide_cleared(self, event: TechnicalCleared, now: float) -> Decision:
        alarm = self.find(event.device_id, event.ref)
        if alarm is None or alarm.state == "closed":
            return Decision()
        record = HopAdded(
            alarm.id, Hop.CLOSED, now, "gateway", cause=RESTORED_CAUSE, note=event.note
        )
        return self._notify(alarm, (record,))

    def _decide_test_completed(self, alarm: Alarm, event: TestCompleted, now: float) -> Decision:
        if alarm.type is not AlarmType.TEST:
            return Decision(refusal=Refusal(409, "only a test alarm is closed by the gateway"))
        if alarm.state == "closed":
            return Decision()
        cause = TEST_PASSED_CAUSE if event.passed else TEST_FAILED_CAUSE
        record = HopAdded(alarm.id, Hop.CLOSED, now, "gateway", cause=cause, note=event.note)
        return self._notify(alarm, (record,))

    def _decide_receipt(self, alarm: Alarm, staff_id: str, now: float) -> Decision:
        if alarm.reached(Hop.DELIVERED):
            return Decision()  # the chain records the first confirmed delivery
        return self._hop(alarm, Hop.DELIVERED, staff_id, now)

    def _decide_accept(self, alarm: Alarm, staff_id: str, now: float) -> Decision:
        if alarm.state == "closed":
            return Decision(refusal=Refusal(409, "alarm is closed"))
        owner = alarm.owner
        if owner == staff_id:
            return Decision()  # accepting twice is harmless
        if owner is not None:
            return Decision(refusal=Refusal(409, f"already accepted by {owner}"))
        if alarm.reached(Hop.ACCEPTED):
            # Handed back earlier: the chain keeps its first ``accepted`` hop; the new owner
            # is a handover.
            again = OwnerChanged(alarm.id, HandoverKind.ACCEPTED, now, staff_id, staff_id)
            return Decision(
                records=(again,),
                actions=(Notify(alarm.id, self._audience(alarm) | {staff_id}),),
            )
        records: list[Record] = []
        if not alarm.reached(Hop.DELIVERED):
            # Whoever accepts has evidently seen it: the delivery hop is implied.
            records.append(HopAdded(alarm.id, Hop.DELIVERED, now, staff_id))
        records.append(HopAdded(alarm.id, Hop.ACCEPTED, now, staff_id))
        return self._notify(alarm, tuple(records))

    def _decide_on_site(self, alarm: Alarm, staff_id: str, now: float) -> Decision:
        refusal = self._owner_refusal(alarm, staff_id)
        if refusal is not None:
            return Decision(refusal=refusal)
        if alarm.reached(Hop.ON_SITE):
            return Decision()
        return self._hop(alarm, Hop.ON_SITE, staff_id, now)

    def _decide_close(self, alarm: Alarm, event: CloseRequested, now: float) -> Decision:
        refusal = self._owner_refusal(alarm, event.staff_id)
        if refusal is not None:
            return Decision(refusal=refusal)
        if not event.cause.strip():
            return Decision(refusal=Refusal(422, "a cause is required to close an alarm"))
        allowed = self.allowed_causes(alarm)
        cause = match_cause(event.cause, allowed)
        if cause is None:
            return Decision(
                refusal=Refusal(
                    422, f"unknown cause {event.cause.strip()!r}; allowed: {'; '.join(allowed)}"
                )
            )
        record = HopAdded(alarm.id, Hop.CLOSED, now, event.staff_id, cause=cause, note=event.note)
        return self._notify(alarm, (record,))

    def _owner_refusal(self, alarm: Alarm, staff_id: str) -> Refusal | None:
        if alarm.state == "closed":
            return Refusal(409, "alarm is closed")
        owner = alarm.owner
        if owner is None:
            return Refusal(409, "alarm must be accepted first")
        if owner != staff_id:
            return Refusal(409, f"alarm is accepted by {owner}")
        return None

    def _hop(self, alarm: Alarm, hop: Hop, actor: str, now: float) -> Decision:
        return self._notify(alarm, (HopAdded(alarm.id, hop, now, actor),))

    def _notify(self, alarm: Alarm, records: tuple[Record, ...]) -> Decision:
        return Decision(records=records, actions=(Notify(alarm.id, alarm.targets),))

    # -- evolution -------------------------------------------------------------------------

    def apply(self, record: Record) -> None:
        """Apply one durable record. Replaying the journal through this rebuilds the state."""
        self.apply_all((record,))

    def apply_all(self, records: Sequence[Record],
                  on_refused: Callable[[Record, Exception], None] | None = None) -> None:
        """Apply records in order; an alarm's derived indexes (open, due, by recipient,
        owners) are brought up to date once per alarm at the end, not after every record.

        A record that cannot follow its alarm's chain raises ValueError (KeyError for an
        alarm never opened); with ``on_refused`` it is handed to that and skipped instead,
        and the records after it are applied.
        """
        touched: dict[str, None] = {}
        try:
            for record in records:
                try:
                    self._evolve(record)
                except (ValueError, KeyError) as exc:
                    if on_refused is None:
                        raise
                    on_refused(record, exc)
                else:
                    touched[record.alarm_id] = None
        finally:
            for alarm_id in touched:
                self._refresh(alarm_id)

    def _evolve(self, record: Record) -> None:
        if isinstance(record, AlarmOpened):
            self.alarms[record.alarm_id] = Alarm(
                id=record.alarm_id,
                device_id=record.device_id,
                ref=record.ref,
                type=record.type,
                priority=record.priority,
                recipient_id=record.recipient_id,
                team_id=record.team_id,
                device_ts_ms=record.device_ts_ms,
                battery=record.battery,
                hops=(),
                detail=record.detail,
            )
            self._by_ref[(record.device_id, record.ref)] = record.alarm_id
            self._claims[(record.device_id, record.ref)] = (record.content, None)
            return
        self.alarms[record.alarm_id] = evolve(self.alarms[record.alarm_id], record)
        if isinstance(record, RefAttached):
            self._by_ref[(record.device_id, record.ref)] = record.alarm_id
            self._claims[(record.device_id, record.ref)] = (record.content, record.at)

    def _refresh(self, alarm_id: str) -> None:
        alarm = self.alarms[alarm_id]
        if not alarm.hops:
            return
        found = due(alarm, self.directory.policy(alarm.team_id))
        if found is None:
            self._open.pop(alarm_id, None)
            self._due.pop(alarm_id, None)
        else:
            self._open.setdefault(alarm_id, None)
            previous = self._due.get(alarm_id)
            self._due[alarm_id] = found
            if previous is None or previous.at != found.at:
                heapq.heappush(self._due_heap, (found.at, alarm_id))
                if len(self._due_heap) > 2 * len(self._due) + 64:
                    # Mostly outdated entries: rebuild from what is due now.
                    self._due_heap = [(d.at, a) for a, d in self._due.items()]
                    heapq.heapify(self._due_heap)
        self._index(alarm, is_open=found is not None)

    def _index(self, alarm: Alarm, *, is_open: bool) -> None:
        recipient_id = alarm.recipient_id
        if recipient_id is not None:
            if is_open:
                self._open_by_recipient.setdefault(recipient_id, {}).setdefault(alarm.id, None)
            elif (bucket := self._open_by_recipient.get(recipient_id)) is not None:
                bucket.pop(alarm.id, None)
                if not bucket:
                    del self._open_by_recipient[recipient_id]
        code = alarm.reply_code
        if code is not None:
            if is_open:
                self._codes[code] = alarm.id
            elif self._codes.get(code) == alarm.id:
                # Closed: the code is free for a later alarm.
                del self._codes[code]
        previous = self._owner_of.pop(alarm.id, None)
        if previous is not None:
            self._owners[previous] -= 1
            if self._owners[previous] <= 0:
                del self._owners[previous]
        if is_open and alarm.owner is not None:
            self._owner_of[alarm.id] = alarm.owner
            self._owners[alarm.owner] += 1


def evolve(alarm: Alarm, record: Record) -> Alarm:
    """The alarm after ``record``. Pure; raises ValueError for a record that cannot follow.

    ``decide`` uses it to look ahead (a tick that passes several deadlines), ``apply`` to
    change state, so both always agree.
    """
    if isinstance(record, HopAdded):
        return _add_hop(alarm, record)
    if isinstance(record, Escalated):
        if record.level < alarm.level:
            raise ValueError(
                f"escalation to level {record.level} after {alarm.level} on alarm {alarm.id}"
            )
        if record.kind in LADDER_KINDS and record.level > alarm.level + 1:
            raise ValueError(f"escalation on alarm {alarm.id} skips a level")
        entry = EscalationEntry(
            record.kind, record.level, record.at, frozenset(record.targets), record.attempt
        )
        return changed(
            alarm,
            escalations=(*alarm.escalations, entry),
            targets=alarm.targets | entry.targets,
        )
    if isinstance(record, CentreConfirmation):
        if alarm.centre_confirmed_at is not None:
            return alarm
        return changed(
            alarm, centre_confirmed_at=record.at, centre_reference=record.reference
        )
    if isinstance(record, OwnerChanged):
        if alarm.state == "closed" or not alarm.reached(Hop.ACCEPTED):
            raise ValueError(f"owner change on alarm {alarm.id} that is closed or unaccepted")
        owned = alarm.owner is not None
        if owned == (record.kind is HandoverKind.ACCEPTED):
            # One owner at a time: only an ownerless alarm is accepted again, and only an
            # owned one is forwarded, taken over or handed back.
            raise ValueError(f"{record.kind} on alarm {alarm.id} owned by {alarm.owner}")
        handover = Handover(record.kind, record.at, record.actor, record.owner)
        extra = frozenset({record.owner}) if record.owner else frozenset()
        return changed(
            alarm, handovers=(*alarm.handovers, handover), targets=alarm.targets | extra
        )
    if isinstance(record, RefAttached):
        attached = AttachedRef(record.device_id, record.ref, record.type, record.at)
        return changed(alarm, attached=(*alarm.attached, attached))
    if isinstance(record, PositionAdded):
        fix = PositionEntry(record.position, record.at, record.device_id)
        return changed(alarm, positions=(*alarm.positions, fix)[-MAX_POSITIONS:])
    if isinstance(record, DeviceNoted):
        note = DeviceNote(record.status, record.at, record.device_id, record.ref, record.text)
        return changed(alarm, device_notes=(*alarm.device_notes, note))
    if isinstance(record, NotificationRecorded):
        sent = NotificationEntry(
            record.channel, record.message_id, record.staff_id, record.status, record.at,
            record.attempt, record.code, record.detail,
        )
        return changed(alarm, notifications=(*alarm.notifications, sent))
    raise ValueError(f"alarm {alarm.id} is already open")  # a second AlarmOpened


# Technical alarms are raised by the gateway under refs it derives from the fault itself
# ("offline.<since>", "<fault kind>.<ref>"): the same ref is the same fault, whatever time
# the gateway put on it. The gateway marks the other alarms it raises itself (sensor rule
# episodes, camera visits) the same way, with INTERNAL_CONTENT.
_TECHNICAL_CONTENT = content_key(AlarmType.TECHNICAL.value)
INTERNAL_CONTENT = content_key("internal")


def alarm_content(event: AlarmReceived) -> str:
    """The content key of an alarm message (``alarms.dedupe``), as the core compares it.

    The edge sets it when the contract has no device time (SCAIP); otherwise a message is
    its type and the device's time of the event: a device resending an alarm resends both
    unchanged, a device that restarted its ref counter sends another time.
    """
    if event.content is not None:
        return event.content
    if event.type is AlarmType.TECHNICAL:
        return _TECHNICAL_CONTENT
    return content_key(event.type.value, event.device_ts_ms)


def _add_hop(alarm: Alarm, record: HopAdded) -> Alarm:
    if alarm.hops and HOP_ORDER[record.hop] <= HOP_ORDER[alarm.last_hop]:
        # Hops only move forward. A record that does not is a bug upstream; keep the
        # chain intact rather than rewrite history.
        raise ValueError(
            f"hop {record.hop} after {alarm.last_hop} on alarm {alarm.id}: out of order"
        )
    changes: dict[str, object] = {
        "hops": (*alarm.hops, HopEntry(record.hop, record.at, record.actor)),
    }
    if record.hop is Hop.ROUTED:
        changes["targets"] = frozenset(record.targets)
    elif record.hop is Hop.CLOSED:
        changes["cause"] = record.cause
        changes["note"] = record.note
    return changed(alarm, **changes)
