"""Who gets an alarm: first routing and each escalation step. Pure functions of the directory.

First routing prefers staff who can act now: on duty by the roster, connected (when the
gateway reports presence) and, when the team wants it, not busy with another alarm. Each
filter is dropped again rather than leave nobody: an alarm that reaches a busy colleague
is better than one that reaches no one. Fire and water skip the filters and go to the whole
team at once.

The result is written into the journal (the ``routed`` hop's and escalation entries'
targets), so presence and rosters never need to be replayed.
"""

from __future__ import annotations

from dataclasses import dataclass

from alarms.directory import Directory
from alarms.model import (
    SAFETY_DEVICE_TYPES,
    TECHNICIAN_ONLY_KINDS,
    Alarm,
    AlarmType,
    EscalationKind,
)


@dataclass(frozen=True, slots=True)
class Availability:
    """What the gateway knows about staff right now, beyond the directory.

    ``connected`` is None when the gateway does not report presence: then everyone counts
    as connected, as before presence existed.
    """

    connected: frozenset[str] | None = None
    busy: frozenset[str] = frozenset()


def fallback(directory: Directory, team_id: str | None, now: float) -> frozenset[str]:
    """Somebody, when the team has nobody on duty: on call, next level, lead, team, anyone.

    Silence is the one outcome that is never acceptable, so the last resort is every staff
    member on duty anywhere.
    """
    on_call = directory.on_call_at(team_id, now)
    if on_call:
        return on_call
    neighbours = frozenset().union(
        *(directory.on_duty_at(t, now) for t in directory.next_level_teams(team_id, now))
    )
    if neighbours:
        return neighbours
    lead = directory.lead_of(team_id)
    if lead is not None:
        return frozenset({lead})
    members = directory.members(team_id) & directory.on_duty(None)
    return members or directory.on_duty(None)


def whole_team(directory: Directory, team_id: str | None, now: float) -> frozenset[str]:
    """Everyone of the team on duty now, plus whoever is on call; else the fallbacks."""
    team = directory.on_duty_at(team_id, now) | directory.on_call_at(team_id, now)
    return team or fallback(directory, team_id, now)


def first_targets(
    directory: Directory,
    *,
    alarm_type: AlarmType,
    device_id: str,
    team_id: str | None,
    now: float,
    availability: Availability,
    kind: str | None = None,
) -> frozenset[str]:
    """The staff a new alarm is routed to. ``kind``: a technical alarm's kind (ref prefix)."""
    if alarm_type is AlarmType.TECHNICAL:
        targets = directory.technicians()
        if (kind not in TECHNICIAN_ONLY_KINDS
                and directory.device_types.get(device_id) in SAFETY_DEVICE_TYPES):
            # The person is unprotected while their alarm is down: the care team must know.
            targets |= directory.on_duty_at(team_id, now)
        return targets or whole_team(directory, team_id, now)
    policy = directory.policy(team_id)
    duty = directory.on_duty_at(team_id, now)
    if not duty:
        return fallback(directory, team_id, now)
    if alarm_type in policy.whole_team_types:
        return duty | directory.on_call_at(team_id, now)
    available = duty
    if availability.connected is not None:
        available &= availability.connected
    if policy.busy_excludes:
        available -= availability.busy
    return available or duty


def step_targets(
    directory: Directory, alarm: Alarm, kind: EscalationKind, now: float
) -> frozenset[str]:
    """Who an escalation step alerts, beyond those who already have the alarm."""
    team_id = alarm.team_id
    if kind is EscalationKind.TEAM:
        return whole_team(directory, team_id, now)
    if kind is EscalationKind.NEXT_LEVEL:
        found = frozenset().union(
            *(directory.on_duty_at(t, now) for t in directory.next_level_teams(team_id, now))
        )
        lead = directory.lead_of(team_id)
        if lead is not None:
            found |= {lead}
        found |= directory.on_call_at(team_id, now)
        return found or whole_team(directory, team_id, now)
    if kind is EscalationKind.SMS:
        return sms_targets(directory, alarm, now)
    if kind is EscalationKind.LEAD:
        lead = directory.lead_of(team_id)
        found = directory.on_call_at(team_id, now) | (
            frozenset({lead}) if lead is not None else frozenset()
        )
        return found or whole_team(directory, team_id, now)
    # CENTRE and REMINDER alert nobody new: the alarm centre is not staff, and a reminder
    # goes to those who already have the alarm.
    return frozenset()


def sms_targets(directory: Directory, alarm: Alarm, now: float) -> frozenset[str]:
    """Who is texted when no phone confirmed receipt: the team on duty, those with a phone.

    If none of them has a phone, whoever the fallbacks name (on call, next level, lead)
    and has one. Empty when nobody reachable by SMS exists: the core then escalates at once.
    """
    reachable = frozenset(s.id for s in directory.staff.values() if s.sms)
    return (whole_team(directory, alarm.team_id, now) & reachable) or (
        fallback(directory, alarm.team_id, now) & reachable
    )
