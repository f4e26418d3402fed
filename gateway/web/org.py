"""Care recipients for staff; the organisation (teams, staff, recipients) for administrators;
a recipient's data export and erasure (GDPR)."""

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from gateway.audit import AuditKind
from gateway.auth import hash_password
from gateway.errors import ConflictError, InvalidError, NotFoundError
from gateway.org import RecipientInfo, StaffMember, Team
from gateway.privacy import erase_recipient, export_recipient
from gateway.smscodec import e164
from gateway.strength import password_problem
from gateway.web.deps import (
    ID_PATTERN,
    IdPath,
    WebGateway,
    WebState,
    audit_read,
    require,
    staff_dependency,
)
from gateway.web.schemas import (
    EraseOut,
    ExportOut,
    RecipientOut,
    StaffOut,
    TeamOut,
    documented,
)


class TeamIn(BaseModel):
    """A team, as administrators write it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    name: str = Field(min_length=1, max_length=200)


class StaffIn(BaseModel):
    """A staff member, as administrators write it; ``password`` only to set or change it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    username: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    role: Literal["staff", "lead", "technician", "admin"]
    team_ids: list[str] = Field(default_factory=list, max_length=50)
    # Strength (length, deny list, zxcvbn) is checked after authorization, with a reason
    # (gateway.strength.password_problem).
    password: str | None = Field(default=None, max_length=200)
    on_duty: bool = True
    # E.164, for the SMS fallback (docs/sms.md); normalised, unique among staff.
    phone: Annotated[str, AfterValidator(e164)] | None = Field(default=None, max_length=32)


