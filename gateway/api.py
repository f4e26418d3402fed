"""The staff HTTP API (``/api/v1``), the WebSocket, ``/healthz``, ``/metrics`` and the web app."""

# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations at
# runtime, and the local `Me` dependency alias must be a real object, not a string.
import asyncio
import contextlib
import json
import logging
import time
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import (
    Body,
    Depends,
    FastAPI,
    HTTPException,
    Path,
    Query,
    Request,
    WebSocket,
    WebSocketDisconnect,
    status,
)
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.websockets import WebSocketDisconnected

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
from alarms.model import AlarmType
from gateway import __version__
from gateway.audit import AuditKind
from gateway.auth import TokenError, TokenIssuer, hash_password, verify_password, verify_unknown
from gateway.broker_auth import BrokerAuthSettings, BrokerFiles
from gateway.deps import staff_dependency
from gateway.mqtt import Outbound
from gateway.org import RecipientInfo, StaffMember, Team
from gateway.privacy import erase_recipient, export_recipient
from gateway.provisioning import BrokerAccount, DeviceRegistry, ProvisioningError
from gateway.runtime import Gateway, RefusedError, UnavailableError
from gateway.security import (
    SESSIONS_FILENAME,
    LoginGuard,
    RefreshError,
    RefreshStore,
    SecurityHeaders,
    SecuritySettings,
)
from gateway.smscodec import e164
from gateway.views import alarm_json, for_role

_LOGGER = logging.getLogger(__name__)

_oauth2 = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token")


ROLES = ("staff", "lead", "technician", "admin")
_ID = r"^[A-Za-z0-9_.:-]{1,64}$"
IdPath = Annotated[str, Path(pattern=_ID)]


class TokenOut(BaseModel):
    """OAuth2 token response (``refresh_token``: exchange at ``/auth/refresh``)."""

    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int
    refresh_token: str | None = None


class RefreshIn(BaseModel):
    """Body of ``/auth/refresh`` and ``/auth/logout``."""

    model_config = ConfigDict(extra="forbid")

    refresh_token: str = Field(min_length=1, max_length=200)


class TeamIn(BaseModel):
    """A team, as administrators write it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=_ID)
    name: str = Field(min_length=1, max_length=200)


class StaffIn(BaseModel):
    """A staff member, as administrators write it; ``password`` only to set or change it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=_ID)
    username: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    role: Literal["staff", "lead", "technician", "admin"]
    team_ids: list[str] = Field(default_factory=list, max_length=50)
    password: str | None = Field(default=None, min_length=12, max_length=200)
    on_duty: bool = True
    # E.164, for the SMS fallback (docs/sms.md); normalised, unique among staff.
    phone: Annotated[str, AfterValidator(e164)] | None = Field(default=None, max_length=32)


class RecipientIn(BaseModel):
    """A care recipient, as administrators write it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=_ID)
    name: str = Field(min_length=1, max_length=200)
    address: str = Field(min_length=1, max_length=500)
    team_id: str = Field(pattern=_ID)
    entry_info: str = Field(default="", max_length=2000)
    action_plan: str = Field(default="", max_length=10000)


class DeviceIn(BaseModel):
    """A device being registered by a technician."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=_ID)
    type: str = Field(pattern=_ID)
    serial: str = Field(min_length=1, max_length=100)
    model: str = Field(default="", max_length=100)
    firmware: str = Field(default="", max_length=100)
    recipient_id: str | None = Field(default=None, pattern=_ID)


class BindIn(BaseModel):
    """Body of ``/devices/{id}/bind``."""

    model_config = ConfigDict(extra="forbid")

    recipient_id: str = Field(pattern=_ID)


class SwapIn(BaseModel):
    """Body of ``/devices/{id}/swap``: the registered replacement."""

    model_config = ConfigDict(extra="forbid")

    new_device_id: str = Field(pattern=_ID)


class ClaimIn(BaseModel):
    """Body of ``/provisioning/claim``: the code or the whole QR payload."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=200)


class ForwardIn(BaseModel):
    """Body of ``POST /alarms/{id}/forward``: the colleague's staff id."""

    model_config = ConfigDict(extra="forbid")

    to: str = Field(min_length=1, max_length=64)


