"""Who is who: the slice of the organisation the core needs to route an alarm.

The gateway builds a new ``Directory`` whenever the organisation changes and hands it to
the core; the core never looks anything up elsewhere. Everything added for rosters and
escalation has a default that keeps the old behaviour: without a roster a team's staff are
on duty according to their ``on_duty`` flag, and every team gets ``DEFAULT_POLICY``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from alarms.causes import DEFAULT_CLOSE_CAUSES
from alarms.escalation import DEFAULT_POLICY, TeamPolicy
from alarms.roster import Roster, Shift, ShiftSlot, ShiftTimes


@dataclass(frozen=True, slots=True)
class Recipient:
    """A care recipient (brukare) and the team that answers their alarms."""

    id: str
    team_id: str


@dataclass(frozen=True, slots=True)
class Staff:
    """A staff member, the teams they answer for, and whether they are on duty now.

    ``on_duty`` is the manual switch (sick, on leave: False). For a team with a roster a
    member is on duty when the switch is on *and* the roster has them in the current shift.
    """

    id: str
    team_ids: frozenset[str]
    on_duty: bool = True
    role: str = "staff"
    # Reachable by SMS (has a phone number): only they can be texted when the app fails.
    sms: bool = False


@dataclass(frozen=True, slots=True)
class Directory:
    """Devices to recipients, recipients to teams, teams to staff, rosters and policies."""

    device_recipient: Mapping[str, str] = field(default_factory=dict)
    recipients: Mapping[str, Recipient] = field(default_factory=dict)
    staff: Mapping[str, Staff] = field(default_factory=dict)
    device_types: Mapping[str, str] = field(default_factory=dict)
    # team id -> roster. Teams without one use the staff's ``on_duty`` flags alone.
    rosters: Mapping[str, Roster] = field(default_factory=dict)
    # team id -> routing and escalation policy; absent teams get ``default_policy``.
    policies: Mapping[str, TeamPolicy] = field(default_factory=dict)
    default_policy: TeamPolicy = DEFAULT_POLICY
    shift_times: ShiftTimes = field(default_factory=ShiftTimes)
    close_causes: tuple[str, ...] = DEFAULT_CLOSE_CAUSES
    # The directory never changes (a new organisation is a new directory), so who is on duty
    # per team is computed once: routing asks for every alarm, and a storm is thousands.
    _on_duty: dict[str | None, frozenset[str]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def knows_device(self, device_id: str) -> bool:
        """Whether ``device_id`` is provisioned."""
        return device_id in self.device_recipient

    def team_of_device(self, device_id: str) -> tuple[str | None, str | None]:
        """The (recipient, team) a device's alarms belong to."""
        recipient_id = self.device_recipient.get(device_id)
        if recipient_id is None:
            return None, None
        recipient = self.recipients.get(recipient_id)
        return recipient_id, (recipient.team_id if recipient else None)

    def on_duty(self, team_id: str | None) -> frozenset[str]:
        """On-duty staff of a team; for an alarm without a team, every on-duty staff member.

        An alarm whose recipient has no team must still reach a human: falling back to
        everyone on duty is noisy, but silence would be worse. This ignores rosters; use
        ``on_duty_at`` when the time is known.
        """
        found = self._on_duty.get(team_id)
        if found is None:
            found = self._on_duty[team_id] = frozenset(
                s.id
                for s in self.staff.values()
                if s.on_duty and (team_id is None or team_id in s.team_ids)
            )
        return found

    def members(self, team_id: str | None) -> frozenset[str]:
        """Every member of a team, on duty or not (every staff member for no team)."""
        return frozenset(
            s.id for s in self.staff.values() if team_id is None or team_id in s.team_ids
        )

    def shift_at(self, now: float) -> ShiftSlot:
        """The shift in force at ``now``."""
        return self.shift_times.slot_at(now)

    def on_duty_at(self, team_id: str | None, now: float) -> frozenset[str]:
        """Staff of a team on duty at ``now``: switched on, and rostered if the team has one."""
        duty = self.on_duty(team_id)
        roster = self.rosters.get(team_id) if team_id is not None else None
        if roster is None:
            return duty
        return duty & roster.working(self.shift_at(now))

    def on_call_at(self, team_id: str | None, now: float) -> frozenset[str]:
        """Staff of a team on call (beredskap) at ``now``; empty without a roster."""
        roster = self.rosters.get(team_id) if team_id is not None else None
        if roster is None:
            return frozenset()
        return roster.on_call(self.shift_at(now)) & frozenset(self.staff)

    def policy(self, team_id: str | None) -> TeamPolicy:
        """The routing and escalation policy of a team."""
        if team_id is None:
            return self.default_policy
        return self.policies.get(team_id, self.default_policy)

    def lead_of(self, team_id: str | None) -> str | None:
        """The team lead, if the team has one who is in the directory."""
        lead = self.policy(team_id).lead_id
        return lead if lead in self.staff else None

    def next_level_teams(self, team_id: str | None, now: float) -> tuple[str, ...]:
        """Where the NEXT_LEVEL step goes now: the night patrol at night, else neighbours."""
        policy = self.policy(team_id)
        if self.shift_at(now).shift is Shift.NIGHT and policy.night_patrol_teams:
            return policy.night_patrol_teams
        return policy.next_level_teams

    def technicians(self) -> frozenset[str]:
        """Technicians and administrators: everyone who answers technical alarms."""
        return frozenset(
            s.id for s in self.staff.values() if s.role in ("technician", "admin")
        )

    def may_handle(self, staff_id: str, team_id: str | None) -> bool:
        """Whether a staff member may act on an alarm of ``team_id``."""
        member = self.staff.get(staff_id)
        if member is None:
            return False
        if member.role in ("admin", "technician") or team_id is None:
            return True
        return team_id in member.team_ids
