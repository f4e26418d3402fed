"""Inputs to the core. Built at the edge from validated input, never from raw dicts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from alarms.model import AlarmType, NotificationStatus


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
    """A test alarm (provlarm) passed the whole chain: the gateway closes it itself."""

    __test__ = False  # not a pytest test class, despite the name

    alarm_id: str
    note: str


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
Event: TypeAlias = (
    AlarmReceived
    | TechnicalCleared
    | TestCompleted
    | StaffEvent
    | CentreConfirmed
    | NotificationReported
    | Tick
)
