"""JSON shapes of the external contract (DESIGN.md §3), built from core and org objects."""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime
from typing import Any

from alarms.model import Alarm, PositionEntry
from gateway.org import OrgStore

# Where a position's map link points: OpenStreetMap needs no key and shows a marker at the
# point; the geo: URI (RFC 5870) lets a phone open its own maps app instead.
MAP_URL = "https://www.openstreetmap.org/?mlat={lat:.6f}&mlon={lon:.6f}#map=17/{lat:.6f}/{lon:.6f}"


def position_json(entry: PositionEntry) -> dict[str, Any]:
    """A position as staff see it: coordinates, accuracy, when, and links to a map."""
    fix = entry.position
    geo = f"geo:{fix.lat:.6f},{fix.lon:.6f}"
    if fix.accuracy_m is not None:
        geo += f";u={fix.accuracy_m:g}"
    return {
        "lat": fix.lat,
        "lon": fix.lon,
        "accuracy_m": fix.accuracy_m,
        # When the device fixed it; when it did not say, when the gateway received it.
        "at": iso(fix.fixed_at if fix.fixed_at is not None else entry.received_at),
        "fixed_at": None if fix.fixed_at is None else iso(fix.fixed_at),
        "received_at": iso(entry.received_at),
        "source": fix.source.value,
        "device_id": entry.device_id,
        "geo_uri": geo,
        "map_url": MAP_URL.format(lat=fix.lat, lon=fix.lon),
    }


def iso(ts: float) -> str:
    """Epoch seconds as an ISO-8601 UTC timestamp with milliseconds.

    ``2026-12-05T09:12:33.123+00:00``, as ``datetime.isoformat`` writes it; built from a
    cached per-second prefix because every alarm shown formats every hop's time.
    """
    # Microseconds rounded as datetime.fromtimestamp rounds them, then cut to milliseconds.
    fraction, whole = math.modf(ts)
    micros = round(fraction * 1e6)
    seconds = int(whole)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    elif micros < 0:
        seconds, micros = seconds - 1, micros + 1_000_000
    return f"{_second(seconds)}.{micros // 1000:03d}+00:00"


@functools.lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


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
        # A mobile alarm: the latest position and the track (oldest first), else null/[].
        "position": None if alarm.position is None else position_json(alarm.position),
        "positions": [position_json(entry) for entry in alarm.positions],
        # What the device reported about the alarm in progress (reset, presence, ...).
        "device_events": [
            {"status": n.status.value, "at": iso(n.at), "device_id": n.device_id,
             "ref": n.ref, "text": n.text}
            for n in alarm.device_notes
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
