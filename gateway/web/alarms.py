"""Alarms for staff: list, read, act on (accept, on site, close, ...), reports, telemetry."""

import dataclasses
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from alarms import kpi
from alarms.access import colleagues, role_sees
from alarms.escalation import PRESENCE_DEADLINE_S
from alarms.events import (
    AcceptRequested,
    CloseRequested,
    ForwardRequested,
    HandBackRequested,
    OnSiteRequested,
    ReceiptConfirmed,
    StaffEvent,
    TakeOverRequested,
)
from alarms.model import Alarm
from gateway.audit import AuditKind
from gateway.errors import ForbiddenError, NotFoundError
from gateway.org import StaffMember
from gateway.views import alarm_json, for_role
from gateway.web.deps import WebGateway, audit_read, staff_dependency
from gateway.web.schemas import (
    AlarmOut,
    ColleagueOut,
    EvidenceOut,
    ResponseReportOut,
    SeriesOut,
    documented,
)

# A staff action: refused by the core (403, 404, 409, 422), or not durable now (503).
_ACT = (401, 403, 404, 409, 422, 503)


class ForwardIn(BaseModel):
    """Body of ``POST /alarms/{id}/forward``: the colleague's staff id."""

    model_config = ConfigDict(extra="forbid")

    to: str = Field(min_length=1, max_length=64)


class CloseIn(BaseModel):
    """Body of ``POST /alarms/{id}/close``."""

    model_config = ConfigDict(extra="forbid")

    cause: str = Field(min_length=1, max_length=200)
    note: str | None = Field(default=None, max_length=2000)


def alarm_body(gw: WebGateway, role: str, alarm: Alarm) -> dict[str, Any]:
    """The alarm JSON; for technicians the recipient is cut to name and address."""
    return for_role(role, alarm_json(alarm, gw.org))


def visible_alarm(gw: WebGateway, member: StaffMember, alarm_id: str) -> Alarm:
    """The alarm if the member may see it; the same 404 for absent and not theirs."""
    alarm = gw.core.alarms.get(alarm_id)
    if alarm is None or not gw.may_see(member.id, alarm) or not role_sees(member.role, alarm):
        # Same answer for "absent" and "not yours": ids of other teams' alarms leak nothing.
        raise NotFoundError(f"no alarm {alarm_id!r}")
    return alarm


