"""Simulated trygg devices that speak the public MQTT device contract (docs/simulator.md).

For the demo, integration and soak tests, and benchmarks::

    async with Fleet(make_specs(10), prefix="trygg/v1", seed=1) as fleet:
        ref = fleet.raise_alarm("sim-0000", "manual")
        assert await fleet.wait_all_acked(timeout=5)
"""

from .connection import Backoff
from .device import AlarmResult
from .faults import (
    ALL_FAULTS,
    FaultEvent,
    FaultKind,
    FaultPlan,
    malformed_payload,
    oversize_payload,
)
from .fleet import Fleet, FleetStats, percentile
from .models import (
    MODELS,
    PROFILES,
    DeviceKind,
    DeviceModel,
    DeviceSpec,
    Person,
    load_devices_file,
    make_specs,
    specs_from_devices,
)

__all__ = [
    "ALL_FAULTS",
    "MODELS",
    "PROFILES",
    "AlarmResult",
    "Backoff",
    "DeviceKind",
    "DeviceModel",
    "DeviceSpec",
    "FaultEvent",
    "FaultKind",
    "FaultPlan",
    "Fleet",
    "FleetStats",
    "Person",
    "load_devices_file",
    "make_specs",
    "malformed_payload",
    "oversize_payload",
    "percentile",
    "specs_from_devices",
]
