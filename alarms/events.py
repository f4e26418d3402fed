"""Inputs to the core. Built at the edge from validated input, never from raw dicts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from alarms.model import AlarmType, DeviceStatus, NotificationStatus, Position


@dataclass(frozen=True, slots=True)
class AlarmReceived:
    """A device raised an alarm. ``new_id`` is the id to use if this is a new alarm."""

    device_id: str
    ref: str
    type: AlarmType
    device_ts_ms: int
    new_id: str
    battery: float | None = None
    # What a technical alarm is about ("offline since 10:02", "broker unreachable").
    detail: str | None = None
    # What makes a resend the same message (``alarms.dedupe``). None: the type and device
    # time (the MQTT and serial contracts), or the ref alone for technical alarms, whose refs
    # the gateway derives from the fault itself.
    content: str | None = None
    # Where a mobile alarm is, when the device said.
    position: Position | None = None


@dataclass(frozen=True, slots=True)
class StatusReported:
    """A device reported a status about the alarm in progress: noted on its open alarms.

    ``PRESENCE`` is the ``on_site`` hop of an alarm someone has accepted; every other status
    (reset, cancelled, intervention complete) is noted beside the chain and shown to staff.
    None of them opens an alarm, and none closes one: closing takes a person and a cause.
    """

    device_id: str
    ref: str
    status: DeviceStatus
    text: str | None = None


@dataclass(frozen=True, slots=True)
class PositionReported:
    """A device said where it is, in a message that is not an alarm of its own."""

    device_id: str
    ref: str
    position: Position


@dataclass(frozen=True, slots=True)
class FaultReported:
    """A device reported a fault (battery low, power failure): a technical alarm.

    ``ref`` names this report; ``kind`` the fault (a prefix of the refs of its technical
    alarms), so that a repeated report while one is open adds nothing and a restore clears
    every open one of the same kind.
    """

    device_id: str
    ref: str
    kind: str
    detail: str
    device_ts_ms: int
    new_id: str


@dataclass(frozen=True, slots=True)
class FaultCleared:
    """A device reported a fault gone (battery replaced, power back): close its alarms."""

    device_id: str
    kind: str
    note: str


@dataclass(frozen=True, slots=True)
class ReceiptConfirmed:
    """A staff client confirmed it has shown the alarm (the ``delivered`` hop)."""

    alarm_id: str
    staff_id: str


@dataclass(frozen=True, slots=True)
class AcceptRequested:
    """A staff member takes the alarm."""

    alarm_id: str
    staff_id: str


@dataclass(frozen=True, slots=True)
class OnSiteRequested:
    """The owner registers presence with the recipient."""

    alarm_id: str
    staff_id: str


@dataclass(frozen=True, slots=True)
class CloseRequested:
    """The owner closes the alarm with a cause."""

    alarm_id: str
    staff_id: str
    cause: str
    note: str | None = None


@dataclass(frozen=True, slots=True)
class TechnicalCleared:
    """The fault behind a technical alarm is gone: close it with what happened."""

    device_id: str
    ref: str
    note: str


@dataclass(frozen=True, slots=True)
class TestCompleted:
    """A test alarm (provlarm) is judged: the gateway closes it itself.

    ``passed`` False: it did not pass the chain in time; ``note`` says where and why.
    """

    __test__ = False  # not a pytest test class, despite the name

    alarm_id: str
    note: str
    passed: bool = True


@dataclass(frozen=True, slots=True)
class ForwardRequested:
    """The owner passes the alarm to a named colleague (vidarebefordra)."""

    alarm_id: str
    staff_id: str
    to_staff_id: str


@dataclass(frozen=True, slots=True)
class HandBackRequested:
    """The owner gives the alarm back to the team: nobody owns it and escalation resumes."""

    alarm_id: str
    staff_id: str


@dataclass(frozen=True, slots=True)
class TakeOverRequested:
    """A colleague (or the team lead) takes the alarm from its owner."""

    alarm_id: str
    staff_id: str


@dataclass(frozen=True, slots=True)
class CentreConfirmed:
    """The external alarm centre confirmed it received the alarm (the adapter's receipt)."""

    alarm_id: str
    attempt: int
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class NotificationReported:
    """An outside channel reported on one message: the SMS gateway took it, the operator
    delivered it, or it failed (``detail`` says why). Built from the sender's result and
    from delivery reports; the core ignores a status that does not move the message on."""

    alarm_id: str
    channel: str
    message_id: str
    status: NotificationStatus
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Tick:
    """The clock: do whatever every deadline up to ``now`` calls for.

    The gateway feeds one when ``AlarmCore.next_deadline()`` has passed (and may feed one
    at start, after replay, to catch up on deadlines that passed while it was down).
    """


StaffEvent: TypeAlias = (
    ReceiptConfirmed
    | AcceptRequested
    | OnSiteRequested
    | CloseRequested
    | ForwardRequested
    | HandBackRequested
    | TakeOverRequested
)
DeviceEvent: TypeAlias = StatusReported | PositionReported | FaultReported | FaultCleared
Event: TypeAlias = (
    AlarmReceived
    | TechnicalCleared
    | TestCompleted
    | StaffEvent
    | CentreConfirmed
    | Tick
    | DeviceEvent
    | NotificationReported
)


# -- presence: observed, never journaled -------------------------------------------------------
# Who is connected decides routing now, but a replayed "connected" after a restart would be a
# lie (every client reconnects anyway), and routing journals its result. So presence is fed to
# ``AlarmCore.observe`` rather than ``decide``.


@dataclass(frozen=True, slots=True)
class StaffConnected:
    """A staff client connected to this gateway (one event per connection)."""

    staff_id: str


@dataclass(frozen=True, slots=True)
class StaffDisconnected:
    """A staff client that was reported connected went away."""

    staff_id: str


@dataclass(frozen=True, slots=True)
class RemotePresence:
    """Staff connected to the other gateways of a cluster, as last read from the database."""

    staff_ids: frozenset[str]


Presence: TypeAlias = StaffConnected | StaffDisconnected | RemotePresence
