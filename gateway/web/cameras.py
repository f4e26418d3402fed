"""Night cameras (digital nattillsyn): consents, schedules and looks, over HTTP."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from alarms.nattillsyn import (
    DEFAULT_TOLERANCE_S,
    ConsentScope,
    Look,
    Outcome,
    Schedule,
    parse_hhmm,
)
from gateway.cameras import CameraService
from gateway.errors import ForbiddenError, InvalidError, NotFoundError
from gateway.org import StaffMember
from gateway.web.deps import WebGateway, staff_dependency
from gateway.web.schemas import (
    ConsentOut,
    LookOut,
    LookStartedOut,
    ScheduleOut,
    documented,
    errors,
)

# -- API models -------------------------------------------------------------------------------


class ConsentIn(BaseModel):
    """Body of ``PUT /cameras/consents/{recipient_id}``."""

    model_config = ConfigDict(extra="forbid")

    given_by: str = Field(min_length=1, max_length=200)
    scope: list[ConsentScope] = Field(default=[ConsentScope.SCHEDULED], min_length=1)
    consented_at: float | None = None


class ScheduleIn(BaseModel):
    """Body of ``PUT /cameras/schedules/{recipient_id}``."""

    model_config = ConfigDict(extra="forbid")

    team_id: str = Field(min_length=1, max_length=64)
    times: list[str] = Field(min_length=1, max_length=12)
    tolerance_min: float = Field(default=DEFAULT_TOLERANCE_S / 60, gt=0, le=60)


class LookIn(BaseModel):
    """Body of ``POST /cameras/looks``. ``reason`` and ``alarm_id`` make it an ad hoc look."""

    model_config = ConfigDict(extra="forbid")

    recipient_id: str = Field(min_length=1, max_length=64)
    reason: str | None = Field(default=None, max_length=500)
    alarm_id: str | None = Field(default=None, max_length=64)
    duration_s: float | None = None


class EndIn(BaseModel):
    """Body of ``POST /cameras/looks/{look_id}/end``."""

    model_config = ConfigDict(extra="forbid")

    outcome: Outcome


def _look_json(look: Look) -> dict[str, Any]:
    return {"id": look.id, "viewer": look.viewer_id, **look.audit_detail(),
            "expires_at": look.expires_at}


def router(gw: WebGateway) -> APIRouter:
    """The night camera API of the gateway's camera service."""
    return create_camera_router(gw, gw.cameras)