class CloseIn(BaseModel):
    """Body of ``POST /alarms/{id}/close``."""

    model_config = ConfigDict(extra="forbid")

    cause: str = Field(min_length=1, max_length=200)
    note: str | None = Field(default=None, max_length=2000)


def _current_member(request: Request, token: Annotated[str, Depends(_oauth2)]) -> StaffMember:
    """The staff member a bearer token belongs to (for routes outside ``create_app``)."""
    gateway: Gateway = request.app.state.gateway
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


Me = Annotated[StaffMember, Depends(_current_member)]


async def _refuse(websocket: WebSocket, reason: str) -> None:
    """Close a socket whose token is refused with code 4401.

    Accepted first: closing before the handshake answers HTTP 403, which a browser reports
    as a bare 1006, and the staff app needs 4401 to know it must refresh its token.
    """
    await websocket.accept()
    await websocket.close(code=4401, reason=reason)


class _TooSlowError(Exception):
    """A staff client fell too far behind; it is disconnected and resyncs on reconnect."""


def create_app(gateway: Gateway) -> FastAPI:
    """The ASGI app for one gateway."""
    # Swagger UI (/docs) and ReDoc (/redoc) from files shipped in the package, not a CDN: a
    # gateway in a municipal network often has no internet.
    app = FastAPIOffline(
        title="trygg gateway",
        version=__version__,
        description="Staff API of the trygg welfare-technology gateway.",
    )

    current_staff = staff_dependency(gateway)
    Me = Annotated[StaffMember, Depends(current_staff)]

    security = security_settings(gateway)
    issuer = TokenIssuer(gateway.settings.secret_key, security.access_ttl_s)
    guard = LoginGuard(security)
    claim_guard = LoginGuard(security)
    sessions = RefreshStore(gateway.settings.data_dir / SESSIONS_FILENAME, security.refresh_ttl_s)
    registry = device_registry(gateway)
    app.add_middleware(SecurityHeaders, hsts=security.hsts)
    if security.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=security.cors_origins, allow_credentials=False,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )

    def tokens_for(member: StaffMember, family_token: str | None = None) -> TokenOut:
        return TokenOut(
            access_token=issuer.issue(member.id),
            expires_in=security.access_ttl_s,
            refresh_token=family_token or sessions.issue(member.id),
        )

    @app.post("/api/v1/auth/token", response_model=TokenOut, tags=["auth"],
              responses={429: {"description": "too many failed logins; see Retry-After"}})
    async def login(
        request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()]
    ) -> TokenOut:
        address = request.client.host if request.client else "?"
        username = form.username[:64]
        wait = guard.retry_after(username, address)
        if wait > 0:
            gateway.audit.record("login_refused", actor=username, subject="staff-api",
                                 detail={"address": address, "reason": "locked"})
            raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                                "too many failed logins; try again later",
                                headers={"Retry-After": str(int(wait) + 1)})
        member = gateway.org.staff_by_username(form.username)
        if member is None:
            # Hash anyway: an unknown name takes as long as a wrong password.
            await asyncio.to_thread(verify_unknown, form.password)
            ok = False
        else:
            ok = await asyncio.to_thread(verify_password, member.password_hash, form.password)
        if not ok or member is None:
            gateway.audit.record(AuditKind.LOGIN_FAILED, actor=username,
                                 subject="staff-api", detail={"address": address})
            for key in guard.failed(username, address):
                gateway.audit.record("login_locked", actor=username, subject=key,
                                     detail={"address": address})
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "wrong username or password",
                headers={"WWW-Authenticate": "Bearer"},
            )
        guard.succeeded(username)
        gateway.audit.record(AuditKind.LOGIN, actor=member.id, subject="staff-api",
                             detail={"address": address})
        return tokens_for(member)

    @app.post("/api/v1/auth/refresh", response_model=TokenOut, tags=["auth"])
    async def refresh(body: RefreshIn) -> TokenOut:
        try:
            staff_id, rotated = await asyncio.to_thread(sessions.rotate, body.refresh_token)
        except RefreshError as exc:
            gateway.audit.record("refresh_refused", actor="?", subject="staff-api",
                                 detail={"reason": str(exc)})
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc)) from None
        member = gateway.org.staff.get(staff_id)
        if member is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown staff member")
        return tokens_for(member, rotated)

    @app.post("/api/v1/auth/logout", status_code=204, tags=["auth"])
    async def logout(body: RefreshIn) -> None:
        await asyncio.to_thread(sessions.revoke, body.refresh_token)

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
        return [
            _alarm_body(member.role, a, gateway)
            for a in gateway.visible_alarms(member.id, state) if _role_sees(member.role, a)
        ]

    def visible(member: StaffMember, alarm_id: str) -> dict[str, Any]:
        alarm = gateway.core.alarms.get(alarm_id)
        if (alarm is None or not gateway.may_see(member.id, alarm)
                or not _role_sees(member.role, alarm)):
            # Same answer for "absent" and "not yours": ids of other teams' alarms leak
            # nothing.
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no alarm {alarm_id!r}")
        return _alarm_body(member.role, alarm, gateway)

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
        return _alarm_body(member.role, alarm, gateway)

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
            await _refuse(websocket, "invalid or expired token")
            return
        if staff_id not in gateway.org.staff:
            await _refuse(websocket, "unknown staff member")
            return
        role = gateway.org.staff[staff_id].role
        await websocket.accept()
        # Attach before the snapshot: an update racing the snapshot then arrives twice
        # (the client keeps the newest by id) rather than not at all.
        connection = gateway.hub.attach(staff_id)
        gateway.core.staff_connected(staff_id)
        try:
            await websocket.send_json({"type": "hello", "staff_id": staff_id})
            snapshot = [a for a in gateway.visible_alarms(staff_id, "open")
                        if _role_sees(role, a)]
            for alarm in snapshot:
                await websocket.send_json(
                    {"type": "alarm", "alarm": _alarm_body(role, alarm, gateway)}
                )
            await websocket.send_json({"type": "sync", "open": [a.id for a in snapshot]})
            async with asyncio.TaskGroup() as group:
                group.create_task(_read(websocket, staff_id), name=f"ws read {staff_id}")
                group.create_task(_write(websocket, connection.outbox), name=f"ws write {staff_id}")
                group.create_task(_watch(connection.overflowed), name=f"ws watch {staff_id}")
        except* _TooSlowError:
            with contextlib.suppress(Exception):
                await websocket.close(code=1013, reason="too far behind; reconnect")
        except* (WebSocketDisconnect, WebSocketDisconnected, OSError):
            # WebSocketDisconnected: a send or receive after the client went away (Starlette
            # raises it instead of WebSocketDisconnect when the close came first).
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

    app.state.gateway = gateway
    _org_routes(app, gateway, sessions, registry)
    _device_routes(app, gateway, registry, claim_guard)

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


