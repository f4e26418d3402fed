"""Logging in: OAuth2 password form, rotating refresh tokens, logout, who am I."""

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, ConfigDict, Field

from gateway.audit import AuditKind
from gateway.auth import verify_password, verify_unknown
from gateway.errors import TooManyError
from gateway.org import StaffMember
from gateway.security import RefreshError
from gateway.web.deps import WebGateway, WebState, staff_dependency
from gateway.web.schemas import MeOut, documented, errors


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


def _unauthorised(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, reason,
                         headers={"WWW-Authenticate": "Bearer"})


def router(gw: WebGateway, state: WebState) -> APIRouter:
    """``/api/v1/auth/*`` and ``/api/v1/me``."""
    api = APIRouter(tags=["auth"])
    Me = Annotated[StaffMember, Depends(staff_dependency(gw))]
    security, guard, sessions = state.security, state.guard, state.sessions

    def tokens_for(member: StaffMember, family_token: str | None = None) -> TokenOut:
        return TokenOut(
            access_token=state.issuer.issue(member.id),
            expires_in=security.access_ttl_s,
            refresh_token=family_token or sessions.issue(member.id),
        )

    @api.post("/api/v1/auth/token", response_model=TokenOut,
              responses=errors(400, 401, 422, 429))
    async def login(
        request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()]
    ) -> TokenOut:
        address = request.client.host if request.client else "?"
        username = form.username[:64]
        wait = guard.retry_after(username, address)
        if wait > 0:
            gw.audit.record("login_refused", actor=username, subject="staff-api",
                detail={"address": address, "reason": "locked"})
            raise TooManyError("too many failed logins; try again later",
                               headers={"Retry-After": str(int(wait) + 1)})
        member = gw.org.staff_by_username(form.username)
        if member is None:
            # Hash anyway: an unknown name takes as long as a wrong password.
            await asyncio.to_thread(verify_unknown, form.password)
            ok = False
        else:
            ok = await asyncio.to_thread(verify_password, member.password_hash, form.password)
        if not ok or member is None:
            gw.audit.record(AuditKind.LOGIN_FAILED, actor=username,
                            subject="staff-api", detail={"address": address})
            for key in guard.failed(username, address):
                gw.audit.record("login_locked", actor=username, subject=key,
                detail={"address": address})
            raise _unauthorised("wrong username or password")
        guard.succeeded(username)
        gw.audit.record(AuditKind.LOGIN, actor=member.id, subject="staff-api",
                detail={"address": address})
        return tokens_for(member)

    @api.post("/api/v1/auth/refresh", response_model=TokenOut,
              responses=errors(400, 401, 422))
    async def refresh(body: RefreshIn) -> TokenOut:
        try:
            staff_id, rotated = await asyncio.to_thread(sessions.rotate, body.refresh_token)
        except RefreshError as exc:
            gw.audit.record("refresh_refused", actor="?", subject="staff-api",
                detail={"reason": str(exc)})
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc)) from None
        member = gw.org.staff.get(staff_id)
        if member is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown staff member")
        return tokens_for(member, rotated)

    @api.post("/api/v1/auth/logout", **documented(None, 400, 422, status=204))
    async def logout(body: RefreshIn) -> None:
        await asyncio.to_thread(sessions.revoke, body.refresh_token)

    @api.get("/api/v1/me", **documented(MeOut, 401))
    async def me(member: Me) -> dict[str, Any]:
        return {
            "id": member.id,
            "username": member.username,
            "name": member.name,
            "role": member.role,
            "team_ids": list(member.team_ids),
        }

    return api
