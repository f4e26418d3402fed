"""The technician console (``/console/``) and the operations dashboard (``/ops/``).

Read-only JSON for the two pages:

- ``GET /api/v1/console/fleet``: every device with its supervision state, last seen,
  battery, signal, firmware and last end-to-end test. Technicians and administrators.
- ``GET /api/v1/console/devices/{id}``: one device in detail, its latest test alarm's chain
  and recent telemetry. Technicians and administrators.
- ``GET /api/v1/ops/summary``: alarm volumes by type and hour of day, response-time
  distributions against the 30-minute target, open technical alarms and supervision
  counts. Team leads (their teams) and administrators (all).

A recipient appears only by name and address: technicians never see action plans or entry
information. Staff get 403 on all of it.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime.
import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, RedirectResponse

from alarms import kpi
from alarms.escalation import PRESENCE_DEADLINE_S
from alarms.model import Alarm, AlarmType, Hop
from alarms.wording import technical_summary
from devices.types import heartbeat_s
from gateway.errors import ForbiddenError, NotFoundError
from gateway.org import DeviceInfo, StaffMember
from gateway.provlarm import parse_reason
from gateway.views import OrgNames, iso
from gateway.web.deps import WebGateway, audit_read, staff_dependency
from gateway.web.schemas import DeviceDetailOut, FleetOut, OpsSummaryOut, documented

_ZONE = ZoneInfo("Europe/Stockholm")
_ID = r"^[A-Za-z0-9_.:-]{1,64}$"

CONSOLE_ROLES = frozenset({"technician", "admin"})
OPS_ROLES = frozenset({"lead", "admin"})

# Histogram bins of the response-time plots, in seconds: 5-minute bins up to an hour, then
# one open bin. The 30-minute target falls on a bin edge.
RESPONSE_BIN_S: tuple[float, ...] = tuple(float(m * 60) for m in range(0, 61, 5))

# Telemetry metrics each device type sends (docs/simulator.md), matched by keyword like the
# simulator does; battery devices also send ``battery``. ``?metrics=`` overrides.
_TYPE_METRICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fall", ("accel", "battery")),
    ("bed", ("bed_occupied", "battery")),
    ("door", ("door_open", "battery")),
    ("motion", ("motion", "battery")),
    ("temp", ("temperature", "battery")),
    ("smoke", ("smoke", "battery")),
    ("water", ("water", "battery")),
)
TELEMETRY_WINDOW_S = 24 * 3600.0
DeviceState = Literal["online", "offline", "unknown"]


def metrics_for(device_type: str) -> tuple[str, ...]:
    """The telemetry metrics a device of this type is expected to send."""
    lowered = device_type.lower()
    for keyword, metrics in _TYPE_METRICS:
        if keyword in lowered:
            return metrics
    return ()


def _static_dir() -> Path:
    static = resources.files("dashboards") / "static"
    with resources.as_file(static) as path:
        return Path(path)


def _last_tests(path: Path) -> dict[str, dict[str, Any]]:
    """Every device's last end-to-end test, in one read of provlarm's table."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return {}
    try:
        rows = conn.execute(
            "SELECT device_id, last_at, last_result, last_ok, failed_hop, reason FROM provlarm"
        ).fetchall()
    except sqlite3.Error:  # no test has run yet: the table may not exist
        return {}
    finally:
        conn.close()
    return {
        row[0]: {
            "at": None if row[1] is None else iso(row[1]),
            "result": row[2],
            "last_ok": None if row[3] is None else iso(row[3]),
            "failed_hop": row[4],
            "reason": parse_reason(row[5]),
        }
        for row in rows
    }


def _hour(ts: float) -> int:
    return datetime.fromtimestamp(ts, _ZONE).hour


def _histogram(values: Iterable[float], target_s: float) -> dict[str, Any]:
    ordered = sorted(values)
    counts = [0] * len(RESPONSE_BIN_S)  # the last bin is open: >= 60 min
    for value in ordered:
        index = len(RESPONSE_BIN_S) - 1
        for i in range(len(RESPONSE_BIN_S) - 1):
            if value < RESPONSE_BIN_S[i + 1]:
                index = i
                break
        counts[index] += 1
    stats = kpi.Stats.of(ordered)
    return {
        "bins_s": list(RESPONSE_BIN_S),
        "counts": counts,
        "count": stats.count,
        "p50_s": stats.p50,
        "p90_s": stats.p90,
        "max_s": stats.max,
        "within_target": sum(1 for v in ordered if v <= target_s),
    }


