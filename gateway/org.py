"""The organisation: teams, staff, care recipients and their devices, in SQLite.

Changes are rare (an import, a technician binding a device) and go straight to disk; the
whole organisation is also held in memory, and every change produces a new ``Directory``
for the alarm core.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeAlias, runtime_checkable

from alarms.directory import Directory, Recipient, Staff
from alarms.escalation import (
    RECOMMENDED_POLICY,
    SMS_DELIVERY_TIMEOUT_S,
    EscalationStep,
    SmsRule,
    TeamPolicy,
    sms_schedule,
)
from alarms.model import EscalationKind


@dataclass(frozen=True, slots=True)
class Team:
    """A team (area) of home-care staff."""

    id: str
    name: str


@dataclass(frozen=True, slots=True)
class StaffMember:
    """A login. ``password_hash`` is an argon2 hash, never the password."""

    id: str
    username: str
    name: str
    role: str
    team_ids: tuple[str, ...]
    password_hash: str
    on_duty: bool = True
    # E.164 (``+46701234567``): where the SMS fallback texts them (docs/sms.md); None: never.
    phone: str | None = None


@dataclass(frozen=True, slots=True)
class RecipientInfo:
    """A care recipient (brukare): what staff need to find and help them."""

    id: str
    name: str
    address: str
    team_id: str
    entry_info: str = ""
    action_plan: str = ""
    # E.164: staff call the person before going, or from the door (a ``tel:`` link).
    phone: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A provisioned device and whom it protects."""

    id: str
    type: str
    recipient_id: str | None
    model: str = ""
    serial: str = ""
    # Overrides the type's heartbeat interval (devices.types) for this device.
    heartbeat_s: float | None = None


OrgEntity: TypeAlias = "Team | StaffMember | RecipientInfo | DeviceInfo"

_KINDS: dict[str, type[Any]] = {
    "team": Team, "staff": StaffMember, "recipient": RecipientInfo, "device": DeviceInfo,
}


