"""Journal records: the durable facts from which all alarm state is derived.

Records are appended in one total order. ``to_json``/``from_json`` are the only encoding;
the journal implementations store the JSON text and never interpret it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TypeAlias

from alarms.model import (
    AlarmType,
    DeviceStatus,
    EscalationKind,
    HandoverKind,
    Hop,
    NotificationStatus,
    Position,
    PositionSource,
)


@dataclass(frozen=True, slots=True)
class AlarmOpened:
    """A new alarm, written in the same transaction as its ``raised`` and ``stored`` hops."""

    alarm_id: str
    device_id: str
    ref: str
    type: AlarmType
    priority: int
    recipient_id: str | None
    team_id: str | None
    device_ts_ms: int
    battery: float | None
    detail: str | None = None
    # The message's content key (``alarms.dedupe``); None in records written before it.
    content: str | None = None


@dataclass(frozen=True, slots=True)
class HopAdded:
    """One hop of an alarm's chain."""

    alarm_id: str
    hop: Hop
    at: float
    actor: str
    targets: tuple[str, ...] = ()
    cause: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Escalated:
    """An escalation entry: beside the chain of hops, never one of them.

    ``attempt`` > 0 marks a delivery attempt to the alarm centre (kind CENTRE).
    """

    alarm_id: str
    kind: EscalationKind
    level: int
    at: float
    targets: tuple[str, ...] = ()
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class CentreConfirmation:
    """The alarm centre confirmed delivery attempt ``attempt``: retries stop."""

    alarm_id: str
    at: float
    attempt: int
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class OwnerChanged:
    """Ownership moved after the first acceptance: forwarded, taken over, handed back."""

    alarm_id: str
    kind: HandoverKind
    at: float
    actor: str
    owner: str | None


@dataclass(frozen=True, slots=True)
class RefAttached:
    """A further alarm from the same recipient, attached to their open alarm."""

    alarm_id: str
    device_id: str
    ref: str
    type: AlarmType
    at: float
    content: str | None = None


@dataclass(frozen=True, slots=True)
class PositionAdded:
    """A position of a (mobile) alarm, from the message that opened it or a later one."""

    alarm_id: str
    at: float
    device_id: str
    position: Position


@dataclass(frozen=True, slots=True)
class DeviceNoted:
    """A status the device reported about the alarm (reset, presence, ...), beside the chain."""

    alarm_id: str
    status: DeviceStatus
    at: float
    device_id: str
    ref: str
    text: str | None = None


@dataclass(frozen=True, slots=True)
class NotificationRecorded:
    """One status of one message on an outside channel (SMS): queued, sent, delivered, failed.

    Beside the hops, like escalations: the chain shows what was tried on which channel and
    what the operator reported, and the ``queued`` entries are the outbox the SMS sender
    works from (a restart re-sends what was queued but never handed over).
    """

    alarm_id: str
    channel: str
    message_id: str
    staff_id: str
    status: NotificationStatus
    at: float
    attempt: int = 1
    code: str | None = None
    detail: str | None = None


Record: TypeAlias = (
    AlarmOpened
    | HopAdded
    | Escalated
    | CentreConfirmation
    | OwnerChanged
    | RefAttached
    | PositionAdded
    | DeviceNoted
    | NotificationRecorded
)


class RecordError(ValueError):
    """A journal row that cannot be decoded: the journal is corrupt or from a newer version."""


# One encoder for every record: ``json.dumps`` with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def to_json(record: Record) -> str:
    """Encode a record for the journal."""
    if isinstance(record, AlarmOpened):
        body: dict[str, object] = {
            "kind": "opened",
            "alarm_id": record.alarm_id,
            "device_id": record.device_id,
            "ref": record.ref,
            "type": record.type.value,
            "priority": record.priority,
            "recipient_id": record.recipient_id,
            "team_id": record.team_id,
            "device_ts_ms": record.device_ts_ms,
            "battery": record.battery,
        }
        if record.detail is not None:
            body["detail"] = record.detail
        if record.content is not None:
            body["content"] = record.content
    elif isinstance(record, PositionAdded):
        body = {
            "kind": "position",
            "alarm_id": record.alarm_id,
            "at": record.at,
            "device_id": record.device_id,
            "position": _position_json(record.position),
        }
    elif isinstance(record, DeviceNoted):
        body = {
            "kind": "device_noted",
            "alarm_id": record.alarm_id,
            "status": record.status.value,
            "at": record.at,
            "device_id": record.device_id,
            "ref": record.ref,
        }
        if record.text is not None:
            body["text"] = record.text
    elif isinstance(record, Escalated):
        body = {
            "kind": "escalated",
            "alarm_id": record.alarm_id,
            "escalation": record.kind.value,
            "level": record.level,
            "at": record.at,
        }
        if record.targets:
            body["targets"] = list(record.targets)
        if record.attempt:
            body["attempt"] = record.attempt
    elif isinstance(record, CentreConfirmation):
        body = {
            "kind": "centre_confirmed",
            "alarm_id": record.alarm_id,
            "at": record.at,
            "attempt": record.attempt,
        }
        if record.reference is not None:
            body["reference"] = record.reference
    elif isinstance(record, OwnerChanged):
        body = {
            "kind": "owner",
            "alarm_id": record.alarm_id,
            "handover": record.kind.value,
            "at": record.at,
            "actor": record.actor,
            "owner": record.owner,
        }
    elif isinstance(record, NotificationRecorded):
        body = {
            "kind": "notification",
            "alarm_id": record.alarm_id,
            "channel": record.channel,
            "message_id": record.message_id,
            "staff_id": record.staff_id,
            "status": record.status.value,
            "at": record.at,
            "attempt": record.attempt,
        }
        if record.code is not None:
            body["code"] = record.code
        if record.detail is not None:
            body["detail"] = record.detail
    elif isinstance(record, RefAttached):
        body = {
            "kind": "attached",
            "alarm_id": record.alarm_id,
            "device_id": record.device_id,
            "ref": record.ref,
            "type": record.type.value,
            "at": record.at,
        }
        if record.content is not None:
            body["content"] = record.content
    else:
        body = {
            "kind": "hop",
            "alarm_id": record.alarm_id,
            "hop": record.hop.value,
            "at": record.at,
            "actor": record.actor,
        }
        if record.targets:
            body["targets"] = list(record.targets)
        if record.cause is not None:
            body["cause"] = record.cause
        if record.note is not None:
            body["note"] = record.note
    return _ENCODER.encode(body)


