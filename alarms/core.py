"""The alarm state machine.

``decide(event, now)`` reads the state and returns a ``Decision``: the records to persist,
the actions to carry out once they are durable, or a refusal. It never changes state.
``apply(record)`` changes state, and is called only for records that are durable — both
live (after the journal commit) and on replay at start. State is therefore always exactly
what the journal says.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from alarms.actions import AckDevice, Action, Notify
from alarms.directory import Directory
from alarms.events import (
    AcceptRequested,
    AlarmReceived,
    CloseRequested,
    Event,
    OnSiteRequested,
    ReceiptConfirmed,
    TechnicalCleared,
)
from alarms.model import (
    GATEWAY_DEVICE,
    HOP_ORDER,
    PRIORITY,
    SAFETY_DEVICE_TYPES,
    Alarm,
    AlarmType,
    Hop,
    HopEntry,
)
from alarms.records import AlarmOpened, HopAdded, Record

# A resent alarm is recognised by (device_id, ref). Devices resend for seconds or minutes,
# never for a day, so a ref seen again after this long (a device reset its counter) is a new
# alarm. Silently swallowing a real alarm as a "duplicate" is the worse error.
DEDUP_WINDOW_S = 24 * 3600.0

# Device clocks drift and some reset to 1970. The ``raised`` hop uses the device's time only
# when it is plausible; otherwise the time of receipt. The raw value stays on the alarm.
MAX_CLOCK_SKEW_S = 24 * 3600.0


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
    """All alarms and the dedupe index. Not thread-safe: one owner drives it."""

    def __init__(self, directory: Directory | None = None) -> None:
        self.directory = directory or Directory()
        self.alarms: dict[str, Alarm] = {}
        self._by_ref: dict[tuple[str, str], str] = {}

    # -- queries ---------------------------------------------------------------------------

    def find(self, device_id: str, ref: str) -> Alarm | None:
        """The alarm a (device, ref) pair was stored as, if any."""
        alarm_id = self._by_ref.get((device_id, ref))
        return None if alarm_id is None else self.alarms[alarm_id]

    def open_alarms(self) -> list[Alarm]:
        """Open alarms, most urgent first, then oldest first."""
        found = [a for a in self.alarms.values() if a.state == "open"]
        found.sort(key=lambda a: (a.priority, a.hops[0].at))
        return found

    # -- decisions -------------------------------------------------------------------------

    def decide(self, event: Event, now: float) -> Decision:
        """Decide what ``event`` means at time ``now``. Pure: the state is not changed."""
        if isinstance(event, AlarmReceived):
            return self._decide_alarm(event, now)
        if isinstance(event, TechnicalCleared):
            return self._decide_cleared(event, now)
        alarm = self.alarms.get(event.alarm_id)
        if alarm is None:
            return Decision(refusal=Refusal(404, f"no alarm {event.alarm_id!r}"))
        if not self.directory.may_handle(event.staff_id, alarm.team_id):
            return Decision(refusal=Refusal(403, "alarm belongs to another team"))
        if isinstance(event, ReceiptConfirmed):
            return self._decide_receipt(alarm, event.staff_id, now)
        if isinstance(event, AcceptRequested):
            return self._decide_accept(alarm, event.staff_id, now)
        if isinstance(event, OnSiteRequested):
            return self._decide_on_site(alarm, event.staff_id, now)
        return self._decide_close(alarm, event, now)

    def _decide_alarm(self, event: AlarmReceived, now: float) -> Decision:
        existing = self.find(event.device_id, event.ref)
        if existing is not None and (
            existing.state == "open" or now - existing.hops[0].at < DEDUP_WINDOW_S
        ):
            # A resend: the device did not get (or lost) our ack. Ack again, store nothing.
            return Decision(actions=(AckDevice(event.device_id, event.ref, "stored"),))
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
        raised_at = event.device_ts_ms / 1000.0
        if not now - MAX_CLOCK_SKEW_S <= raised_at <= now:
            raised_at = now
        targets = tuple(sorted(self._targets(event, team_id)))
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
            ),
            HopAdded(alarm_id, Hop.RAISED, raised_at, event.device_id),
            HopAdded(alarm_id, Hop.STORED, now, "gateway"),
            HopAdded(alarm_id, Hop.ROUTED, now, f"team:{team_id or '*'}", targets=targets),
        )
        return Decision(
            records=records,
            actions=(
                AckDevice(event.device_id, event.ref, "stored"),
                Notify(alarm_id, frozenset(targets)),
            ),
        )

    def _targets(self, event: AlarmReceived, team_id: str | None) -> frozenset[str]:
        if event.type is not AlarmType.TECHNICAL:
            return self.directory.on_duty(team_id)
        targets = self.directory.technicians()
        if self.directory.device_types.get(event.device_id) in SAFETY_DEVICE_TYPES:
            # The person is unprotected while their alarm is down: the care team must know.
            targets |= self.directory.on_duty(team_id)
        return targets

    def _decide_cleared(self, event: TechnicalCleared, now: float) -> Decision:
        alarm = self.find(event.device_id, event.ref)
        if alarm is None or alarm.state == "closed":
            return Decision()
        record = HopAdded(
            alarm.id, Hop.CLOSED, now, "gateway", cause="återställd / restored", note=event.note
        )
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
        cause = event.cause.strip()
        if not cause:
            return Decision(refusal=Refusal(422, "a cause is required to close an alarm"))
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
            return
        alarm = self.alarms[record.alarm_id]
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
        self.alarms[record.alarm_id] = dataclasses.replace(alarm, **changes)  # type: ignore[arg-type]

    def apply_all(self, records: tuple[Record, ...] | list[Record]) -> None:
        """Apply records in order."""
        for record in records:
            self.apply(record)
