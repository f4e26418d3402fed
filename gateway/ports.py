"""The ports services depend on, instead of the gateway object (Protocols, no I/O here).

The composition root (``gateway.runtime.Gateway``) satisfies all of them; a test can hand a
service a small fake instead. Each service asks for the narrowest port it uses:

- ``Clock``: the time; a fake one drives deadlines in tests;
- ``Alarms``: read the core, journal an internal event (technical alarms, test results),
  ask whether this gateway holds the lease for once-only work;
- ``DeviceCommands``: send a device a command over its broker link;
- ``StaffChannel``: who is connected, and a notice to some staff members' clients;
- ``ServiceHost``: all of that plus the organisation, the audit log and the settings, for the
  services that touch everything (night cameras, the staff watch).

The web layer's own port, ``gateway.web.deps.WebGateway``, extends ``ServiceHost``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from alarms.core import AlarmCore
    from alarms.events import Event
    from alarms.model import Alarm
    from gateway.auditor import Auditor
    from gateway.config import Settings
    from gateway.hub import StaffHub
    from gateway.org import OrgStore


class Clock(Protocol):
    """Wall-clock time in epoch seconds."""

    def __call__(self) -> float:
        """Now."""


class Alarms(Protocol):
    """The alarm core as services see it: read it, and journal what they raise."""

    @property
    def core(self) -> AlarmCore:
        """The core (read it; never change it: changes go through the journal)."""

    def submit_internal(self, event: Event) -> Awaitable[None]:
        """Decide and journal an event the gateway raises itself."""

    def acts(self, lease: str) -> bool:
        """Whether this gateway does the once-only work guarded by ``lease``."""

    def settling(self, alarm_id: str) -> bool:
        """Whether a batch of this gateway's about the alarm is on its way to the journal."""

    def open_technical(self, ref_prefix: str) -> list[Alarm]:
        """Open technical alarms whose ref starts with ``ref_prefix``."""


class DeviceCommands(Protocol):
    """Commands to devices over the broker."""

    def send_command(self, device_id: str, payload: bytes) -> bool:
        """Queue ``payload`` on the device's ``cmd`` topic; False if the broker is away."""


class StaffChannel(Protocol):
    """The staff's clients."""

    @property
    def hub(self) -> StaffHub:
        """Live connections: send notices to some staff members' clients."""

    def connected_staff(self) -> frozenset[str]:
        """Staff with a client connected to this gateway or (in a cluster) another."""


class ServiceHost(Alarms, DeviceCommands, StaffChannel, Protocol):
    """Everything a service of the gateway may use."""

    @property
    def settings(self) -> Settings:
        """The gateway's settings."""

    @property
    def org(self) -> OrgStore:
        """The organisation: teams, staff, recipients, devices."""

    @property
    def audit(self) -> Auditor:
        """The tamper-evident audit log."""
