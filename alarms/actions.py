"""Outputs of the core that the gateway carries out once the records are durable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias


@dataclass(frozen=True, slots=True)
class AckDevice:
    """Answer a device on its ``ack`` topic. ``stored`` only ever follows a durable commit."""

    device_id: str
    ref: str
    status: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Notify:
    """Push the alarm's current state to these staff members' clients."""

    alarm_id: str
    staff_ids: frozenset[str]
    # An escalation or reminder: clients should alert loudly (sound, high-priority push)
    # even if they showed this alarm before.
    urgent: bool = False


@dataclass(frozen=True, slots=True)
class NotifyCentre:
    """Send the alarm to the external alarm centre (larmcentral) through its adapter.

    ``attempt`` counts deliveries of this alarm from 1. The adapter answers with a
    ``CentreConfirmed`` event carrying the same alarm id; until then the core asks again
    with a higher ``attempt`` (the receiving side must treat the alarm id as the key).
    """

    alarm_id: str
    attempt: int


Action: TypeAlias = AckDevice | Notify | NotifyCentre
