"""JSON shapes of the external contract (DESIGN.md §3), built from core and org objects."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from alarms.model import Alarm
from gateway.org import OrgStore


def iso(ts: float) -> str:
    """Epoch seconds as an ISO-8601 UTC timestamp with milliseconds."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def alarm_json(alarm: Alarm, org: OrgStore | None = None) -> dict[str, Any]:
    """An alarm as the API and the WebSocket show it."""
    body: dict[str, Any] = {
        "id": alarm.id,
        "device_id": alarm.device_id,
        "ref": alarm.ref,
        "type": alarm.type.value,
        "priority": alarm.priority,
        "state": alarm.state,
        "stage": alarm.last_hop.value,
        "test": alarm.type.value == "test",
        "recipient_id": alarm.recipient_id,
        "team_id": alarm.team_id,
        "owner": alarm.owner,
        "battery": alarm.battery,
        "device_ts": alarm.device_ts_ms,
        "raised_at": iso(alarm.hops[0].at),
        "detail": alarm.detail,
        "cause": alarm.cause,
        "note": alarm.note,
        "level": alarm.level,
        "escalations": [
            {"kind": e.kind.value, "level": e.level, "at": iso(e.at),
             "targets": sorted(e.targets), "attempt": e.attempt}
            for e in alarm.escalations
        ],
        "attached": [
            {"device_id": r.device_id, "ref": r.ref, "type": r.type.value, "at": iso(r.at)}
            for r in alarm.attached
        ],
        "centre_confirmed_at": (
            None if alarm.centre_confirmed_at is None else iso(alarm.centre_confirmed_at)
        ),
        "centre_reference": alarm.centre_reference,
        # The SMS fallback (docs/sms.md): the reply code, and every status of every message
        # per channel, in order (queued, sent, delivered / failed). Never phone numbers.
        "reply_code": alarm.reply_code,
        "notifications": [
            {"channel": n.channel, "message_id": n.message_id, "staff_id": n.staff_id,
             "status": n.status.value, "at": iso(n.at), "attempt": n.attempt,
             "detail": n.detail}
            for n in alarm.notifications
        ],
        "hops": [
            {"hop": entry.hop.value, "at": iso(entry.at), "actor": entry.actor}
            for entry in alarm.hops
        ],
    }
    if org is not None and alarm.recipient_id is not None:
        recipient = org.recipients.get(alarm.recipient_id)
        if recipient is not None:
            body["recipient"] = {
                "id": recipient.id,
                "name": recipient.name,
                "address": recipient.address,
                "entry_info": recipient.entry_info,
                "action_plan": recipient.action_plan,
            }
    return body


def for_role(role: str, body: dict[str, Any]) -> dict[str, Any]:
    """An alarm's JSON as a role may see it: technicians get the recipient's name and address
    only (to find the device), never the entry information, action plan or close note."""
    if role != "technician":
        return body
    cut = dict(body)
    recipient = cut.get("recipient")
    if isinstance(recipient, dict):
        cut["recipient"] = {k: recipient[k] for k in ("id", "name", "address") if k in recipient}
    if "note" in cut:
        cut["note"] = None
    return cut
