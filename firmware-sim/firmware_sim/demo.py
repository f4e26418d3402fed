"""The fleet that ``trygg demo`` runs: the demo's own provisioned devices, in a loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from firmware_sim.fleet import Fleet
from firmware_sim.models import specs_from_devices

# A demo should show alarms arriving without waiting hours: each simulated device raises
# about six alarms an hour, so twenty devices give one every half minute or so.
DEMO_ALARMS_PER_DEVICE_PER_HOUR = 6.0


@asynccontextmanager
async def demo_fleet(info: Mapping[str, Any], size: int) -> AsyncIterator[Fleet]:
    """Simulate the first ``size`` devices of the demo organisation against its broker."""
    devices = list(info["devices"])[:size]
    mqtt = info["mqtt"]
    fleet = Fleet(
        specs_from_devices(devices),
        host=mqtt["host"],
        port=int(mqtt["port"]),
        prefix=str(mqtt["prefix"]),
        alarm_rate_per_hour=DEMO_ALARMS_PER_DEVICE_PER_HOUR,
        client_id_prefix="trygg-demo",
    )
    async with fleet:
        yield fleet
