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


Action: TypeAlias = AckDevice | Notify