def router(gw: WebGateway) -> APIRouter:
    """The console and ops API plus the two pages; see the module docstring."""
    api = APIRouter(tags=["consoles"])
    static_dir = _static_dir()
    current_staff = staff_dependency(gw)

    def technician(member: Annotated[StaffMember, Depends(current_staff)]) -> StaffMember:
        if member.role not in CONSOLE_ROLES:
            raise ForbiddenError("for technicians")
        return member

    def lead(member: Annotated[StaffMember, Depends(current_staff)]) -> StaffMember:
        if member.role not in OPS_ROLES:
            raise ForbiddenError("for team leads")
        return member

    Technician = Annotated[StaffMember, Depends(technician)]
    Lead = Annotated[StaffMember, Depends(lead)]

    def device_state(device_id: str) -> DeviceState:
        supervisor = gw.watch.supervisor
        if device_id in supervisor and supervisor.is_offline(device_id):
            return "offline"
        if device_id in gw.devices:
            return "online"
        return "unknown"

    def row(device: DeviceInfo, tests: dict[str, dict[str, Any]]) -> dict[str, Any]:
        seen = gw.devices.get(device.id)
        recipient = gw.org.recipients.get(device.recipient_id or "")
        watch = gw.watch.supervisor.status(device.id)
        last_seen = seen.last_seen if seen is not None else (
            watch.last_seen if watch is not None and watch.offline else None)
        return {
            "id": device.id,
            "type": device.type,
            "model": device.model,
            # Name and address only: never the action plan or entry information.
            "recipient": None if recipient is None else {
                "id": recipient.id, "name": recipient.name, "address": recipient.address,
            },
            "state": device_state(device.id),
            "last_seen": None if last_seen is None else iso(last_seen),
            "heartbeat_s": device.heartbeat_s or heartbeat_s(device.type),
            "battery": None if seen is None else seen.battery,
            "rssi": None if seen is None else seen.rssi,
            "firmware": None if seen is None else seen.firmware,
            "status": None if seen is None else seen.state,
            "last_test": tests.get(device.id),
        }

    def technical_json(alarm: Alarm) -> dict[str, Any]:
        summary = technical_summary(alarm, OrgNames(gw.org))
        return {
            "id": alarm.id,
            "device_id": alarm.device_id,
            "ref": alarm.ref,
            "detail": alarm.detail,
            # What is wrong in words (whose device, local times, team names).
            "summary": None if summary is None else {"sv": summary.sv, "en": summary.en},
            "team_id": alarm.team_id,
            "since": iso(alarm.hops[0].at),
            "last_hop": alarm.last_hop.value,
        }

    @api.get("/api/v1/console/fleet", **documented(FleetOut, 401, 403, 422))
    async def fleet(
        member: Technician,
        device_type: Annotated[str | None, Query(alias="type", max_length=64)] = None,
        state: DeviceState | None = None,
        q: Annotated[str | None, Query(max_length=200)] = None,
    ) -> dict[str, Any]:
        tests = await asyncio.to_thread(_last_tests, gw.provlarm.path)
        rows = [row(d, tests) for d in sorted(gw.org.devices.values(), key=lambda d: d.id)]
        types = sorted({r["type"] for r in rows})
        counts = Counter(r["state"] for r in rows)
        if device_type:
            rows = [r for r in rows if r["type"] == device_type]
        if state:
            rows = [r for r in rows if r["state"] == state]
        if q:
            needle = q.casefold()
            rows = [r for r in rows if needle in " ".join(
                [r["id"], r["type"], r["model"]]
                + ([r["recipient"]["name"], r["recipient"]["address"]] if r["recipient"] else [])
            ).casefold()]
        # Recipients' names and addresses come with the devices; the console polls this, so
        # a large fleet is recorded as a count and the filter.
        audit_read(gw, member.id, "console/fleet", (r["id"] for r in rows),
                   type=device_type, state=state, q=q)
        return {
            "generated_at": iso(time.time()),
            "types": types,
            "counts": {s: counts.get(s, 0) for s in ("online", "offline", "unknown")},
            "devices": rows,
        }

    @api.get("/api/v1/console/devices/{device_id}",
             **documented(DeviceDetailOut, 401, 403, 404, 422))
    async def device_detail(
        device_id: Annotated[str, PathParam(pattern=_ID)],
        member: Technician,
        hours: Annotated[float, Query(gt=0, le=24 * 90)] = TELEMETRY_WINDOW_S / 3600,
        max_points: Annotated[int, Query(ge=2, le=2000)] = 200,
        telemetry: bool = True,
        metrics: Annotated[str | None, Query(max_length=500)] = None,
    ) -> dict[str, Any]:
        device = gw.org.devices.get(device_id)
        if device is None:
            raise NotFoundError(f"no device {device_id!r}")
        tests = await asyncio.to_thread(_last_tests, gw.provlarm.path)
        body = row(device, tests)
        seen = gw.devices.get(device_id)
        watch = gw.watch.supervisor.status(device_id)
        body["messages"] = {} if seen is None else dict(seen.counts)
        body["offline_at"] = None if watch is None or watch.deadline is None else iso(
            watch.deadline)
        body["e2e"] = await asyncio.to_thread(gw.provlarm.status, device_id)
        tests_of_device = [a for a in gw.core.alarms.values()
                           if a.device_id == device_id and a.type is AlarmType.TEST]
        latest = max(tests_of_device, key=lambda a: a.hops[0].at, default=None)
        # Hops and times only: who confirmed a test alarm is not the technician's business.
        body["last_test_alarm"] = None if latest is None else {
            "id": latest.id,
            "state": latest.state,
            "hops": [{"hop": h.hop.value, "at": iso(h.at)} for h in latest.hops],
        }
        body["technical_alarms"] = [
            technical_json(a) for a in gw.core.open_alarms()
            if a.type is AlarmType.TECHNICAL and a.device_id == device_id
        ]
        series: list[dict[str, Any]] = []
        if telemetry:
            names = ([m for m in metrics.split(",") if m] if metrics
                     else list(metrics_for(device.type)))
            end_ms = int(time.time() * 1000) + 1
            start_ms = end_ms - int(hours * 3600 * 1000)
            for name in names[:10]:
                points = await gw.telemetry.query(
                    device_id, name, start_ms, end_ms, max_points)
                series.append({
                    "metric": name,
                    "points": [[ts, list(v) if isinstance(v, tuple) else v] for ts, v in points],
                })
        body["telemetry"] = series
        return body

    @api.get("/api/v1/ops/summary", **documented(OpsSummaryOut, 401, 403, 422))
    async def ops_summary(
        member: Lead,
        hours: Annotated[float, Query(gt=0, le=24 * 366)] = 24 * 7,
    ) -> dict[str, Any]:
        now = time.time()
        start = now - hours * 3600

        def in_scope(alarm: Alarm) -> bool:
            return member.role == "admin" or alarm.team_id in member.team_ids

        def stored_at(alarm: Alarm) -> float:
            return alarm.at(Hop.STORED) or alarm.hops[0].at

        alarms = [a for a in gw.core.alarms.values()
                  if a.hops and in_scope(a) and start <= stored_at(a) < now + 1]
        care = [a for a in alarms if a.type not in kpi.EXCLUDED_TYPES]
        by_type = Counter(a.type.value for a in alarms)
        by_hour = [0] * 24
        technical_by_hour = [0] * 24
        for alarm in alarms:
            if alarm.type is AlarmType.TECHNICAL:
                technical_by_hour[_hour(stored_at(alarm))] += 1
            elif alarm.type is not AlarmType.TEST:
                by_hour[_hour(stored_at(alarm))] += 1
        times = [kpi.response_times(a) for a in care]
        overall = kpi.summarize(care, by=frozenset(), now=now)
        total = overall[0] if overall else None
        share = total.on_site_share if total else None
        counts = gw.watch.supervisor.counts()
        technical = sorted(
            (a for a in gw.core.open_alarms()
             if a.type is AlarmType.TECHNICAL and in_scope(a)),
            key=lambda a: a.hops[0].at,
        )
        return {
            "generated_at": iso(now),
            "window": {"start": iso(start), "end": iso(now), "hours": hours},
            "target_s": PRESENCE_DEADLINE_S,
            "alarms": len(alarms),
            "care_alarms": len(care),
            "by_type": dict(sorted(by_type.items())),
            "by_hour": by_hour,
            "technical_by_hour": technical_by_hour,
            "open_care_alarms": sum(1 for a in care if a.state == "open"),
            "response": {
                "accepted": _histogram(
                    (t.to_accepted for t in times if t.to_accepted is not None),
                    PRESENCE_DEADLINE_S),
                "on_site": _histogram(
                    (t.to_on_site for t in times if t.to_on_site is not None),
                    PRESENCE_DEADLINE_S),
                "on_site_share": share,
                # What the share is made of: n judged, of which within and missed (open
                # alarms past the target count as missed), and those that still have time.
                "on_site_target": {
                    "n": total.on_site_judged if total else 0,
                    "within": total.on_site_within_target if total else 0,
                    "missed": total.on_site_missed if total else 0,
                    "missed_open": total.on_site_missed_open if total else 0,
                    "pending": total.on_site_pending if total else 0,
                },
            },
            "technical_open": [technical_json(a) for a in technical],
            "supervision": {
                "watched": counts.watched,
                "online": counts.online,
                "offline": counts.offline,
                "tests_passed": gw.provlarm.passed,
                "tests_failed": gw.provlarm.failed,
            },
        }

    @api.get("/console", include_in_schema=False)
    async def console_redirect() -> RedirectResponse:
        return RedirectResponse("/console/")

    @api.get("/console/", include_in_schema=False)
    async def console_page() -> FileResponse:
        return FileResponse(static_dir / "console.html")

    @api.get("/ops", include_in_schema=False)
    async def ops_redirect() -> RedirectResponse:
        return RedirectResponse("/ops/")

    @api.get("/ops/", include_in_schema=False)
    async def ops_page() -> FileResponse:
        return FileResponse(static_dir / "ops.html")

    return api
