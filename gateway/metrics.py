"""Prometheus metrics of one gateway (own registry, so several gateways can share a process).

Naming follows Prometheus' conventions (docs/operations.md): counters end in ``_total``, a
unit is in the name and is a base unit (``_seconds``, ``_bytes``). Counts that a component
already keeps (the telemetry sink's, Web Push's, the test alarms') are read at scrape time by
``_Totals`` and exported as counters, rather than copied into gauges.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeAlias

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.buildinfo import build_info

# (device type, team, "online" | "offline") -> devices; "-" for a device without a team.
DeviceStates: TypeAlias = Mapping[tuple[str, str, str], int]


@dataclass(frozen=True, slots=True)
class Totals:
    """Cumulative counts kept by other components, read when ``/metrics`` is scraped."""

    telemetry_shed: int = 0
    telemetry_written: int = 0
    mqtt_outbound_dropped: int = 0
    # (outcome, count) pairs: Web Push ("sent", "failed", ...) and test alarms.
    push: tuple[tuple[str, int], ...] = ()
    provlarm: tuple[tuple[str, int], ...] = ()


class _AlarmStates(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("trygg_alarms", "Alarms in the core by state", labels=["state"])
        for state, count in sorted(self._counts().items()):
            family.add_metric([state], count)
        yield family


class _Totals(Collector):
    def __init__(self, totals: Callable[[], Totals]) -> None:
        self._totals = totals

    def describe(self) -> Iterator[Metric]:
        # Registration describes collectors; without this it would collect, reading a
        # gateway that is still being built.
        return self._families(Totals())

    def collect(self) -> Iterator[Metric]:
        return self._families(self._totals())

    @staticmethod
    def _families(totals: Totals) -> Iterator[Metric]:
        # CounterMetricFamily adds the ``_total`` suffix to the sample name.
        yield CounterMetricFamily("trygg_telemetry_shed", "Telemetry samples shed under overload",
                                  value=totals.telemetry_shed)
        yield CounterMetricFamily("trygg_telemetry_written", "Telemetry samples written",
                                  value=totals.telemetry_written)
        yield CounterMetricFamily(
            "trygg_mqtt_outbound_dropped",
            "Outbound messages dropped (disconnected/full)", value=totals.mqtt_outbound_dropped)
        push = CounterMetricFamily("trygg_push_notifications",
                                   "Web Push notifications by outcome", labels=["outcome"])
        for outcome, count in totals.push:
            push.add_metric([outcome], count)
        yield push
        provlarm = CounterMetricFamily("trygg_provlarm_results",
                                       "Daily test alarms judged, by outcome", labels=["outcome"])
        for outcome, count in totals.provlarm:
            provlarm.add_metric([outcome], count)
        yield provlarm


class _DeviceStates(Collector):
    def __init__(self, states: Callable[[], DeviceStates]) -> None:
        self._states = states

    def describe(self) -> Iterator[Metric]:
        return self._families({})

    def collect(self) -> Iterator[Metric]:
        return self._families(self._states())

    @staticmethod
    def _families(states: DeviceStates) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "trygg_devices", "Supervised devices by type, team and state (online/offline)",
            labels=["type", "team", "state"])
        for (device_type, team, state), count in sorted(states.items()):
            family.add_metric([device_type, team, state], count)
        yield family


def _no_totals() -> Totals:
    return Totals()


def _no_devices() -> DeviceStates:
    return {}


class Metrics:
    """Every metric the gateway exports at ``/metrics``."""

    def __init__(
        self,
        alarm_counts: Callable[[], dict[str, int]],
        *,
        totals: Callable[[], Totals] = _no_totals,
        devices: Callable[[], DeviceStates] = _no_devices,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The default registry's process_*, python_info and python_gc_* series: an own
        # registry has none unless they are registered on it.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.registry.register(_AlarmStates(alarm_counts))
        self.registry.register(_Totals(totals))
        self.registry.register(_DeviceStates(devices))
        build = build_info()
        Gauge("trygg_build_info", "The running build (always 1)", ["version", "commit"],
              registry=r).labels(build.version, build.commit).set(1)
        self.ingest = Counter(
            "trygg_ingest_messages", "Device messages received", ["channel"], registry=r
        )
        self.rejects = Counter(
            "trygg_rejected_messages", "Device messages rejected", ["reason"], registry=r
        )
        self.acks = Counter("trygg_device_acks", "Acks sent to devices", ["status"], registry=r)
        self.duplicates = Counter(
            "trygg_duplicate_alarms", "Resent alarms recognised and acked again", registry=r
        )
        self.journal_commit = Histogram(
            "trygg_journal_commit_seconds",
            "Journal commit time including fsync",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0),
            registry=r,
        )
        self.conflicts = Counter(
            "trygg_stale_decisions",
            "Decisions refused because another gateway changed the alarm first (redone)",
            registry=r,
        )
        self.skipped_records = Counter(
            "trygg_journal_records_skipped",
            "Journal records that contradict their alarm's chain (a bug upstream), not applied",
            registry=r,
        )
        self.leases = Gauge(
            "trygg_leases_held", "Kinds of once-only work this gateway does (cluster)",
            registry=r,
        )
        self.journal_failures = Counter(
            "trygg_journal_failures", "Journal batches that could not be stored", registry=r
        )
        self.mqtt_connected = Gauge(
            "trygg_mqtt_connected", "1 while the broker session is up", registry=r
        )
        self.staff_connections = Gauge(
            "trygg_staff_connections", "Open staff WebSocket connections", registry=r
        )
        # Response times per hop (seconds from `stored`), the KPI of alarms.kpi as it happens.
        self.response = Histogram(
            "trygg_response_seconds",
            "Time from stored to each later hop of care alarms",
            ["hop", "team"],
            buckets=(5, 15, 30, 60, 120, 180, 300, 600, 900, 1200, 1800, 3600, 7200),
            registry=r,
        )
        self.handler_errors = Counter(
            "trygg_handler_errors",
            "Messages a handler failed on (isolated: the next message is handled)",
            ["transport"], registry=r,
        )
        self.task_restarts = Counter(
            "trygg_task_restarts", "Supervised tasks restarted after a failure", ["task"],
            registry=r,
        )
        self.probe_age = Gauge(
            "trygg_probe_age_seconds",
            "Seconds since the internal probe last came round the ingest path", registry=r,
        )
        self.probe_round_trip = Histogram(
            "trygg_probe_round_trip_seconds",
            "Broker, receiver, codec, intake and pipeline: the internal probe's round trip",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0),
            registry=r,
        )
        self.probe_round_trips = Counter(
            "trygg_probe_round_trips", "Internal probes that came round the ingest path",
            registry=r,
        )
        self.probe_misses = Counter(
            "trygg_probe_misses", "Internal probes that did not come round in time", registry=r
        )
        self.staff_actions = Counter(
            "trygg_staff_actions", "Staff actions by kind and outcome", ["action", "outcome"],
            registry=r,
        )