class RecipientIn(BaseModel):
    """A care recipient, as administrators write it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    address: str = Field(min_length=1, max_length=500)
    team_id: str = Field(pattern=ID_PATTERN)
    entry_info: str = Field(default="", max_length=2000)
    action_plan: str = Field(default="", max_length=10000)
    # E.164; staff call the person from the alarm (``tel:``).
    phone: Annotated[str, AfterValidator(e164)] | None = Field(default=None, max_length=32)


def staff_json(member: StaffMember) -> dict[str, Any]:
    """A staff member as administrators read it (never the password hash)."""
    return {"id": member.id, "username": member.username, "name": member.name,
            "role": member.role, "team_ids": list(member.team_ids), "on_duty": member.on_duty,
            "phone": member.phone}


def staff_changes(before: StaffMember | None, after: StaffMember, password_set: bool
                  ) -> dict[str, Any]:
    """What a staff change changed, for the audit log: role, teams, on-duty, whether a
    password was set; names, username and phone only as "changed" (entries carry ids, never
    names), the password never."""
    if before is None:
        return {"created": True, "role": after.role, "team_ids": sorted(after.team_ids),
                "on_duty": after.on_duty, "password_set": password_set}
    changes: dict[str, Any] = {}
    if before.role != after.role:
        changes["role"] = {"from": before.role, "to": after.role}
    added = sorted(set(after.team_ids) - set(before.team_ids))
    removed = sorted(set(before.team_ids) - set(after.team_ids))
    if added or removed:
        changes["team_ids"] = {"added": added, "removed": removed}
    if before.on_duty != after.on_duty:
        changes["on_duty"] = {"from": before.on_duty, "to": after.on_duty}
    for name in ("name", "username", "phone"):
        if getattr(before, name) != getattr(after, name):
            changes[f"{name}_changed"] = True
    if password_set:
        changes["password_set"] = True
    return changes


def recipient_json(recipient: RecipientInfo, gw: WebGateway, *, full: bool) -> dict[str, Any]:
    """A recipient; ``full`` adds the team, entry information and action plan."""
    body: dict[str, Any] = {
        "id": recipient.id, "name": recipient.name, "address": recipient.address,
        "devices": sorted(d.id for d in gw.org.devices.values()
                          if d.recipient_id == recipient.id),
    }
    if full:
        body.update(team_id=recipient.team_id, entry_info=recipient.entry_info,
                    action_plan=recipient.action_plan, phone=recipient.phone)
    return body


def router(gw: WebGateway, state: WebState) -> APIRouter:
    """``/api/v1/recipients``, ``/api/v1/admin/*``."""
    api = APIRouter()
    Me = Annotated[StaffMember, Depends(staff_dependency(gw))]
    org = gw.org
    sessions = state.sessions
    registry = gw.registry


    def changed(member: StaffMember, what: str, subject: str, action: str,
                **detail: Any) -> None:
        gw.audit.record(AuditKind.CONFIG_CHANGE, actor=member.id, subject=subject,
                        detail={"what": what, "action": action, **detail})
        gw.refresh_directory()

    def may_see_recipient(member: StaffMember, recipient: RecipientInfo) -> bool:
        if member.role in ("admin", "technician"):
            return True
        return recipient.team_id in member.team_ids

    @api.get("/api/v1/recipients", tags=["recipients"], **documented(list[RecipientOut], 401))
    async def list_recipients(member: Me) -> list[dict[str, Any]]:
        """Own teams' recipients (staff, leads); name and address only (technicians)."""
        full = member.role != "technician"
        mine = [r for r in org.recipients.values() if may_see_recipient(member, r)]
        audit_read(gw, member.id, "recipients", (r.id for r in mine), full=full)
        return [recipient_json(r, gw, full=full) for r in mine]

    @api.get("/api/v1/recipients/{recipient_id}", tags=["recipients"],
             **documented(RecipientOut, 401, 404, 422))
    async def get_recipient(recipient_id: IdPath, member: Me) -> dict[str, Any]:
        recipient = org.recipients.get(recipient_id)
        if recipient is None or not may_see_recipient(member, recipient):
            raise NotFoundError(f"no recipient {recipient_id!r}")
        full = member.role != "technician"
        gw.audit.record("recipient_view", actor=member.id, subject=recipient_id,
                detail={"recipient_id": recipient_id, "full": full})
        return recipient_json(recipient, gw, full=full)

    # -- administrators -------------------------------------------------------------------

    @api.get("/api/v1/admin/teams", tags=["admin"], **documented(list[TeamOut], 401, 403))
    async def list_teams(member: Me) -> list[dict[str, Any]]:
        require(member, "admin")
        audit_read(gw, member.id, "admin/teams", org.teams)
        return [{"id": t.id, "name": t.name} for t in org.teams.values()]

    @api.put("/api/v1/admin/teams/{team_id}", tags=["admin"],
             **documented(TeamOut, 400, 401, 403, 422))
    async def put_team(team_id: IdPath, body: TeamIn, member: Me) -> dict[str, Any]:
        require(member, "admin")
        if body.id != team_id:
            raise InvalidError("id in body and path differ")
        org.put_team(Team(body.id, body.name))
        changed(member, "team", team_id, "put")
        return {"id": body.id, "name": body.name}

    @api.delete("/api/v1/admin/teams/{team_id}", tags=["admin"],
                **documented(None, 401, 403, 404, 409, 422, status=204))
    async def delete_team(team_id: IdPath, member: Me) -> None:
        require(member, "admin")
        if team_id not in org.teams:
            raise NotFoundError(f"no team {team_id!r}")
        try:
            org.delete_team(team_id)
        except ValueError as exc:
            raise ConflictError(str(exc)) from None
        changed(member, "team", team_id, "delete")

    @api.get("/api/v1/admin/staff", tags=["admin"], **documented(list[StaffOut], 401, 403))
    async def list_staff(member: Me) -> list[dict[str, Any]]:
        require(member, "admin")
        audit_read(gw, member.id, "admin/staff", org.staff)
        return [staff_json(s) for s in org.staff.values()]

    @api.put("/api/v1/admin/staff/{staff_id}", tags=["admin"],
             **documented(StaffOut, 400, 401, 403, 409, 422))
    async def put_staff(staff_id: IdPath, body: StaffIn, member: Me) -> dict[str, Any]:
        require(member, "admin")
        if body.id != staff_id:
            raise InvalidError("id in body and path differ")
        unknown = [t for t in body.team_ids if t not in org.teams]
        if unknown:
            raise InvalidError(f"unknown teams {unknown}")
        other = org.staff_by_username(body.username)
        if other is not None and other.id != staff_id:
            raise ConflictError(f"username {body.username!r} is taken")
        same_phone = org.staff_by_phone(body.phone) if body.phone else None
        if same_phone is not None and same_phone.id != staff_id:
            raise ConflictError(f"phone number is {same_phone.id}'s")
        existing = org.staff.get(staff_id)
        if body.password is not None:
            problem = password_problem(body.password, (body.username, body.name, staff_id))
            if problem is not None:
                raise InvalidError(problem)
            password_hash = await asyncio.to_thread(hash_password, body.password)
        elif existing is not None:
            password_hash = existing.password_hash
        else:
            raise InvalidError("a new staff member needs a password")
        updated = StaffMember(staff_id, body.username, body.name, body.role,
                              tuple(body.team_ids), password_hash, body.on_duty, body.phone)
        org.put_staff(updated)
        if existing is not None and (existing.role != updated.role or body.password):
            await asyncio.to_thread(sessions.revoke_staff, staff_id)
        changed(member, "staff", staff_id, "put",
                changes=staff_changes(existing, updated, body.password is not None))
        return staff_json(updated)

    @api.delete("/api/v1/admin/staff/{staff_id}", tags=["admin"],
                **documented(None, 401, 403, 404, 409, 422, status=204))
    async def delete_staff(staff_id: IdPath, member: Me) -> None:
        require(member, "admin")
        if staff_id not in org.staff:
            raise NotFoundError(f"no staff member {staff_id!r}")
        if staff_id == member.id:
            raise ConflictError("administrators cannot delete themselves")
        org.delete_staff(staff_id)
        await asyncio.to_thread(sessions.revoke_staff, staff_id)
        changed(member, "staff", staff_id, "delete")

    @api.get("/api/v1/admin/recipients", tags=["admin"],
             **documented(list[RecipientOut], 401, 403))
    async def admin_recipients(member: Me) -> list[dict[str, Any]]:
        require(member, "admin")
        audit_read(gw, member.id, "admin/recipients", org.recipients, full=True)
        return [recipient_json(r, gw, full=True) for r in org.recipients.values()]

    @api.put("/api/v1/admin/recipients/{recipient_id}", tags=["admin"],
             **documented(RecipientOut, 400, 401, 403, 422))
    async def put_recipient(recipient_id: IdPath, body: RecipientIn, member: Me
                            ) -> dict[str, Any]:
        require(member, "admin")
        if body.id != recipient_id:
            raise InvalidError("id in body and path differ")
        if body.team_id not in org.teams:
            raise InvalidError(f"unknown team {body.team_id!r}")
        recipient = RecipientInfo(body.id, body.name, body.address, body.team_id,
                                  body.entry_info, body.action_plan, body.phone)
        org.put_recipient(recipient)
        changed(member, "recipient", recipient_id, "put")
        return recipient_json(recipient, gw, full=True)

    @api.delete("/api/v1/admin/recipients/{recipient_id}", tags=["admin"],
                **documented(None, 401, 403, 404, 409, 422, status=204))
    async def delete_recipient(recipient_id: IdPath, member: Me) -> None:
        require(member, "admin")
        if recipient_id not in org.recipients:
            raise NotFoundError(f"no recipient {recipient_id!r}")
        if any(a.recipient_id == recipient_id for a in gw.core.alarms.values()):
            raise ConflictError("the recipient has alarms; erase instead of delete")
        try:
            org.delete_recipient(recipient_id)
        except ValueError as exc:
            raise ConflictError(str(exc)) from None
        changed(member, "recipient", recipient_id, "delete")

    @api.get("/api/v1/admin/recipients/{recipient_id}/export", tags=["privacy"],
             **documented(ExportOut, 401, 403, 404, 422))
    async def export(recipient_id: IdPath, member: Me) -> dict[str, Any]:
        """Everything held about one recipient (data subject access)."""
        require(member, "admin")
        if recipient_id not in org.recipients:
            raise NotFoundError(f"no recipient {recipient_id!r}")
        body = await asyncio.to_thread(
            export_recipient, recipient_id, org=org, alarms=list(gw.core.alarms.values()),
            data_dir=gw.settings.data_dir, registry=registry, audit=gw.audit.target)
        gw.audit.record("privacy_export", actor=member.id, subject=recipient_id,
                detail={"recipient_id": recipient_id})
        return body

    @api.post("/api/v1/admin/recipients/{recipient_id}/erase", tags=["privacy"],
              **documented(EraseOut, 401, 403, 404, 409, 422))
    async def erase(recipient_id: IdPath, member: Me) -> dict[str, Any]:
        """Pseudonymise a recipient whose care ended; alarm statistics are kept."""
        require(member, "admin")
        if recipient_id not in org.recipients:
            raise NotFoundError(f"no recipient {recipient_id!r}")
        if any(a.recipient_id == recipient_id and a.state != "closed"
               for a in gw.core.alarms.values()):
            raise ConflictError("the recipient has open alarms; close them first")
        result = await asyncio.to_thread(
            erase_recipient, recipient_id, org=org, alarms=list(gw.core.alarms.values()),
            data_dir=gw.settings.data_dir, registry=registry, actor=member.id)
        gw.refresh_directory()
        gw.audit.record("privacy_erase", actor=member.id, subject=recipient_id,
                detail={"recipient_id": recipient_id})
        return result

    return api