# -- shared pieces -----------------------------------------------------------------------------


def security_settings(gateway: Gateway) -> SecuritySettings:
    """``Settings.security``; for a settings object without it, ``token_ttl_s``."""
    configured = getattr(gateway.settings, "security", None)
    if isinstance(configured, SecuritySettings):
        return configured
    return SecuritySettings(access_ttl_s=gateway.settings.token_ttl_s)


class GatewayHooks:
    """Registry changes reach the running gateway: routing, supervision, audit."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def directory_changed(self) -> None:
        """New routing view for the core."""
        self.gateway.refresh_directory()

    def watch(self, device: Any) -> None:
        """Supervise the device from now."""
        self.gateway.watch.watch(device.id, device.type, device.heartbeat_s)

    def unwatch(self, device_id: str) -> None:
        """Stop supervising the device."""
        self.gateway.watch.supervisor.unwatch(device_id)

    def audit(self, actor: str, subject: str, detail: dict[str, Any]) -> None:
        """Every registry change is a provisioning audit entry."""
        self.gateway.audit.record(AuditKind.PROVISIONING, actor=actor, subject=subject,
                                  detail=detail)


def device_registry(gateway: Gateway) -> DeviceRegistry:
    """The gateway's registry (``gateway.registry`` if the runtime made one)."""
    existing = getattr(gateway, "registry", None)
    if isinstance(existing, DeviceRegistry):
        return existing
    settings = gateway.settings
    auth = getattr(settings, "broker_auth", None)
    files = None
    gateway_username = settings.mqtt.username or "trygg-gateway"
    if isinstance(auth, BrokerAuthSettings) and auth.enabled:
        base = settings.data_dir / "broker"
        files = BrokerFiles(auth.password_file or base / "passwd", auth.acl_file or base / "acl",
                            pid_file=auth.pid_file, pid=auth.pid)
        gateway_username = settings.mqtt.username or auth.gateway_username
    account = BrokerAccount(
        files, prefix=settings.mqtt.prefix, gateway_username=gateway_username,
        gateway_password=settings.mqtt.password, host=settings.mqtt.host,
        port=settings.mqtt.port,
    )
    return DeviceRegistry(settings.data_dir, gateway.org, account, GatewayHooks(gateway))


