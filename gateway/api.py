"""The staff HTTP API (``/api/v1``), the WebSocket, ``/healthz``, ``/metrics`` and the web app."""

# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at
# runtime, and the local `Me` dependency alias must be a real object, not a string.
import asyncio
import contextlib
import logging
import time
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, WebSocket, WebSocketDisconnect, status
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

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
from gateway import __version__
from gateway.audit import AuditKind
from gateway.auth import TokenError, verify_password
from gateway.org import StaffMember
from gateway.runtime import Gateway, RefusedError, UnavailableError
from gateway.views import alarm_json

_LOGGER = logging.getLogger(__name__)

_oauth2 = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token")


class TokenOut(BaseModel):
    """OAuth2 token response."""

    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int


class ForwardIn(BaseModel):
    """Body of ``POST /alarms/{id}/forward``: the colleague's staff id."""

    model_config = ConfigDict(extra="forbid")

    to: str = Field(min_length=1, max_length=64)


class CloseIn(BaseModel):
    """Body of ``POST /alarms/{id}/close``."""

    model_config = ConfigDict(extra="forbid")

    cause: str = Field(min_length=1, max_length=200)
    note: str | None = Field(default=None, max_length=2000)


class _TooSlowError(Exception):
    """A staff client fell too far behind; it is disconnected and resyncs on reconnect."""


