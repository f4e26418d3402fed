"""A municipality's initial load: the organisation and its rosters from one TOML file.

    [[teams]]       id, name
    [[staff]]       id, username, name, role (staff|lead|technician|admin), teams = [...],
                    password (hashed on import, never stored) or password_hash,
                    phone (E.164, "+46701234567": for the SMS fallback; unique)
    [[recipients]]  id, name, address, team, entry_info, action_plan,
                    phone (E.164: staff call the person from the alarm)
    [[devices]]     id, type, recipient, model, serial, heartbeat_s
    [rosters.<team id>]   day / evening / night = [staff ids] every day of the week;
                          on_call_day / on_call_evening / on_call_night likewise

Every row is validated before anything is written; a bad file changes nothing and says
which row is wrong. Rosters live in their own small table beside the organisation.
"""

from __future__ import annotations

import json
import sqlite3
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from alarms.roster import Roster, RosterKey, Shift, every_day
from gateway.org import DeviceInfo, OrgChange, OrgStore, RecipientInfo, StaffMember, Team
from gateway.smscodec import e164
from gateway.strength import password_problem

_ID = r"^[A-Za-z0-9_.:-]{1,64}$"


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeamRow(_Row):
    id: str = Field(pattern=_ID)
    name: str = Field(min_length=1, max_length=100)


class StaffRow(_Row):
    id: str = Field(pattern=_ID)
    username: str = Field(pattern=_ID)
    name: str = Field(min_length=1, max_length=100)
    role: str = Field(pattern=r"^(staff|lead|technician|admin)$")
    teams: list[str] = []
    # Checked in ``parse`` (gateway.strength), with the row named in the reason.
    password: str | None = Field(default=None, max_length=200)
    password_hash: str | None = None
    phone: str | None = None

    @field_validator("phone")
    @classmethod
    def _phone_is_e164(cls, value: str | None) -> str | None:
        return None if value is None else e164(value)


class RecipientRow(_Row):
    id: str = Field(pattern=_ID)
    name: str = Field(min_length=1, max_length=100)
    address: str = Field(min_length=1, max_length=200)
    team: str
    entry_info: str = ""
    action_plan: str = ""
    phone: str | None = None

    @field_validator("phone")
    @classmethod
    def _phone_is_e164(cls, value: str | None) -> str | None:
        return None if value is None else e164(value)


class DeviceRow(_Row):
    id: str = Field(pattern=_ID)
    type: str = Field(min_length=1, max_length=32)
    recipient: str | None = None
    model: str = ""
    serial: str = ""
    heartbeat_s: float | None = Field(default=None, gt=0)


class RosterRow(_Row):
    day: list[str] = []
    evening: list[str] = []
    night: list[str] = []
    on_call_day: list[str] = []
    on_call_evening: list[str] = []
    on_call_night: list[str] = []


class OrgFile(_Row):
    teams: list[TeamRow] = []
    staff: list[StaffRow] = []
    recipients: list[RecipientRow] = []
    devices: list[DeviceRow] = []
    rosters: dict[str, RosterRow] = {}


class OrgFileError(ValueError):
    """The file is not a valid organisation; nothing was imported."""


def parse(path: Path) -> OrgFile:
    """Read and validate a file, including references between rows."""
    try:
        data = OrgFile.model_validate(tomllib.loads(path.read_text()))
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise OrgFileError(f"{path}: {exc}") from None
    teams = {t.id for t in data.teams}
    staff = {s.id for s in data.staff}
    recipients = {r.id for r in data.recipients}
    problems: list[str] = []
    for s in data.staff:
        problems += [f"staff {s.id}: unknown team {t!r}" for t in s.teams if t not in teams]
        if s.password is None and s.password_hash is None:
            problems.append(f"staff {s.id}: needs password or password_hash")
        elif s.password is not None:
            problem = password_problem(s.password, (s.username, s.name, s.id))
            if problem is not None:
                problems.append(f"staff {s.id}: {problem}")
    phones: dict[str, str] = {}
    for s in data.staff:
        if s.phone is not None and phones.setdefault(s.phone, s.id) != s.id:
            # A reply is attributed to whoever has the number: it must name one person.
            problems.append(f"staff {s.id}: phone {s.phone} is also {phones[s.phone]}'s")
    problems += [f"recipient {r.id}: unknown team {r.team!r}"
                 for r in data.recipients if r.team not in teams]
    problems += [f"device {d.id}: unknown recipient {d.recipient!r}"
                 for d in data.devices if d.recipient is not None and d.recipient not in recipients]
    for team_id, roster in data.rosters.items():
        if team_id not in teams:
            problems.append(f"rosters.{team_id}: unknown team")
        for field, ids in roster.model_dump().items():
            problems += [f"rosters.{team_id}.{field}: unknown staff {i!r}"
                         for i in ids if i not in staff]
    if problems:
        raise OrgFileError("; ".join(problems))
    return data


