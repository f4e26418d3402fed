"""Telemetry time-series storage behind one port (docs/telemetry.md).

``SqliteSink`` is the embedded default (queries for the UI, 7 days raw, 90 days of 1-minute
rollups); ``InfluxSink`` writes to InfluxDB / VictoriaMetrics for the long term. Both are
``TelemetrySink``s: async context managers with a non-blocking, bounded ``offer``.
"""

from gateway.tsdb.base import (
    SHED_LOG_INTERVAL_S,
    BufferedSink,
    QueryNotSupportedError,
    Sample,
    SeriesPoint,
    SinkStats,
    TelemetrySink,
    TsdbError,
    Value,
    magnitude,
)
from gateway.tsdb.influx import InfluxSink, escape_key, escape_measurement, to_line
from gateway.tsdb.sqlite import MaintenanceResult, Retention, SqliteSink

__all__ = [
    "SHED_LOG_INTERVAL_S",
    "BufferedSink",
    "InfluxSink",
    "MaintenanceResult",
    "QueryNotSupportedError",
    "Retention",
    "Sample",
    "SeriesPoint",
    "SinkStats",
    "SqliteSink",
    "TelemetrySink",
    "TsdbError",
    "Value",
    "escape_key",
    "escape_measurement",
    "magnitude",
    "to_line",
]