def create_app(gateway: Gateway) -> FastAPI:
    """The ASGI app for one gateway."""
    app = FastAPI(
        title="trygg gateway",
        version=__version__,
        description="Staff API of the trygg welfare-technology gateway.",
    )

    def current_staff(token: Annotated[str, Depends(_oauth2)]) -> StaffMember:
        try:
            staff_id = gateway.tokens.check(token)
        except TokenError:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "invalid or expired token",
                headers={"WWW-Authenticate": "Bearer"},
            ) from None
        member = gateway.org.staff.get(staff_id)
        if member is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown staff member")
        return member

    Me = Annotated[StaffMember, Depends(current_staff)]

    @app.post("/api/v1/auth/token", response_model=TokenOut, tags=["auth"])
    async def login(form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> TokenOut:
        member = gateway.org.staff_by_username(form.username)
        # Verify against a hash even for unknown users would be better against timing
        # probes; argon2 is run only for known ones here (tracked for the security issue).
        ok = member is not None and await asyncio.to_thread(
            verify_password, member.password_hash, form.password
        )
        if not ok or member is None:
            gateway.audit.record(AuditKind.LOGIN_FAILED, actor=form.username[:64],
                                 subject="staff-api")
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "wrong username or password",
                headers={"WWW-Authenticate": "Bearer"},
            )
        gateway.audit.record(AuditKind.LOGIN, actor=member.id, subject="staff-api")
        return TokenOut(
            access_token=gateway.tokens.issue(member.id),
            expires_in=gateway.settings.token_ttl_s,
        )

    @app.get("/api/v1/me", tags=["auth"])
    async def me(member: Me) -> dict[str, Any]:
        return {
            "id": member.id,
            "username": member.username,
            "name": member.name,
            "role": member.role,
            "team_ids": list(member.team_ids),
        }

    @app.get("/api/v1/alarms", tags=["alarms"])
    async def list_alarms(
        member: Me, state: Literal["open", "closed", "all"] = "open"
    ) -> list[dict[str, Any]]:
        return [alarm_json(a, gateway.org) for a in gateway.visible_alarms(member.id, state)]

    def visible(member: StaffMember, alarm_id: str) -> dict[str, Any]:
        alarm = gateway.core.alarms.get(alarm_id)
        if alarm is None or not gateway.may_see(member.id, alarm):
            # Same answer for "absent" and "not yours": ids of other teams' alarms leak
            # nothing.
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alarm {alarm_id!r}")
        return alarm_json(alarm, gateway.org)

    @app.get("/api/v1/alarms/{alarm_id}", tags=["alarms"])
    async def get_alarm(alarm_id: str, member: Me) -> dict[str, Any]:
        body = visible(member, alarm_id)
        gateway.audit.record(AuditKind.ALARM_VIEW, actor=member.id, subject=alarm_id,
                             detail={"recipient_id": body["recipient_id"]})
        return body

    async def act(member: StaffMember, event: StaffEvent) -> dict[str, Any]:
        visible(member, event.alarm_id)
        try:
            alarm = await gateway.act(event)
        except RefusedError as exc:
            raise HTTPException(exc.code, exc.reason) from None
        except UnavailableError:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "the journal cannot store this right now; nothing was changed, try again",
            ) from None
        return alarm_json(alarm, gateway.org)

    @app.post("/api/v1/alarms/{alarm_id}/receipt", tags=["alarms"])
    async def receipt(alarm_id: str, member: Me) -> dict[str, Any]:
        return await act(member, ReceiptConfirmed(alarm_id, member.id))

    @app.post("/api/v1/alarms/{alarm_id}/accept", tags=["alarms"])
    async def accept(alarm_id: str, member: Me) -> dict[str, Any]:
        return await act(member, AcceptRequested(alarm_id, member.id))

    @app.post("/api/v1/alarms/{alarm_id}/on-site", tags=["alarms"])
    async def on_site(alarm_id: str, member: Me) -> dict[str, Any]:
        return await act(member, OnSiteRequested(alarm_id, member.id))

    @app.post("/api/v1/alarms/{alarm_id}/close", tags=["alarms"])
    async def close(alarm_id: str, body: CloseIn, member: Me) -> dict[str, Any]:
        return await act(member, CloseRequested(alarm_id, member.id, body.cause, body.note))

    @app.post("/api/v1/alarms/{alarm_id}/forward", tags=["alarms"])
    async def forward(alarm_id: str, body: ForwardIn, member: Me) -> dict[str, Any]:
        return await act(member, ForwardRequested(alarm_id, member.id, body.to))

    @app.post("/api/v1/alarms/{alarm_id}/hand-back", tags=["alarms"])
    async def hand_back(alarm_id: str, member: Me) -> dict[str, Any]:
        return await act(member, HandBackRequested(alarm_id, member.id))

    @app.post("/api/v1/alarms/{alarm_id}/take-over", tags=["alarms"])
    async def take_over(alarm_id: str, member: Me) -> dict[str, Any]:
        return await act(member, TakeOverRequested(alarm_id, member.id))

    @app.get("/api/v1/alarms/{alarm_id}/causes", tags=["alarms"])
    async def causes(alarm_id: str, member: Me) -> list[str]:
        visible(member, alarm_id)
        return list(gateway.core.allowed_causes(gateway.core.alarms[alarm_id]))

    @app.get("/api/v1/reports/response-times", tags=["reports"])
    async def response_report(
        member: Me,
        period: Literal["day", "week", "month"] = "week",
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> dict[str, Any]:
        if member.role not in ("lead", "admin"):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "reports are for team leads")
        return gateway.response_report(member, period, start_ms, end_ms)

    @app.get("/api/v1/devices/{device_id}/series", tags=["telemetry"])
    async def series(
        device_id: str,
        metric: str,
        member: Me,
        start_ms: int = 0,
        end_ms: int | None = None,
        max_points: Annotated[int, Query(ge=1, le=5000)] = 500,
    ) -> dict[str, Any]:
        device = gateway.org.devices.get(device_id)
        recipient = gateway.org.recipients.get(device.recipient_id or "") if device else None
        allowed = member.role in ("admin", "technician") or (
            recipient is not None and recipient.team_id in member.team_ids
        )
        if device is None or not allowed:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device_id!r}")
        end = end_ms if end_ms is not None else int(time.time() * 1000) + 1
        points = await gateway.telemetry.query(device_id, metric, start_ms, end, max_points)
        return {
            "device_id": device_id,
            "metric": metric,
            "points": [[ts, list(v) if isinstance(v, tuple) else v] for ts, v in points],
        }

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> JSONResponse:
        health = gateway.health()
        code = 200 if health["status"] == "ok" else 503
        return JSONResponse(health, status_code=code)

    @app.get("/metrics", tags=["operations"])
    async def metrics() -> PlainTextResponse:
        m = gateway.metrics
        m.staff_connections.set(gateway.hub.connection_count())
        if gateway.link is not None:
            m.mqtt_dropped.set(gateway.link.dropped_outbound)
        stats = gateway.telemetry.stats
        m.telemetry_shed.set(stats.shed)
        m.telemetry_written.set(stats.written)
        return PlainTextResponse(
            generate_latest(m.registry).decode(), media_type=CONTENT_TYPE_LATEST
        )

    @app.websocket("/api/v1/ws")
    async def staff_socket(websocket: WebSocket, token: str = Query(default="")) -> None:
        try:
            staff_id = gateway.tokens.check(token)
        except TokenError:
            await websocket.close(code=4401, reason="invalid or expired token")
            return
        if staff_id not in gateway.org.staff:
            await websocket.close(code=4401, reason="unknown staff member")
            return
        await websocket.accept()
        # Attach before the snapshot: an update racing the snapshot then arrives twice
        # (the client keeps the newest by id) rather than not at all.
        connection = gateway.hub.attach(staff_id)
        gateway.core.staff_connected(staff_id)
        try:
            await websocket.send_json({"type": "hello", "staff_id": staff_id})
            snapshot = gateway.visible_alarms(staff_id, "open")
            for alarm in snapshot:
                await websocket.send_json(
                    {"type": "alarm", "alarm": alarm_json(alarm, gateway.org)}
                )
            await websocket.send_json({"type": "sync", "open": [a.id for a in snapshot]})
            async with asyncio.TaskGroup() as group:
                group.create_task(_read(websocket, staff_id), name=f"ws read {staff_id}")
                group.create_task(_write(websocket, connection.outbox), name=f"ws write {staff_id}")
                group.create_task(_watch(connection.overflowed), name=f"ws watch {staff_id}")
        except* _TooSlowError:
            with contextlib.suppress(Exception):
                await websocket.close(code=1013, reason="too far behind; reconnect")
        except* (WebSocketDisconnect, OSError):
            _LOGGER.debug("staff %s socket closed", staff_id)
        finally:
            gateway.hub.detach(connection)
            gateway.core.staff_disconnected(staff_id)

    async def _read(websocket: WebSocket, staff_id: str) -> None:
        while True:
            message = await websocket.receive_json()
            if not isinstance(message, dict) or message.get("type") != "receipt":
                await websocket.send_json({"type": "error", "reason": "expected a receipt"})
                continue
            alarm_id = message.get("alarm_id")
            if not isinstance(alarm_id, str):
                await websocket.send_json({"type": "error", "reason": "receipt needs alarm_id"})
                continue
            try:
                await gateway.act(ReceiptConfirmed(alarm_id, staff_id))
            except RefusedError as exc:
                await websocket.send_json(
                    {"type": "error", "alarm_id": alarm_id, "reason": exc.reason}
                )
            except UnavailableError:
                await websocket.send_json(
                    {"type": "error", "alarm_id": alarm_id, "reason": "journal unavailable"}
                )

    async def _watch(overflowed: asyncio.Event) -> None:
        await overflowed.wait()
        raise _TooSlowError

    async def _write(websocket: WebSocket, outbox: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            await websocket.send_json(await outbox.get())

    for router in gateway.routers:
        app.include_router(router)

    static = resources.files("dashboards") / "static"
    with resources.as_file(static) as static_dir:
        app.mount("/static", StaticFiles(directory=static_dir), name="static")

        @app.get("/", include_in_schema=False)
        async def index() -> RedirectResponse:
            return RedirectResponse("/app/")

        @app.get("/app/", include_in_schema=False)
        async def staff_app() -> FileResponse:
            return FileResponse(static_dir / "index.html")

    return app
