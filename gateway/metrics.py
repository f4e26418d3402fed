"""Prometheus metrics of one gateway (own registry, so several gateways can share a process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class _AlarmStates(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("trygg_alarms", "Alarms in the core by state", labels=["state"])
        for state, count in sorted(self._counts().items()):
            family.add_metric([state], count)
        yield family


class Metrics:
    """Every metric the gateway exports at ``/metrics``."""

    def __init__(self, alarm_counts: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.registry.register(_AlarmStates(alarm_counts))
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
        self.mqtt_dropped = Gauge(
            "trygg_mqtt_outbound_dropped", "Outbound messages dropped (disconnected/full)",
            registry=r,
        )
        self.staff_connections = Gauge(
            "trygg_staff_connections", "Open staff WebSocket connections", registry=r
        )
        self.telemetry_shed = Gauge(
            "trygg_telemetry_shed", "Telemetry samples shed under overload", registry=r
        )
        self.telemetry_written = Gauge(
            "trygg_telemetry_written", "Telemetry samples written", registry=r
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
        self.staff_actions = Counter(
            "trygg_staff_actions", "Staff actions by kind and outcome", ["action", "outcome"],
            registry=r,
        )
