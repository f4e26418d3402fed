"""Device types of the contract: what they are and how often they must show life.

The heartbeat interval is the device firmware's promise; supervision allows 50 % grace on
top (alarms.supervision.GRACE_FRACTION). Safety alarms heartbeat every minute so a dead
button is found within ~90 s — minute-level supervision, as the field requires; battery
sensors heartbeat less often to save power.
"""

from __future__ import annotations

from types import MappingProxyType

HEARTBEAT_S: MappingProxyType[str, float] = MappingProxyType(
    {
        "alarm_unit": 60.0,
        "button": 60.0,
        "base_unit": 60.0,
        "fall": 90.0,
        "bed": 120.0,
        "door": 120.0,
        "motion": 120.0,
        "temperature": 180.0,
        "smoke": 180.0,
        "water": 180.0,
        "camera": 60.0,
    }
)

# An unknown type is supervised at the sensor pace rather than not at all.
DEFAULT_HEARTBEAT_S = 180.0


def heartbeat_s(device_type: str) -> float:
    """The expected heartbeat interval of a device type."""
    return HEARTBEAT_S.get(device_type, DEFAULT_HEARTBEAT_S)
