"""Who is who: the slice of the organisation the core needs to route an alarm.

The gateway builds a new ``Directory`` whenever the organisation changes and hands it to
the core; the core never looks anything up elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Recipient:
    """A care recipient (brukare) and the team that answers their alarms."""

    id: str
    team_id: str


@dataclass(frozen=True, slots=True)
class Staff:
    """A staff member, the teams they answer for, and whether they are on duty now."""

    id: str
    team_ids: frozenset[str]
    on_duty: bool = True
    role: str = "staff"


@dataclass(frozen=True, slots=True)
class Directory:
    """Devices to recipients, recipients to teams, teams to staff."""

    device_recipient: Mapping[str, str] = field(default_factory=dict)
    recipients: Mapping[str, Recipient] = field(default_factory=dict)
    staff: Mapping[str, Staff] = field(default_factory=dict)
    device_types: Mapping[str, str] = field(default_factory=dict)

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
        everyone on duty is noisy, but silence would be worse.
        """
        return frozenset(
            s.id
            for s in self.staff.values()
            if s.on_duty and (team_id is None or team_id in s.team_ids)
        )

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