def create_camera_router(gw: WebGateway, service: CameraService) -> APIRouter:
    """The night camera API (``/api/v1/cameras/...``) of ``service``."""
    router = APIRouter()

    current_staff = staff_dependency(gw)

    Me = Annotated[StaffMember, Depends(current_staff)]

    def require_manager(member: StaffMember, recipient_id: str) -> None:
        # Consents and schedules are care decisions: an administrator, or a team lead of
        # the recipient's team.
        recipient = gw.org.recipients.get(recipient_id)
        if recipient is None or (member.role != "admin"
                                 and recipient.team_id not in member.team_ids):
            # Another team's recipient: 404, as a missing one (docs/security.md).
            raise NotFoundError("unknown recipient")
        if member.role == "admin":
            return
        if member.role == "lead":
            return
        raise ForbiddenError(
                            "only an administrator or the team's lead may do this")

    @router.get("/api/v1/cameras/consents/{recipient_id}", tags=["cameras"],
                **documented(list[ConsentOut], 401, 403, 404))
    async def get_consents(recipient_id: str, member: Me) -> list[dict[str, object]]:
        require_manager(member, recipient_id)
        return [c.to_json() for c in await service.consent_history(recipient_id)]

    @router.put("/api/v1/cameras/consents/{recipient_id}", tags=["cameras"],
                **documented(ConsentOut, 400, 401, 403, 404, 422))
    async def put_consent(recipient_id: str, body: ConsentIn, member: Me) -> dict[str, object]:
        require_manager(member, recipient_id)
        consent = await service.register_consent(
            member, recipient_id, body.given_by, frozenset(body.scope), body.consented_at)
        return consent.to_json()

    @router.delete("/api/v1/cameras/consents/{recipient_id}", tags=["cameras"],
                   **documented(ConsentOut, 401, 403, 404))
    async def withdraw_consent(recipient_id: str, member: Me) -> dict[str, object]:
        # Anyone in the recipient's team may register a withdrawal: the recipient says it
        # to whoever is there, and it must take effect at once.
        recipient = gw.org.recipients.get(recipient_id)
        if recipient is None or (member.role != "admin"
                                 and recipient.team_id not in member.team_ids):
            raise NotFoundError("unknown recipient")
        return (await service.withdraw_consent(member, recipient_id)).to_json()

    @router.get("/api/v1/cameras/schedules/{recipient_id}", tags=["cameras"],
                **documented(ScheduleOut, 401, 403, 404))
    async def get_schedule(recipient_id: str, member: Me) -> dict[str, object]:
        require_manager(member, recipient_id)
        schedule = await service.schedule(recipient_id)
        if schedule is None:
            raise NotFoundError("no schedule")
        return schedule.to_json()

    @router.put("/api/v1/cameras/schedules/{recipient_id}", tags=["cameras"],
                **documented(ScheduleOut, 400, 401, 403, 404, 422))
    async def put_schedule(recipient_id: str, body: ScheduleIn, member: Me) -> dict[str, object]:
        require_manager(member, recipient_id)
        if body.team_id not in gw.org.teams:
            raise InvalidError("unknown team")
        try:
            times = tuple(sorted({parse_hhmm(t) for t in body.times}))
        except ValueError as exc:
            raise InvalidError(str(exc)) from None
        schedule = Schedule(recipient_id, body.team_id, times, body.tolerance_min * 60)
        await service.set_schedule(member, schedule, recipient_id)
        return schedule.to_json()

    @router.delete("/api/v1/cameras/schedules/{recipient_id}", tags=["cameras"],
                   **documented(None, 401, 403, 404, status=status.HTTP_204_NO_CONTENT))
    async def delete_schedule(recipient_id: str, member: Me) -> None:
        require_manager(member, recipient_id)
        await service.set_schedule(member, None, recipient_id)

    @router.post("/api/v1/cameras/looks", tags=["cameras"],
                 **documented(LookStartedOut, 400, 401, 403, 404, 409, 422, 503, 504,
                              status=status.HTTP_201_CREATED))
    async def request_look(body: LookIn, member: Me) -> dict[str, Any]:
        look, token = await service.request_look(
            member, body.recipient_id, reason=body.reason, alarm_id=body.alarm_id,
            duration_s=body.duration_s)
        return {**_look_json(look), "token": token,
                "stream_url": f"/api/v1/cameras/looks/{look.id}/stream"}

    @router.get("/api/v1/cameras/looks/{look_id}", tags=["cameras"],
                **documented(LookOut, 401, 404))
    async def get_look(look_id: str, member: Me) -> dict[str, Any]:
        look = await service.find_look(look_id)
        if look is None or (look.viewer_id != member.id and member.role != "admin"):
            raise NotFoundError("no such look")
        return _look_json(look)

    @router.get("/api/v1/cameras/looks/{look_id}/stream", tags=["cameras"],
                response_class=StreamingResponse,
                responses={200: {"description": "The camera's stream, relayed (MJPEG or "
                                 "as the camera sends it).",
                                 "content": {"multipart/x-mixed-replace": {}}},
                           **errors(401, 403, 404, 422, 502)})
    async def stream(
        look_id: str, member: Me,
        token: Annotated[str | None, Query(max_length=200)] = None,
        x_look_token: Annotated[str | None, Header(max_length=200)] = None,
    ) -> StreamingResponse:
        active = await service.check_token(member, look_id, x_look_token or token)
        content_type, chunks = await service.open_stream(active)
        return StreamingResponse(
            chunks, media_type=content_type,
            headers={"Cache-Control": "no-store, no-cache, must-revalidate, private",
                     "Pragma": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    @router.post("/api/v1/cameras/looks/{look_id}/end", tags=["cameras"],
                 **documented(LookOut, 400, 401, 403, 404, 409, 422))
    async def end_look(look_id: str, body: EndIn, member: Me) -> dict[str, Any]:
        return _look_json(await service.end_look(member, look_id, body.outcome))

    return router