@dataclass(frozen=True, slots=True)
class OrgChange:
    """One entity created, replaced (``value``) or deleted (``value`` None).

    What a cluster replicates between gateways (gateway.cluster); ``body``/``decode`` are
    its wire form.
    """

    kind: str
    id: str
    value: Team | StaffMember | RecipientInfo | DeviceInfo | None

    def body(self) -> str | None:
        """The value as JSON, None for a deletion."""
        return None if self.value is None else json.dumps(dataclasses.asdict(self.value))

    @classmethod
    def decode(cls, kind: str, entity_id: str, body: str | None) -> OrgChange:
        """The change a ``body`` describes; ValueError for an unknown kind or shape."""
        factory = _KINDS.get(kind)
        if factory is None:
            raise ValueError(f"unknown organisation kind {kind!r}")
        if body is None:
            return cls(kind, entity_id, None)
        fields = json.loads(body)
        if kind == "staff":
            fields["team_ids"] = tuple(fields["team_ids"])
        value = factory(**fields)
        if value.id != entity_id:
            raise ValueError(f"{kind} {entity_id!r} carries the id {value.id!r}")
        return cls(kind, entity_id, value)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS teams (id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS staff (
    id TEXT PRIMARY KEY, username TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
    role TEXT NOT NULL, team_ids TEXT NOT NULL, password_hash TEXT NOT NULL,
    on_duty INTEGER NOT NULL DEFAULT 1, phone TEXT);
CREATE TABLE IF NOT EXISTS recipients (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, address TEXT NOT NULL,
    team_id TEXT NOT NULL REFERENCES teams(id), entry_info TEXT NOT NULL DEFAULT '',
    action_plan TEXT NOT NULL DEFAULT '', phone TEXT);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, recipient_id TEXT REFERENCES recipients(id),
    model TEXT NOT NULL DEFAULT '', serial TEXT NOT NULL DEFAULT '', heartbeat_s REAL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class EscalationTimes(Protocol):
    """The ladder settings (gateway.config.EscalationSettings)."""

    team_s: float
    next_level_s: float
    centre_s: float
    presence_deadline_s: float
    reminder_s: float
    centre_retry_s: float

    @property
    def has_centre(self) -> bool:
        """Whether an alarm centre is configured to escalate to."""


@runtime_checkable
class SmsRules(Protocol):
    """The SMS fallback settings (gateway.config.EscalationSettings with ``[sms]`` set)."""

    @property
    def sms_rules(self) -> tuple[SmsRule, ...]: ...

    sms_delivery_timeout_s: float


class OrgStore:
    """Organisation data with an in-memory copy. Writes are synchronous and rare."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False)
        # Erased personal data must not linger in free pages (gateway/privacy.py).
        self._conn.execute("PRAGMA secure_delete=ON")
        self._conn.executescript(_SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(staff)")}
        if "phone" not in columns:
            # A store from before the SMS fallback: add the column, nobody has a phone yet.
            with self._conn:
                self._conn.execute("ALTER TABLE staff ADD COLUMN phone TEXT")
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(recipients)")}
        if "phone" not in columns:
            # A store from before recipients had phone numbers.
            with self._conn:
                self._conn.execute("ALTER TABLE recipients ADD COLUMN phone TEXT")
        self._mutex = threading.Lock()
        self.teams: dict[str, Team] = {}
        self.staff: dict[str, StaffMember] = {}
        self.recipients: dict[str, RecipientInfo] = {}
        self.devices: dict[str, DeviceInfo] = {}
        # Told of every change made through this store (not of ``apply``): a cluster
        # replicates them to the other gateways.
        self.listeners: list[Callable[[OrgChange], None]] = []
        self._load()

    def close(self) -> None:
        """Close the database."""
        self._conn.close()

    def _load(self) -> None:
        c = self._conn
        self.teams = {r[0]: Team(*r) for r in c.execute("SELECT id, name FROM teams")}
        self.staff = {
            r[0]: StaffMember(
                r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), r[5], bool(r[6]), r[7]
            )
            for r in c.execute(
                "SELECT id, username, name, role, team_ids, password_hash, on_duty, phone "
                "FROM staff"
            )
        }
        self.recipients = {
            r[0]: RecipientInfo(*r)
            for r in c.execute(
                "SELECT id, name, address, team_id, entry_info, action_plan, phone"
                " FROM recipients"
            )
        }
        self.devices = {
            r[0]: DeviceInfo(*r)
            for r in c.execute(
                "SELECT id, type, recipient_id, model, serial, heartbeat_s FROM devices"
            )
        }

    def is_empty(self) -> bool:
        """Whether nothing has been seeded or imported yet."""
        return not self.teams

    def put_team(self, team: Team) -> None:
        """Create or replace a team."""
        with self._mutex, self._conn:
            self._conn.execute("INSERT OR REPLACE INTO teams VALUES (?, ?)", (team.id, team.name))
        self.teams[team.id] = team
        self._changed(OrgChange("team", team.id, team))

    def put_staff(self, member: StaffMember) -> None:
        """Create or replace a staff member."""
        with self._mutex, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO staff (id, username, name, role, team_ids, "
                "password_hash, on_duty, phone) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    member.id,
                    member.username,
                    member.name,
                    member.role,
                    json.dumps(list(member.team_ids)),
                    member.password_hash,
                    int(member.on_duty),
                    member.phone,
                ),
            )
        self.staff[member.id] = member
        self._changed(OrgChange("staff", member.id, member))

    def put_recipient(self, recipient: RecipientInfo) -> None:
        """Create or replace a care recipient."""
        with self._mutex, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO recipients (id, name, address, team_id, entry_info,"
                " action_plan, phone) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    recipient.id,
                    recipient.name,
                    recipient.address,
                    recipient.team_id,
                    recipient.entry_info,
                    recipient.action_plan,
                    recipient.phone,
                ),
            )
        self.recipients[recipient.id] = recipient
        self._changed(OrgChange("recipient", recipient.id, recipient))

    def put_device(self, device: DeviceInfo) -> None:
        """Create or replace a device."""
        with self._mutex, self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO devices VALUES (?, ?, ?, ?, ?, ?)",
                (
                    device.id,
                    device.type,
                    device.recipient_id,
                    device.model,
                    device.serial,
                    device.heartbeat_s,
                ),
            )
        self.devices[device.id] = device
        self._changed(OrgChange("device", device.id, device))

    def delete_device(self, device_id: str) -> None:
        """Remove a device (decommissioned); its alarms keep their device id."""
        with self._mutex, self._conn:
            self._conn.execute("DELETE FROM devices WHERE id = ?", (device_id,))
        self.devices.pop(device_id, None)
        self._changed(OrgChange("device", device_id, None))

    def delete_staff(self, staff_id: str) -> None:
        """Remove a login."""
        with self._mutex, self._conn:
            self._conn.execute("DELETE FROM staff WHERE id = ?", (staff_id,))
        self.staff.pop(staff_id, None)
        self._changed(OrgChange("staff", staff_id, None))

    def delete_team(self, team_id: str) -> None:
        """Remove a team; refused while recipients or staff still belong to it."""
        if any(r.team_id == team_id for r in self.recipients.values()) or any(
            team_id in s.team_ids for s in self.staff.values()
        ):
            raise ValueError(f"team {team_id!r} still has recipients or staff")
        with self._mutex, self._conn:
            self._conn.execute("DELETE FROM teams WHERE id = ?", (team_id,))
        self.teams.pop(team_id, None)
        self._changed(OrgChange("team", team_id, None))

    def delete_recipient(self, recipient_id: str) -> None:
        """Remove a recipient; refused while a device is bound to them."""
        if any(d.recipient_id == recipient_id for d in self.devices.values()):
            raise ValueError(f"recipient {recipient_id!r} still has devices bound")
        with self._mutex, self._conn:
            self._conn.execute("DELETE FROM recipients WHERE id = ?", (recipient_id,))
        self.recipients.pop(recipient_id, None)
        self._changed(OrgChange("recipient", recipient_id, None))

    def _changed(self, change: OrgChange) -> None:
        for listener in self.listeners:
            listener(change)

    def apply(self, change: OrgChange) -> None:
        """Apply a change another gateway made: stored, listeners not told.

        No integrity checks: the other gateway checked, and changes may arrive in an order
        where a device names a recipient that arrives a moment later.
        """
        listeners, self.listeners = self.listeners, []
        try:
            value = change.value
            if value is None:
                table = {"team": "teams", "staff": "staff", "recipient": "recipients",
                         "device": "devices"}[change.kind]
                with self._mutex, self._conn:
                    self._conn.execute(f"DELETE FROM {table} WHERE id = ?", (change.id,))
                getattr(self, table).pop(change.id, None)
            elif isinstance(value, Team):
                self.put_team(value)
            elif isinstance(value, StaffMember):
                self.put_staff(value)
            elif isinstance(value, RecipientInfo):
                self.put_recipient(value)
            else:
                self.put_device(value)
        finally:
            self.listeners = listeners

    def meta(self, key: str) -> str | None:
        """A bookkeeping value (e.g. how far this store followed the cluster's changes)."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Store a bookkeeping value."""
        with self._mutex, self._conn:
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def vacuum(self) -> None:
        """Rewrite the file so that nothing deleted survives anywhere in it."""
        with self._mutex:
            self._conn.execute("VACUUM")

    def staff_by_phone(self, phone: str) -> StaffMember | None:
        """The staff member with this E.164 phone number (numbers are unique)."""
        for member in self.staff.values():
            if member.phone == phone:
                return member
        return None

    def staff_by_username(self, username: str) -> StaffMember | None:
        """Look up a login name."""
        for member in self.staff.values():
            if member.username == username:
                return member
        return None

    def directory(self, escalation: EscalationTimes | None = None) -> Directory:
        """The routing view of the organisation for the alarm core."""
        base = RECOMMENDED_POLICY
        if escalation is not None:
            base = dataclasses.replace(
                base,
                # Without an alarm centre the ladder ends at the next level; reminders to
                # everyone who has the alarm follow (alarms.escalation), rather than a step
                # that would hand the alarm to nobody.
                ladder=(
                    EscalationStep(EscalationKind.TEAM, escalation.team_s),
                    EscalationStep(EscalationKind.NEXT_LEVEL, escalation.next_level_s),
                    *((EscalationStep(EscalationKind.CENTRE, escalation.centre_s),)
                      if escalation.has_centre else ()),
                ),
                presence_deadline_s=escalation.presence_deadline_s,
                reminder_s=escalation.reminder_s,
                centre_retry_s=escalation.centre_retry_s,
            )
        # The SMS fallback, when configured: per team, from the rules (docs/sms.md).
        rules: tuple[SmsRule, ...] = ()
        delivery_timeout_s = SMS_DELIVERY_TIMEOUT_S
        if isinstance(escalation, SmsRules):
            rules = escalation.sms_rules
            delivery_timeout_s = escalation.sms_delivery_timeout_s
        base = dataclasses.replace(base, sms_after_s=sms_schedule(rules, None),
                                   sms_delivery_timeout_s=delivery_timeout_s)
        policies: dict[str, TeamPolicy] = {}
        for team in self.teams.values():
            leads = sorted(
                s.id for s in self.staff.values() if s.role == "lead" and team.id in s.team_ids
            )
            # Until rosters name them, every other team is the next level: a neighbour is
            # better than nobody.
            others = tuple(sorted(t for t in self.teams if t != team.id))
            policies[team.id] = dataclasses.replace(
                base, lead_id=leads[0] if leads else None, next_level_teams=others,
                sms_after_s=sms_schedule(rules, team.id),
            )
        return Directory(
            default_policy=base,
            policies=policies,
            device_recipient={
                d.id: d.recipient_id for d in self.devices.values() if d.recipient_id
            },
            recipients={r.id: Recipient(r.id, r.team_id) for r in self.recipients.values()},
            staff={
                s.id: Staff(s.id, frozenset(s.team_ids), s.on_duty, s.role, s.phone is not None)
                for s in self.staff.values()
            },
            device_types={d.id: d.type for d in self.devices.values()},
        )
