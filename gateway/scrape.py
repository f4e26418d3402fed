"""What ``/metrics`` reads from a running gateway at scrape time (``gateway.metrics``).

Counts the components keep anyway (the telemetry sink's, the MQTT lanes', Web Push's, the
test alarms') and the supervised fleet by type and team are gathered here, when Prometheus
asks, instead of being copied into metrics on every change: the hot paths stay as they are.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from gateway.metrics import DeviceStates, Totals

if TYPE_CHECKING:
    from gateway.runtime import Gateway

# The team label of a device without a recipient (or whose recipient has no team).
NO_TEAM = "-"
PUSH_OUTCOMES = ("sent", "failed", "expired", "refused", "dropped")


def totals(gw: Gateway) -> Totals:
    """The gateway's cumulative counts (zero for what has not started yet)."""
    dropped = gw.link.dropped_outbound + gw.telemetry_link.dropped_outbound
    services = gw.services
    if services is None:
        return Totals(mqtt_outbound_dropped=dropped)
    sink = services.telemetry.stats
    push = services.push.stats
    return Totals(
        telemetry_shed=sink.shed,
        telemetry_written=sink.written,
        mqtt_outbound_dropped=dropped,
        push=tuple((outcome, getattr(push, outcome)) for outcome in PUSH_OUTCOMES),
        provlarm=(("passed", services.provlarm.passed), ("failed", services.provlarm.failed)),
    )


def device_states(gw: Gateway) -> DeviceStates:
    """Supervised devices counted by (type, team, online/offline)."""
    org = gw.org
    counts: Counter[tuple[str, str, str]] = Counter()
    for status in gw.watch.supervisor.statuses():
        device = org.devices.get(status.device_id)
        if device is None:
            device_type, team = "unknown", NO_TEAM
        else:
            recipient = org.recipients.get(device.recipient_id or "")
            device_type = device.type
            team = recipient.team_id if recipient is not None and recipient.team_id else NO_TEAM
        counts[device_type, team, "offline" if status.offline else "online"] += 1
    return counts