def _role_sees(role: str, alarm: Any) -> bool:
    """Technicians see technical alarms (device faults) only, never care alarms."""
    return role != "technician" or alarm.type is AlarmType.TECHNICAL


def _alarm_body(role: str, alarm: Any, gateway: Gateway) -> dict[str, Any]:
    """The alarm JSON; for technicians the recipient is cut to name and address."""
    return for_role(role, alarm_json(alarm, gateway.org))


def _require(member: StaffMember, *roles: str) -> None:
    if member.role not in roles:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"needs role {' or '.join(roles)}; you are {member.role}")


def _staff_json(member: StaffMember) -> dict[str, Any]:
    return {"id": member.id, "username": member.username, "name": member.name,
            "role": member.role, "team_ids": list(member.team_ids), "on_duty": member.on_duty,
            "phone": member.phone}


def _recipient_json(recipient: RecipientInfo, gateway: Gateway, *, full: bool
                    ) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": recipient.id, "name": recipient.name, "address": recipient.address,
        "devices": sorted(d.id for d in gateway.org.devices.values()
                          if d.recipient_id == recipient.id),
    }
    if full:
        body.update(team_id=recipient.team_id, entry_info=recipient.entry_info,
                    action_plan=recipient.action_plan)
    return body


def _org_routes(app: FastAPI, gateway: Gateway, sessions: RefreshStore,
                registry: DeviceRegistry) -> None:
    """Recipients for staff and technicians; organisation CRUD for administrators."""
    org = gateway.org

    def changed(member: StaffMember, what: str, subject: str, action: str) -> None:
        gateway.audit.record(AuditKind.CONFIG_CHANGE, actor=member.id, subject=subject,
                             detail={"what": what, "action": action})
        gateway.refresh_directory()

    def may_see_recipient(member: StaffMember, recipient: RecipientInfo) -> bool:
        if member.role in ("admin", "technician"):
            return True
        return recipient.team_id in member.team_ids

    @app.get("/api/v1/recipients", tags=["recipients"])
    async def list_recipients(member: Me) -> list[dict[str, Any]]:
        """Own teams' recipients (staff, leads); name and address only (technicians)."""
        full = member.role != "technician"
        return [_recipient_json(r, gateway, full=full) for r in org.recipients.values()
                if may_see_recipient(member, r)]

    @app.get("/api/v1/recipients/{recipient_id}", tags=["recipients"])
    async def get_recipient(recipient_id: IdPath, member: Me) -> dict[str, Any]:
        recipient = org.recipients.get(recipient_id)
        if recipient is None or not may_see_recipient(member, recipient):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no recipient {recipient_id!r}")
        full = member.role != "technician"
        gateway.audit.record("recipient_view", actor=member.id, subject=recipient_id,
                             detail={"recipient_id": recipient_id, "full": full})
        return _recipient_json(recipient, gateway, full=full)

    # -- administrators -------------------------------------------------------------------

    @app.get("/api/v1/admin/teams", tags=["admin"])
    async def list_teams(member: Me) -> list[dict[str, Any]]:
        _require(member, "admin")
        return [{"id": t.id, "name": t.name} for t in org.teams.values()]

    @app.put("/api/v1/admin/teams/{team_id}", tags=["admin"])
    async def put_team(team_id: IdPath, body: TeamIn, member: Me) -> dict[str, Any]:
        _require(member, "admin")
        if body.id != team_id:
            raise HTTPException(422, "id in body and path differ")
        org.put_team(Team(body.id, body.name))
        changed(member, "team", team_id, "put")
        return {"id": body.id, "name": body.name}

    @app.delete("/api/v1/admin/teams/{team_id}", status_code=204, tags=["admin"])
    async def delete_team(team_id: IdPath, member: Me) -> None:
        _require(member, "admin")
        if team_id not in org.teams:
            raise HTTPException(404, f"no team {team_id!r}")
        try:
            org.delete_team(team_id)
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        changed(member, "team", team_id, "delete")

    @app.get("/api/v1/admin/staff", tags=["admin"])
    async def list_staff(member: Me) -> list[dict[str, Any]]:
        _require(member, "admin")
        return [_staff_json(s) for s in org.staff.values()]

    @app.put("/api/v1/admin/staff/{staff_id}", tags=["admin"])
    async def put_staff(staff_id: IdPath, body: StaffIn, member: Me) -> dict[str, Any]:
        _require(member, "admin")
        if body.id != staff_id:
            raise HTTPException(422, "id in body and path differ")
        unknown = [t for t in body.team_ids if t not in org.teams]
        if unknown:
            raise HTTPException(422, f"unknown teams {unknown}")
        other = org.staff_by_username(body.username)
        if other is not None and other.id != staff_id:
            raise HTTPException(409, f"username {body.username!r} is taken")
        same_phone = org.staff_by_phone(body.phone) if body.phone else None
        if same_phone is not None and same_phone.id != staff_id:
            raise HTTPException(409, f"phone number is {same_phone.id}'s")
        existing = org.staff.get(staff_id)
        if body.password is not None:
            password_hash = await asyncio.to_thread(hash_password, body.password)
        elif existing is not None:
            password_hash = existing.password_hash
        else:
            raise HTTPException(422, "a new staff member needs a password")
        updated = StaffMember(staff_id, body.username, body.name, body.role,
                              tuple(body.team_ids), password_hash, body.on_duty, body.phone)
        org.put_staff(updated)
        if existing is not None and (existing.role != updated.role or body.password):
            await asyncio.to_thread(sessions.revoke_staff, staff_id)
        changed(member, "staff", staff_id, "put")
        return _staff_json(updated)

    @app.delete("/api/v1/admin/staff/{staff_id}", status_code=204, tags=["admin"])
    async def delete_staff(staff_id: IdPath, member: Me) -> None:
        _require(member, "admin")
        if staff_id not in org.staff:
            raise HTTPException(404, f"no staff member {staff_id!r}")
        if staff_id == member.id:
            raise HTTPException(409, "administrators cannot delete themselves")
        org.delete_staff(staff_id)
        await asyncio.to_thread(sessions.revoke_staff, staff_id)
        changed(member, "staff", staff_id, "delete")

    @app.get("/api/v1/admin/recipients", tags=["admin"])
    async def admin_recipients(member: Me) -> list[dict[str, Any]]:
        _require(member, "admin")
        return [_recipient_json(r, gateway, full=True) for r in org.recipients.values()]

    @app.put("/api/v1/admin/recipients/{recipient_id}", tags=["admin"])
    async def put_recipient(recipient_id: IdPath, body: RecipientIn, member: Me
                            ) -> dict[str, Any]:
        _require(member, "admin")
        if body.id != recipient_id:
            raise HTTPException(422, "id in body and path differ")
        if body.team_id not in org.teams:
            raise HTTPException(422, f"unknown team {body.team_id!r}")
        recipient = RecipientInfo(body.id, body.name, body.address, body.team_id,
                                  body.entry_info, body.action_plan)
        org.put_recipient(recipient)
        changed(member, "recipient", recipient_id, "put")
        return _recipient_json(recipient, gateway, full=True)

    @app.delete("/api/v1/admin/recipients/{recipient_id}", status_code=204, tags=["admin"])
    async def delete_recipient(recipient_id: IdPath, member: Me) -> None:
        _require(member, "admin")
        if recipient_id not in org.recipients:
            raise HTTPException(404, f"no recipient {recipient_id!r}")
        if any(a.recipient_id == recipient_id for a in gateway.core.alarms.values()):
            raise HTTPException(409, "the recipient has alarms; erase instead of delete")
        try:
            org.delete_recipient(recipient_id)
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        changed(member, "recipient", recipient_id, "delete")

    @app.get("/api/v1/admin/recipients/{recipient_id}/export", tags=["privacy"])
    async def export(recipient_id: IdPath, member: Me) -> dict[str, Any]:
        """Everything held about one recipient (data subject access)."""
        _require(member, "admin")
        if recipient_id not in org.recipients:
            raise HTTPException(404, f"no recipient {recipient_id!r}")
        body = await asyncio.to_thread(
            export_recipient, recipient_id, org=org, alarms=list(gateway.core.alarms.values()),
            data_dir=gateway.settings.data_dir, registry=registry)
        gateway.audit.record("privacy_export", actor=member.id, subject=recipient_id,
                             detail={"recipient_id": recipient_id})
        return body

    @app.post("/api/v1/admin/recipients/{recipient_id}/erase", tags=["privacy"])
    async def erase(recipient_id: IdPath, member: Me) -> dict[str, Any]:
        """Pseudonymise a recipient whose care ended; alarm statistics are kept."""
        _require(member, "admin")
        if recipient_id not in org.recipients:
            raise HTTPException(404, f"no recipient {recipient_id!r}")
        if any(a.recipient_id == recipient_id and a.state != "closed"
               for a in gateway.core.alarms.values()):
            raise HTTPException(409, "the recipient has open alarms; close them first")
        result = await asyncio.to_thread(
            erase_recipient, recipient_id, org=org, alarms=list(gateway.core.alarms.values()),
            data_dir=gateway.settings.data_dir, registry=registry, actor=member.id)
        gateway.refresh_directory()
        gateway.audit.record("privacy_erase", actor=member.id, subject=recipient_id,
                             detail={"recipient_id": recipient_id})
        return result


