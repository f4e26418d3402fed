"""Who may see which alarm: pure rules over an alarm and the directory (no I/O).

The gateway's HTTP API, its WebSocket, Web Push and SMS all show alarms to people; they all
ask here, so one rule decides everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable

from alarms.directory import Directory
from alarms.model import Alarm, AlarmType


def administrators(directory: Directory) -> frozenset[str]:
    """Everyone with the admin role: they see every alarm."""
    return frozenset(s.id for s in directory.staff.values() if s.role == "admin")


def audience(alarm: Alarm, directory: Directory) -> frozenset[str]:
    """Staff whose clients show this alarm: its targets, its owner and administrators."""
    owner = alarm.owner
    return (alarm.targets | administrators(directory)
            | (frozenset((owner,)) if owner else frozenset()))


def may_see(staff_id: str, alarm: Alarm, directory: Directory) -> bool:
    """Whether a staff member may see an alarm.

    Everyone it was routed to, its owner and administrators; and the team's staff for care
    alarms. A sensor's technical alarm stays with the technicians: it would only distract the
    care team from the alarms they must act on.
    """
    if staff_id in audience(alarm, directory):
        return True
    if alarm.type is AlarmType.TECHNICAL:
        return False
    return directory.may_handle(staff_id, alarm.team_id)


def role_sees(role: str, alarm: Alarm) -> bool:
    """Technicians see technical alarms (device faults) only, never care alarms."""
    return role != "technician" or alarm.type is AlarmType.TECHNICAL


# Roles that answer alarms in person: whom an alarm can be handed to. Technicians never see
# care alarms, and administrators are not out on the night shift.
CARE_ROLES = frozenset({"staff", "lead"})


def colleagues(alarm: Alarm, directory: Directory, staff_id: str) -> list[str]:
    """Whom ``staff_id`` may forward (hand over) an alarm to, as the core would accept:
    on duty, allowed to act on the alarm (its team, or alerted by it), a carer, not
    themselves and not whoever has it now. Sorted by id."""
    return sorted(
        s.id for s in directory.staff.values()
        if s.id not in (staff_id, alarm.owner) and s.on_duty and s.role in CARE_ROLES
        and (directory.may_handle(s.id, alarm.team_id) or s.id in alarm.targets)
    )


def visible(staff_id: str, alarms: Iterable[Alarm], directory: Directory) -> list[Alarm]:
    """The alarms of ``alarms`` a staff member may see, in the given order."""
    return [a for a in alarms if may_see(staff_id, a, directory)]