def from_json(text: str) -> Record:
    """Decode a journal row written by ``to_json``."""
    try:
        body = json.loads(text)
        kind = body["kind"]
        if kind == "opened":
            battery = body.get("battery")
            return AlarmOpened(
                alarm_id=str(body["alarm_id"]),
                device_id=str(body["device_id"]),
                ref=str(body["ref"]),
                type=AlarmType(body["type"]),
                priority=int(body["priority"]),
                recipient_id=body.get("recipient_id"),
                team_id=body.get("team_id"),
                device_ts_ms=int(body["device_ts_ms"]),
                battery=None if battery is None else float(battery),
                detail=body.get("detail"),
                content=_optional_str(body.get("content")),
            )
        if kind == "hop":
            return HopAdded(
                alarm_id=str(body["alarm_id"]),
                hop=Hop(body["hop"]),
                at=float(body["at"]),
                actor=str(body["actor"]),
                targets=tuple(str(t) for t in body.get("targets", ())),
                cause=body.get("cause"),
                note=body.get("note"),
            )
        if kind == "escalated":
            return Escalated(
                alarm_id=str(body["alarm_id"]),
                kind=EscalationKind(body["escalation"]),
                level=int(body["level"]),
                at=float(body["at"]),
                targets=tuple(str(t) for t in body.get("targets", ())),
                attempt=int(body.get("attempt", 0)),
            )
        if kind == "centre_confirmed":
            reference = body.get("reference")
            return CentreConfirmation(
                alarm_id=str(body["alarm_id"]),
                at=float(body["at"]),
                attempt=int(body["attempt"]),
                reference=None if reference is None else str(reference),
            )
        if kind == "owner":
            owner = body["owner"]
            return OwnerChanged(
                alarm_id=str(body["alarm_id"]),
                kind=HandoverKind(body["handover"]),
                at=float(body["at"]),
                actor=str(body["actor"]),
                owner=None if owner is None else str(owner),
            )
        if kind == "notification":
            code = body.get("code")
            detail = body.get("detail")
            return NotificationRecorded(
                alarm_id=str(body["alarm_id"]),
                channel=str(body["channel"]),
                message_id=str(body["message_id"]),
                staff_id=str(body["staff_id"]),
                status=NotificationStatus(body["status"]),
                at=float(body["at"]),
                attempt=int(body.get("attempt", 1)),
                code=None if code is None else str(code),
                detail=None if detail is None else str(detail),
            )
        if kind == "attached":
            return RefAttached(
                alarm_id=str(body["alarm_id"]),
                device_id=str(body["device_id"]),
                ref=str(body["ref"]),
                type=AlarmType(body["type"]),
                at=float(body["at"]),
                content=_optional_str(body.get("content")),
            )
        if kind == "position":
            return PositionAdded(
                alarm_id=str(body["alarm_id"]),
                at=float(body["at"]),
                device_id=str(body["device_id"]),
                position=_position_from(body["position"]),
            )
        if kind == "device_noted":
            return DeviceNoted(
                alarm_id=str(body["alarm_id"]),
                status=DeviceStatus(body["status"]),
                at=float(body["at"]),
                device_id=str(body["device_id"]),
                ref=str(body["ref"]),
                text=_optional_str(body.get("text")),
            )
    except (ValueError, KeyError, TypeError) as exc:
        raise RecordError(f"undecodable journal record: {exc}") from None
    raise RecordError(f"unknown journal record kind {kind!r}")


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _optional_float(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"not a number: {value!r}")
    return float(value)


def _position_json(position: Position) -> dict[str, object]:
    body: dict[str, object] = {
        "lat": position.lat,
        "lon": position.lon,
        "source": position.source.value,
    }
    if position.accuracy_m is not None:
        body["accuracy_m"] = position.accuracy_m
    if position.fixed_at is not None:
        body["fixed_at"] = position.fixed_at
    return body


def _position_from(body: object) -> Position:
    if not isinstance(body, dict):
        raise TypeError("position must be an object")
    return Position(
        lat=float(body["lat"]),
        lon=float(body["lon"]),
        accuracy_m=_optional_float(body.get("accuracy_m")),
        fixed_at=_optional_float(body.get("fixed_at")),
        source=PositionSource(body["source"]),
    )