def import_file(path: Path, org: OrgStore, rosters: RosterStore) -> dict[str, int]:
    """Validate ``path`` completely, then write it. Returns counts per kind."""
    data = parse(path)
    for change in changes_of(data):
        org.apply(change)
    rosters.put_many({team_id: roster.model_dump() for team_id, roster in data.rosters.items()})
    return counts_of(data)


def changes_of(data: OrgFile) -> list[OrgChange]:
    """The file's entities as organisation changes, teams first (what a cluster shares)."""
    changes: list[OrgChange] = [OrgChange("team", t.id, Team(t.id, t.name)) for t in data.teams]
    for s in data.staff:
        # Imported here: the roster store is on the alarm path, password hashing is not.
        from gateway.auth import hash_password

        secret = s.password_hash or hash_password(s.password or "")
        changes.append(OrgChange("staff", s.id, StaffMember(
            s.id, s.username, s.name, s.role, tuple(s.teams), secret, phone=s.phone)))
    changes += [OrgChange("recipient", r.id, RecipientInfo(
        r.id, r.name, r.address, r.team, r.entry_info, r.action_plan, r.phone))
        for r in data.recipients]
    changes += [OrgChange("device", d.id, DeviceInfo(
        d.id, d.type, d.recipient, d.model, d.serial, d.heartbeat_s)) for d in data.devices]
    return changes


def counts_of(data: OrgFile) -> dict[str, int]:
    """What an import writes, per kind."""
    return {"teams": len(data.teams), "staff": len(data.staff),
            "recipients": len(data.recipients), "devices": len(data.devices),
            "rosters": len(data.rosters)}


class RosterStore:
    """Per-team rosters (who works which shift, who is on call), in SQLite.

    One gateway's adapter of ``gateway.stores.rosters.RosterBook``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path)
        conn.execute("CREATE TABLE IF NOT EXISTS rosters (team_id TEXT PRIMARY KEY, body TEXT)")
        return conn

    def put(self, team_id: str, body: dict[str, list[str]]) -> None:
        """Replace a team's roster."""
        self.put_many({team_id: body})

    def put_many(self, rosters: Mapping[str, Mapping[str, list[str]]]) -> None:
        """Replace several teams' rosters in one transaction."""
        conn = self._connect()
        try:
            with conn:
                conn.executemany("INSERT OR REPLACE INTO rosters VALUES (?, ?)",
                                 [(team, json.dumps(dict(body))) for team, body in rosters.items()])
        finally:
            conn.close()

    def rosters(self) -> dict[str, Roster]:
        """Every team's roster for the routing directory."""
        conn = self._connect()
        try:
            rows = conn.execute("SELECT team_id, body FROM rosters").fetchall()
        finally:
            conn.close()
        return {team_id: roster_of(team_id, json.loads(body)) for team_id, body in rows}

    def refresh(self) -> bool:
        """Nothing to do: ``rosters`` reads the file every time."""
        return False

    def close(self) -> None:
        """Nothing held open."""


def roster_of(team_id: str, body: dict[str, Any]) -> Roster:
    """A team's roster from its stored JSON body (the file's ``[rosters.TEAM]`` table)."""
    weekly: dict[RosterKey, frozenset[str]] = {}
    on_call: dict[RosterKey, frozenset[str]] = {}
    for shift in Shift:
        if body.get(shift.value):
            weekly.update(every_day(shift, frozenset(body[shift.value])))
        if body.get(f"on_call_{shift.value}"):
            on_call.update(every_day(shift, frozenset(body[f"on_call_{shift.value}"])))
    return Roster(team_id, weekly=weekly, on_call_weekly=on_call)