def router(gw: WebGateway) -> APIRouter:
    """``/api/v1/alarms/*``, ``/api/v1/reports/*`` and device telemetry series."""
    api = APIRouter(tags=["alarms"])
    Me = Annotated[StaffMember, Depends(staff_dependency(gw))]

    @api.get("/api/v1/alarms", **documented(list[AlarmOut], 401, 422))
    async def list_alarms(
        member: Me, state: Literal["open", "closed", "all"] = "open"
    ) -> list[dict[str, Any]]:
        alarms = [a for a in gw.visible_alarms(member.id, state) if role_sees(member.role, a)]
        audit_read(gw, member.id, "alarms", (a.id for a in alarms), state=state)
        return [alarm_body(gw, member.role, a) for a in alarms]

    @api.get("/api/v1/alarms/{alarm_id}", **documented(AlarmOut, 401, 404))
    async def get_alarm(alarm_id: str, member: Me) -> dict[str, Any]:
        alarm = visible_alarm(gw, member, alarm_id)
        gw.audit.record(AuditKind.ALARM_VIEW, actor=member.id, subject=alarm_id,
                detail={"recipient_id": alarm.recipient_id})
        return alarm_body(gw, member.role, alarm)

    async def act(member: StaffMember, event: StaffEvent) -> dict[str, Any]:
        visible_alarm(gw, member, event.alarm_id)
        alarm = await gw.act(event)
        return alarm_body(gw, member.role, alarm)

    @api.post("/api/v1/alarms/{alarm_id}/receipt", **documented(AlarmOut, *_ACT))
    async def receipt(alarm_id: str, member: Me) -> dict[str, Any]:
        return await act(member, ReceiptConfirmed(alarm_id, member.id))

    @api.post("/api/v1/alarms/{alarm_id}/accept", **documented(AlarmOut, *_ACT))
    async def accept(alarm_id: str, member: Me) -> dict[str, Any]:
        return await act(member, AcceptRequested(alarm_id, member.id))

    @api.post("/api/v1/alarms/{alarm_id}/on-site", **documented(AlarmOut, *_ACT))
    async def on_site(alarm_id: str, member: Me) -> dict[str, Any]:
        return await act(member, OnSiteRequested(alarm_id, member.id))

    @api.post("/api/v1/alarms/{alarm_id}/close", **documented(AlarmOut, 400, *_ACT))
    async def close(alarm_id: str, body: CloseIn, member: Me) -> dict[str, Any]:
        return await act(member, CloseRequested(alarm_id, member.id, body.cause, body.note))

    @api.post("/api/v1/alarms/{alarm_id}/forward", **documented(AlarmOut, 400, *_ACT))
    async def forward(alarm_id: str, body: ForwardIn, member: Me) -> dict[str, Any]:
        return await act(member, ForwardRequested(alarm_id, member.id, body.to))

    @api.post("/api/v1/alarms/{alarm_id}/hand-back", **documented(AlarmOut, *_ACT))
    async def hand_back(alarm_id: str, member: Me) -> dict[str, Any]:
        return await act(member, HandBackRequested(alarm_id, member.id))

    @api.post("/api/v1/alarms/{alarm_id}/take-over", **documented(AlarmOut, *_ACT))
    async def take_over(alarm_id: str, member: Me) -> dict[str, Any]:
        return await act(member, TakeOverRequested(alarm_id, member.id))

    @api.get("/api/v1/alarms/{alarm_id}/colleagues",
             **documented(list[ColleagueOut], 401, 404))
    async def alarm_colleagues(alarm_id: str, member: Me) -> list[dict[str, Any]]:
        """Whom the alarm can be forwarded to: on duty and allowed to act on it; those
        with the app open (connected) first, then by name."""
        alarm = visible_alarm(gw, member, alarm_id)
        connected = gw.connected_staff()
        found = []
        for staff_id in colleagues(alarm, gw.core.directory, member.id):
            colleague = gw.org.staff.get(staff_id)
            if colleague is None:
                continue
            found.append({
                "id": staff_id, "name": colleague.name,
                "team_names": [gw.org.teams[t].name if t in gw.org.teams else t
                               for t in colleague.team_ids],
                "connected": staff_id in connected,
            })
        found.sort(key=lambda c: (not c["connected"], str(c["name"]).casefold()))
        return found

    @api.get("/api/v1/alarms/{alarm_id}/causes", **documented(list[str], 401, 404))
    async def causes(alarm_id: str, member: Me) -> list[str]:
        alarm = visible_alarm(gw, member, alarm_id)
        return list(gw.core.allowed_causes(alarm))

    @api.get("/api/v1/alarms/{alarm_id}/evidence", **documented(EvidenceOut, 401, 404))
    async def evidence(alarm_id: str, member: Me) -> dict[str, Any]:
        """The sensor samples behind a sensor alarm, from the time-series store."""
        alarm = gw.core.alarms.get(alarm_id)
        if alarm is None or not gw.may_see(member.id, alarm):
            raise NotFoundError(f"no alarm {alarm_id!r}")
        return await gw.sensors.evidence(alarm_id)

    @api.get("/api/v1/reports/response-times", tags=["reports"],
             **documented(ResponseReportOut, 401, 403, 422))
    async def response_report(
        member: Me,
        period: Literal["day", "week", "month"] = "week",
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> dict[str, Any]:
        if member.role not in ("lead", "admin"):
            raise ForbiddenError("reports are for team leads")
        alarms = [a for a in gw.core.alarms.values()
                  if member.role == "admin" or a.team_id in member.team_ids]
        rows = kpi.summarize(
            alarms,
            by=frozenset({"team", "shift", "period"}),
            period=kpi.Period(period),
            start=None if start_ms is None else start_ms / 1000,
            end=None if end_ms is None else end_ms / 1000,
            now=time.time(),
        )
        return {"target_s": PRESENCE_DEADLINE_S,
                "rows": [dataclasses.asdict(row) for row in rows]}

    @api.get("/api/v1/devices/{device_id}/series", tags=["telemetry"],
             **documented(SeriesOut, 401, 404, 422))
    async def series(
        device_id: str,
        metric: str,
        member: Me,
        start_ms: int = 0,
        end_ms: int | None = None,
        max_points: Annotated[int, Query(ge=1, le=5000)] = 500,
    ) -> dict[str, Any]:
        device = gw.org.devices.get(device_id)
        recipient = gw.org.recipients.get(device.recipient_id or "") if device else None
        allowed = member.role in ("admin", "technician") or (
            recipient is not None and recipient.team_id in member.team_ids
        )
        if device is None or not allowed:
            raise NotFoundError(f"no device {device_id!r}")
        end = end_ms if end_ms is not None else int(time.time() * 1000) + 1
        points = await gw.telemetry.query(device_id, metric, start_ms, end, max_points)
        return {
            "device_id": device_id,
            "metric": metric,
            "points": [[ts, list(v) if isinstance(v, tuple) else v] for ts, v in points],
        }

    return api
