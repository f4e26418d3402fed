"""Telemetry time-series storage behind one port (docs/telemetry.md).

``SqliteSink`` is the embedded default (queries for the UI, 7 days raw, 90 days of 1-minute
rollups); ``InfluxSink`` writes to InfluxDB / VictoriaMetrics for the long term. Both are
``TelemetrySink``s: async context managers with a non-blocking, bounded ``offer``.
"""

from typing import Any

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


def __getattr__(name: str) -> Any:
    # The InfluxDB sink pulls in influxdb-client (a quarter of a second to import); only a
    # gateway configured for it should pay that at start, which is recovery time after a crash.
    if name in _INFLUX:
        from gateway.tsdb import influx

        return getattr(influx, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_INFLUX = frozenset({"InfluxSink", "escape_key", "escape_measurement", "to_line"})
