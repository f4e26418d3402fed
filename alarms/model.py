"""The alarm as the core sees it: an identity plus its chain of hops."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Hop(StrEnum):
    """The links of the alarm chain, in the only order they may occur."""

    RAISED = "raised"
    STORED = "stored"
    ROUTED = "routed"
    DELIVERED = "delivered"
    ACCEPTED = "accepted"
    ON_SITE = "on_site"
    CLOSED = "closed"


HOP_ORDER: dict[Hop, int] = {hop: index for index, hop in enumerate(Hop)}


class AlarmType(StrEnum):
    """Alarm types of the MQTT contract (docs/protocol.md)."""

    MANUAL = "manual"
    FALL = "fall"
    SMOKE = "smoke"
    WATER = "water"
    BED_EXIT = "bed_exit"
    DOOR = "door"
    INACTIVITY = "inactivity"
    TEMPERATURE = "temperature"
    TEST = "test"
    # A link or device fault (tekniskt larm): offline, battery, failed test, broker down.
    TECHNICAL = "technical"


# Priority 1 is the most urgent. Fire and water put the home itself at risk; a person who
# pressed the button or fell needs help now; sensor-derived risks come next; a test alarm
# proves the chain and must not disturb anyone.
PRIORITY: dict[AlarmType, int] = {
    AlarmType.SMOKE: 1,
    AlarmType.WATER: 1,
    AlarmType.MANUAL: 2,
    AlarmType.FALL: 2,
    AlarmType.BED_EXIT: 3,
    AlarmType.DOOR: 3,
    AlarmType.INACTIVITY: 3,
    AlarmType.TEMPERATURE: 3,
    AlarmType.TECHNICAL: 4,
    AlarmType.TEST: 9,
}

# Device types whose silence leaves a person unprotected: their technical alarms go to the
# care team as well as to technicians.
SAFETY_DEVICE_TYPES = frozenset({"alarm_unit", "button", "base_unit", "fall"})

# The device id under which the gateway raises technical alarms about its own links.
GATEWAY_DEVICE = "gateway"


@dataclass(frozen=True, slots=True)
class HopEntry:
    """One link of the chain: which hop, when (epoch seconds) and by whom."""

    hop: Hop
    at: float
    actor: str


@dataclass(frozen=True, slots=True)
class Alarm:
    """An alarm and its chain. ``state`` and ``owner`` are derived from the hops."""

    id: str
    device_id: str
    ref: str
    type: AlarmType
    priority: int
    recipient_id: str | None
    team_id: str | None
    device_ts_ms: int
    battery: float | None
    hops: tuple[HopEntry, ...]
    targets: frozenset[str] = frozenset()
    detail: str | None = None
    cause: str | None = None
    note: str | None = None

    @property
    def last_hop(self) -> Hop:
        """The furthest hop reached."""
        return self.hops[-1].hop

    @property
    def state(self) -> str:
        """``open`` until the alarm is closed, then ``closed``."""
        return "closed" if self.last_hop is Hop.CLOSED else "open"

    @property
    def owner(self) -> str | None:
        """The staff member who accepted the alarm, if anyone has."""
        for entry in self.hops:
            if entry.hop is Hop.ACCEPTED:
                return entry.actor
        return None

    def reached(self, hop: Hop) -> bool:
        """Whether the chain has reached ``hop`` (or gone past it)."""
        return HOP_ORDER[self.last_hop] >= HOP_ORDER[hop]

    def at(self, hop: Hop) -> float | None:
        """When ``hop`` was recorded, if it was."""
        for entry in self.hops:
            if entry.hop is hop:
                return entry.at
        return None
