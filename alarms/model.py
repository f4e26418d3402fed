"""The alarm as the core sees it: an identity plus its chain of hops."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum
from operator import attrgetter
from typing import Any


class Hop(StrEnum):
    """The links of the alarm chain, in the only order they may occur."""

    RAISED = "raised"
    STORED = "stored"
    ROUTED = "routed"
    DELIVERED = "delivered"
    ACCEPTED = "accepted"
    ON_SITE = "on_site"
    CLOSED = "closed"


HOP_ORDER: dict[Hop, int] = {hop: index for index, hop in enumerate(Hop)}


class AlarmType(StrEnum):
    """Alarm types of the MQTT contract (docs/protocol.md)."""

    MANUAL = "manual"
    FALL = "fall"
    SMOKE = "smoke"
    WATER = "water"
    BED_EXIT = "bed_exit"
    DOOR = "door"
    INACTIVITY = "inactivity"
    TEMPERATURE = "temperature"
    TEST = "test"
    # A pill dispenser's alarm (pill not taken, dispenser fault reported as an alarm).
    MEDICATION = "medication"
    # A link or device fault (tekniskt larm): offline, battery, failed test, broker down.
    TECHNICAL = "technical"


# Priority 1 is the most urgent. Fire and water put the home itself at risk; a person who
# pressed the button or fell needs help now; sensor-derived risks come next; a test alarm
# proves the chain and must not disturb anyone.
PRIORITY: dict[AlarmType, int] = {
    AlarmType.SMOKE: 1,
    AlarmType.WATER: 1,
    AlarmType.MANUAL: 2,
    AlarmType.FALL: 2,
    AlarmType.BED_EXIT: 3,
    AlarmType.DOOR: 3,
    AlarmType.INACTIVITY: 3,
    AlarmType.TEMPERATURE: 3,
    AlarmType.MEDICATION: 3,
    AlarmType.TECHNICAL: 4,
    AlarmType.TEST: 9,
}

# Device types whose silence leaves a person unprotected: their technical alarms go to the
# care team as well as to technicians.
SAFETY_DEVICE_TYPES = frozenset({"alarm_unit", "button", "base_unit", "fall"})

# The device id under which the gateway raises technical alarms about its own links.
GATEWAY_DEVICE = "gateway"

# Kinds of technical alarm (the ref's prefix before the first dot) that go to technicians
# only, whatever the device: a failed test alarm (provlarm, ``test.``) says the chain or the
# test set-up needs a technician. Care staff could do nothing about it, and a red card they
# cannot act on teaches them to ignore red cards. A device that really went silent raises
# its own ``offline.`` alarm, which does reach the care team.
TECHNICIAN_ONLY_KINDS = frozenset({"test"})


def technical_kind(ref: str) -> str:
    """The kind of a technical alarm from its ref: ``offline.1712`` -> ``offline``."""
    return ref.split(".", 1)[0]


@dataclass(frozen=True, slots=True)
class HopEntry:
    """One link of the chain: which hop, when (epoch seconds) and by whom."""

    hop: Hop
    at: float
    actor: str


class EscalationKind(StrEnum):
    """What an escalation entry did. Entries sit beside the hops, never between them."""

    # Re-alert the whole team with raised urgency (ladder step).
    TEAM = "team"
    # Alert the next level: night patrol or a neighbouring team, plus the team lead.
    NEXT_LEVEL = "next_level"
    # Hand the alarm to the external alarm centre (one entry per delivery attempt).
    CENTRE = "centre"
    # Accepted but nobody on site within the presence deadline: tell the team lead.
    LEAD = "lead"
    # Nothing new to escalate to: remind everyone who already has the alarm.
    REMINDER = "reminder"
    # No phone confirmed receipt in time: text the staff on duty (SMS fallback). Beside the
    # ladder like a reminder: it keeps the level, and the next rung follows as usual (or
    # sooner, when the SMS is not delivered: ``alarms.escalation``).
    SMS = "sms"


# Kinds that climb the ladder; the others keep the level where it is.
LADDER_KINDS = frozenset({EscalationKind.TEAM, EscalationKind.NEXT_LEVEL, EscalationKind.CENTRE})


@dataclass(frozen=True, slots=True)
class EscalationEntry:
    """One escalation: what, at which level, when, whom it alerted, which centre attempt."""

    kind: EscalationKind
    level: int
    at: float
    targets: frozenset[str] = frozenset()
    attempt: int = 0


class HandoverKind(StrEnum):
    """How ownership changed after the first ``accepted`` hop."""

    FORWARDED = "forwarded"  # the owner passed it to a named colleague (vidarebefordra)
    TAKEN_OVER = "taken_over"  # a colleague took it from the owner
    HANDED_BACK = "handed_back"  # the owner gave it back to the team: nobody owns it
    ACCEPTED = "accepted"  # someone accepted it again after it was handed back


@dataclass(frozen=True, slots=True)
class Handover:
    """One change of owner: how, when, who did it and who owns it now (None: nobody)."""

    kind: HandoverKind
    at: float
    actor: str
    owner: str | None


class PositionSource(StrEnum):
    """Where a position came from: the SCAIP ``<lge>`` parts or the MQTT contract."""

    SCAIP_GEO = "scaip-geo"  # <lge><geo>: WGS 84 latitude,longitude as the device sent it
    SCAIP_GGA = "scaip-gga"  # <lge><gga>: an NMEA GGA sentence (GNSS fix with HDOP)
    DEVICE = "device"  # the MQTT contract's ``position`` object


@dataclass(frozen=True, slots=True)
class Position:
    """Where a mobile alarm is: WGS 84 degrees, an accuracy radius and when it was fixed.

    ``accuracy_m`` is None when the device did not say; ``fixed_at`` (epoch seconds) is the
    device's time of the fix, None when it sent none (then only the time of receipt is known).
    """

    lat: float
    lon: float
    accuracy_m: float | None
    fixed_at: float | None
    source: PositionSource

    def same_fix(self, other: Position | None) -> bool:
        """Whether ``other`` is the same fix (a resend), not a new position."""
        return other is not None and (self.lat, self.lon, self.fixed_at) == (
            other.lat,
            other.lon,
            other.fixed_at,
        )


@dataclass(frozen=True, slots=True)
class PositionEntry:
    """A position of an open alarm and when the gateway received it."""

    position: Position
    received_at: float
    device_id: str


# Positions an alarm keeps in memory and shows (the journal keeps every one). A mobile alarm
# reports every minute or so; the last hour of a person's track is what staff can act on.
MAX_POSITIONS = 60


class DeviceStatus(StrEnum):
    """A status a device reported about an alarm in progress (not an alarm itself)."""

    RESET = "reset"  # reset at the unit (SCAIP RE, stc 0092/0093)
    CANCELLED = "cancelled"  # cancelled at the unit (stc 0019)
    COMPLETE = "complete"  # intervention complete registered at the unit (stc 0111)
    PRESENCE = "presence"  # staff registered presence at the unit (stc 0088)


@dataclass(frozen=True, slots=True)
class DeviceNote:
    """A device status noted on an open alarm: what, when, from which device and message."""

    status: DeviceStatus
    at: float
    device_id: str
    ref: str
    text: str | None = None
class NotificationStatus(StrEnum):
    """How far one message on an outside channel (SMS) got. Only ever moves forward."""

    QUEUED = "queued"  # decided and journaled: the outbox entry the sender works from
    SENT = "sent"  # the SMS gateway took it (Kannel answered 202)
    DELIVERED = "delivered"  # the operator reported it delivered to the phone (DLR)
    FAILED = "failed"  # refused, unreachable, or reported not delivered
    CANCELLED = "cancelled"  # not sent: the alarm was accepted or closed meanwhile


# A status may follow another only if it ranks higher: a late or repeated report (a "sent"
# after the delivery report already came) changes nothing.
NOTIFICATION_RANK: dict[NotificationStatus, int] = {
    NotificationStatus.QUEUED: 0,
    NotificationStatus.SENT: 1,
    NotificationStatus.DELIVERED: 2,
    NotificationStatus.FAILED: 2,
    NotificationStatus.CANCELLED: 2,
}

# The one outside channel so far. A notification record names its channel so that others
# (a voice call) can join without a new record kind.
SMS_CHANNEL = "sms"


@dataclass(frozen=True, slots=True)
class NotificationEntry:
    """One status of one message to one staff member on an outside channel.

    ``attempt`` is the SMS round (the ``sms`` escalation entry with the same attempt);
    ``code`` is the reply code the message carries (on ``queued`` entries).
    """

    channel: str
    message_id: str
    staff_id: str
    status: NotificationStatus
    at: float
    attempt: int = 1
    code: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class AttachedRef:
    """A further alarm from the same recipient, attached to the open alarm (flapping)."""

    device_id: str
    ref: str
    type: AlarmType
    at: float


@dataclass(frozen=True, slots=True)
class Alarm:
    """An alarm and its chain. ``state`` and ``owner`` are derived from the hops."""

    id: str
    device_id: str
    ref: str
    type: AlarmType
    priority: int
    recipient_id: str | None
    team_id: str | None
    device_ts_ms: int
    battery: float | None
    hops: tuple[HopEntry, ...]
    targets: frozenset[str] = frozenset()
    detail: str | None = None
    cause: str | None = None
    note: str | None = None
    escalations: tuple[EscalationEntry, ...] = ()
    handovers: tuple[Handover, ...] = ()
    attached: tuple[AttachedRef, ...] = ()
    centre_confirmed_at: float | None = None
    centre_reference: str | None = None
    # The latest positions of a mobile alarm, oldest first (at most MAX_POSITIONS).
    positions: tuple[PositionEntry, ...] = ()
    device_notes: tuple[DeviceNote, ...] = ()

    @property
    def position(self) -> PositionEntry | None:
        """The latest position, if the alarm has one."""
        return self.positions[-1] if self.positions else None

    def from_device(self, device_id: str) -> bool:
        """Whether ``device_id`` raised this alarm or a further alarm attached to it."""
        return self.device_id == device_id or any(
            ref.device_id == device_id for ref in self.attached
        )
    notifications: tuple[NotificationEntry, ...] = ()

    @property
    def last_hop(self) -> Hop:
        """The furthest hop reached."""
        return self.hops[-1].hop

    @property
    def state(self) -> str:
        """``open`` until the alarm is closed, then ``closed``."""
        return "closed" if self.last_hop is Hop.CLOSED else "open"

    @property
    def owner(self) -> str | None:
        """Who has the alarm now: the last handover's owner, else whoever accepted it."""
        if self.handovers:
            return self.handovers[-1].owner
        for entry in self.hops:
            if entry.hop is Hop.ACCEPTED:
                return entry.actor
        return None

    def reached(self, hop: Hop) -> bool:
        """Whether the chain has reached ``hop`` (or gone past it)."""
        return HOP_ORDER[self.last_hop] >= HOP_ORDER[hop]

    def at(self, hop: Hop) -> float | None:
        """When ``hop`` was recorded, if it was."""
        for entry in self.hops:
            if entry.hop is hop:
                return entry.at
        return None

    @property
    def level(self) -> int:
        """The escalation level reached: 0 until the first ladder step. Never decreases."""
        return self.escalations[-1].level if self.escalations else 0

    @property
    def owned_since(self) -> float | None:
        """When the current ownership began (unowned to owned); None while nobody owns it."""
        if self.owner is None:
            return None
        since = self.at(Hop.ACCEPTED)
        for handover in self.handovers:
            if handover.kind is HandoverKind.ACCEPTED:
                since = handover.at
        return since

    @property
    def centre_attempts(self) -> int:
        """How many times the alarm was sent to the external alarm centre."""
        return sum(
            1 for e in self.escalations if e.kind is EscalationKind.CENTRE and e.attempt > 0
        )

    @property
    def reply_code(self) -> str | None:
        """The short code staff reply with (assigned with the first SMS), if any."""
        for entry in self.notifications:
            if entry.code is not None:
                return entry.code
        return None

    def messages(self, channel: str = SMS_CHANNEL) -> dict[str, NotificationEntry]:
        """Each message on ``channel`` by id, at its latest status (first entry's order)."""
        latest: dict[str, NotificationEntry] = {}
        for entry in self.notifications:
            if entry.channel != channel:
                continue
            current = latest.get(entry.message_id)
            if current is None or (
                NOTIFICATION_RANK[entry.status] > NOTIFICATION_RANK[current.status]
            ):
                latest[entry.message_id] = entry
        return latest


_ALARM_FIELDS = tuple(f.name for f in fields(Alarm))
_ALARM_VALUES = attrgetter(*_ALARM_FIELDS)
_ALARM_INDEX = {name: index for index, name in enumerate(_ALARM_FIELDS)}


def changed(alarm: Alarm, **changes: Any) -> Alarm:
    """``dataclasses.replace`` for an alarm, at half its cost.

    Every journal record applied replaces its alarm (several per alarm, on replay and live);
    ``replace`` walks the fields' metadata each time, here the values are read in one call
    and the alarm is built positionally. An unknown field is a ``KeyError``.
    """
    values = list(_ALARM_VALUES(alarm))
    for name, value in changes.items():
        values[_ALARM_INDEX[name]] = value
    return Alarm(*values)
