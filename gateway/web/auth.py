"""Logging in: OAuth2 password form, rotating refresh tokens, logout, who am I."""

import asyncio
import hashlib
import hmac
from collections.abc import Callable
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


def audit_name(secret: str) -> Callable[[str], str]:
    """How a typed username appears in the audit log: the staff id when it is a known
    username, else ``unknown:`` and a keyed hash.

    What is typed into the username field is sometimes a password (typed one field too
    early), so an unknown one is never stored as typed. The hash is keyed with a key derived
    from ``secret_key``: attempts at the same name can still be told apart and counted, but
    a dictionary of likely passwords cannot be run against the log without the key.
    """
    key = hashlib.sha256(b"trygg audit username\0" + secret.encode()).digest()

    def name(typed: str) -> str:
        digest = hmac.new(key, typed.encode(), hashlib.sha256).hexdigest()
        return f"unknown:{digest[:16]}"

    return name


def router(gw: WebGateway, state: WebState) -> APIRouter:
    """``/api/v1/auth/*`` and ``/api/v1/me``."""
    api = APIRouter(tags=["auth"])
    Me = Annotated[StaffMember, Depends(staff_dependency(gw))]
    security, guard, sessions = state.security, state.guard, state.sessions
    unknown_name = audit_name(gw.settings.secret_key)

    def who(username: str) -> str:
        member = gw.org.staff_by_username(username)
        return member.id if member is not None else unknown_name(username)

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
            gw.audit.record("login_refused", actor=who(username), subject="staff-api",
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
            actor = member.id if member is not None else unknown_name(username)
            gw.audit.record(AuditKind.LOGIN_FAILED, actor=actor, subject="staff-api",
                            detail={"address": address, "known_user": member is not None})
            for key in guard.failed(username, address):
                # The lock's key names the typed username: audit it as the actor above.
                subject = f"user:{actor}" if key.startswith("user:") else key
                gw.audit.record("login_locked", actor=actor, subject=subject,
                                detail={"address": address})
            raise _unauthorised("wrong username or password")
        guard.succeeded(username)
        gw.audit.record(AuditKind.LOGIN, actor=member.id, subject="staff-api",
                detail={"address": address})
        # In a thread: in a cluster the session is a PostgreSQL row (gateway.stores).
        return tokens_for(member, await asyncio.to_thread(sessions.issue, member.id))

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