def _device_routes(app: FastAPI, gateway: Gateway, registry: DeviceRegistry,
                   claim_guard: LoginGuard) -> None:
    """The technician's device workflow and the device's own enrolment call."""

    def device_json(device_id: str) -> dict[str, Any]:
        info = gateway.org.devices.get(device_id)
        row = registry.get(device_id)
        seen = gateway.devices.get(device_id)
        watched = gateway.watch.supervisor.status(device_id)
        recipient = gateway.org.recipients.get(info.recipient_id or "") if info else None
        return {
            "id": device_id,
            "type": info.type if info else (row.type if row else None),
            "model": info.model if info else (row.model if row else ""),
            "serial": info.serial if info else (row.serial if row else ""),
            "state": row.state if row else "registered",
            "recipient": None if recipient is None else {
                "id": recipient.id, "name": recipient.name, "address": recipient.address},
            "health": {
                "supervised": watched is not None,
                "online": None if watched is None else not watched.offline,
                "last_seen": (seen.last_seen if seen else
                              (watched.last_seen if watched else None)),
                "battery": seen.battery if seen else None,
                "rssi": seen.rssi if seen else None,
                "firmware": (seen.firmware if seen and seen.firmware else
                             (row.firmware if row else None)),
            },
            "credentials": registry.has_credentials(device_id),
            "replaces": row.replaces if row else None,
            "replaced_by": row.replaced_by if row else None,
        }

    def run(member: StaffMember, operation: Any, *args: Any, **kwargs: Any) -> Any:
        _require(member, "technician", "admin")
        try:
            return operation(*args, actor=member.id, **kwargs)
        except ProvisioningError as exc:
            raise HTTPException(exc.code, exc.reason) from None

    @app.get("/api/v1/devices", tags=["devices"])
    async def list_devices(member: Me) -> list[dict[str, Any]]:
        _require(member, "technician", "admin")
        return [device_json(d) for d in sorted(gateway.org.devices)]

    @app.post("/api/v1/devices", status_code=201, tags=["devices"])
    async def register(body: DeviceIn, member: Me) -> dict[str, Any]:
        run(member, registry.register, device_id=body.id, type=body.type, serial=body.serial,
            model=body.model, firmware=body.firmware, recipient_id=body.recipient_id)
        return device_json(body.id)

    @app.get("/api/v1/devices/{device_id}", tags=["devices"])
    async def get_device(device_id: IdPath, member: Me) -> dict[str, Any]:
        _require(member, "technician", "admin")
        if device_id not in gateway.org.devices and registry.get(device_id) is None:
            raise HTTPException(404, f"no device {device_id!r}")
        return device_json(device_id)

    @app.get("/api/v1/devices/{device_id}/history", tags=["devices"])
    async def device_history(device_id: IdPath, member: Me) -> list[dict[str, Any]]:
        _require(member, "technician", "admin")
        return registry.history(device_id)

    @app.post("/api/v1/devices/{device_id}/bind", tags=["devices"])
    async def bind(device_id: IdPath, body: BindIn, member: Me) -> dict[str, Any]:
        run(member, registry.bind, device_id, body.recipient_id)
        return device_json(device_id)

    @app.post("/api/v1/devices/{device_id}/unbind", tags=["devices"])
    async def unbind(device_id: IdPath, member: Me) -> dict[str, Any]:
        run(member, registry.unbind, device_id)
        return device_json(device_id)

    @app.post("/api/v1/devices/{device_id}/swap", tags=["devices"])
    async def swap(device_id: IdPath, body: SwapIn, member: Me) -> dict[str, Any]:
        run(member, registry.swap, device_id, body.new_device_id)
        return device_json(body.new_device_id)

    @app.post("/api/v1/devices/{device_id}/decommission", tags=["devices"])
    async def decommission(device_id: IdPath, member: Me) -> dict[str, Any]:
        run(member, registry.decommission, device_id)
        return device_json(device_id)

    @app.post("/api/v1/devices/{device_id}/claim-code", tags=["devices"])
    async def claim_code(device_id: IdPath, member: Me) -> dict[str, Any]:
        claim = run(member, registry.issue_claim, device_id)
        return {"device_id": claim.device_id, "code": claim.code, "qr": claim.qr,
                "expires_at": claim.expires_at}

    @app.post("/api/v1/devices/{device_id}/test-alarm", status_code=202, tags=["devices"])
    async def test_alarm(device_id: IdPath, member: Me) -> dict[str, Any]:
        """Ask the device to raise a test alarm (provlarm) through the whole chain."""
        _require(member, "technician", "admin")
        if device_id not in gateway.org.devices:
            raise HTTPException(404, f"no device {device_id!r}")
        if gateway.link is None or not gateway.link.connected:
            raise HTTPException(503, "the broker is not connected; try again")
        ref = f"test-{int(time.time() * 1000)}"
        topic = f"{gateway.settings.mqtt.prefix}/{device_id}/cmd"
        gateway.link.publish_nowait(Outbound(topic, json.dumps(
            {"cmd": "test_alarm", "ref": ref}).encode()))
        gateway.audit.record("test_alarm", actor=member.id, subject=device_id,
                             detail={"ref": ref})
        return {"device_id": device_id, "ref": ref, "sent": True}

    @app.post("/api/v1/provisioning/claim", tags=["provisioning"],
              responses={429: {"description": "too many bad codes from this address"}})
    async def redeem(request: Request, body: Annotated[ClaimIn, Body()]) -> dict[str, Any]:
        """A device (or the installer's phone) exchanges its claim code for credentials."""
        address = request.client.host if request.client else "?"
        wait = claim_guard.retry_after(address, address)
        if wait > 0:
            raise HTTPException(429, "too many bad claim codes; try again later",
                                headers={"Retry-After": str(int(wait) + 1)})
        try:
            answer = await asyncio.to_thread(registry.redeem, body.code)
        except ProvisioningError as exc:
            claim_guard.failed(address, address)
            gateway.audit.record("claim_refused", actor=address, subject="provisioning",
                                 detail={"reason": exc.reason})
            raise HTTPException(exc.code, exc.reason) from None
        gateway.audit.record(AuditKind.PROVISIONING, actor=answer["device_id"],
                             subject=answer["device_id"], detail={"event": "credentials_sent"})
        return answer
