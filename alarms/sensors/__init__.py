"""Sensor rules: telemetry from home sensors in, alarms staff can act on out. Pure, no I/O.

See docs/sensor-rules.md. The gateway owns one ``SensorRuleEngine``, tells it which device
is in whose home (``assign_device``), each recipient's rules (``set_rules``) and staff
presence (``set_presence``), feeds it telemetry batches (``feed``) and the clock (``tick``),
and turns each ``RuleFiring`` into an alarm (``alarm_received``) or a technical alarm.
"""

from alarms.sensors.engine import (
    BATTERY_LOW,
    TECHNICAL_PRIORITY,
    FiringKind,
    Metric,
    RuleFiring,
    RuleId,
    Sample,
    SensorRuleEngine,
    alarm_received,
)
from alarms.sensors.rules import (
    BatteryRule,
    BedExitRule,
    DoorRule,
    FallRule,
    InactivityRule,
    LocalWindow,
    RecipientRules,
    SmokeRule,
    TemperatureRule,
    WaterRule,
)

__all__ = [
    "BATTERY_LOW",
    "TECHNICAL_PRIORITY",
    "BatteryRule",
    "BedExitRule",
    "DoorRule",
    "FallRule",
    "FiringKind",
    "InactivityRule",
    "LocalWindow",
    "Metric",
    "RecipientRules",
    "RuleFiring",
    "RuleId",
    "Sample",
    "SensorRuleEngine",
    "SmokeRule",
    "TemperatureRule",
    "WaterRule",
    "alarm_received",
]
