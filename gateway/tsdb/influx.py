"""Long-term telemetry in InfluxDB (or anything speaking its v2 write API).

Each sample is one line of line protocol, formatted here rather than through
``influxdb_client.Point`` (about 85k vs 51k points/s measured):

    {metric},device_id={device_id}[,unit={unit}] value={float} {device_ts_ms}

A vector is written as fields ``v0..vN-1`` (``vector_mode="fields"``, lossless; keep windows
short, InfluxDB 3 limits columns per table) or as one field ``magnitude`` (its L2 norm,
``vector_mode="magnitude"``). VictoriaMetrics stores these as series
``{metric}_value``, ``{metric}_v0``..., ``{metric}_magnitude``.

influxdb-client's own batching mode drops points on HTTP errors unless an error callback is
attached, so it is not used: batching, bounding, shedding and retry are ``BufferedSink``'s,
and each batch is one call of the synchronous write API on the sink's own thread (the async
client would pull in aiohttp).

The sink is write-only: ``query`` raises ``QueryNotSupportedError``; dashboards read InfluxDB
with Flux / InfluxQL / SQL (Grafana) and the gateway UI reads the SQLite sink.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Literal, TypeAlias, cast

import urllib3.exceptions
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS, WriteApi
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from gateway.tsdb.base import (
    BufferedSink,
    QueryNotSupportedError,
    Sample,
    SeriesPoint,
    magnitude,
)

_LOGGER = logging.getLogger(__name__)

VectorMode: TypeAlias = Literal["fields", "magnitude"]

# Larger than the SQLite sink: this buffer rides out a server restart or a WAN outage.
# 100k samples of ~80 bytes is ~8 MB of memory at worst.
DEFAULT_MAX_PENDING = 100_000
# InfluxDB recommends 5000 lines per request; fewer requests matter more than latency here.
DEFAULT_BATCH_SIZE = 5_000
DEFAULT_MAX_BATCH_DELAY_S = 1.0

# Statuses that are about the request's *data* (bad line protocol, too large, outside the
# bucket's retention): retrying cannot help, so the batch is rejected and counted.
# Everything else (5xx, 429, 408, and 401/403/404, which an operator fixes by correcting the
# token or creating the bucket) is retried while the buffer holds.
_REJECT_STATUSES = frozenset({400, 413, 422})

# The library annotates precision as WritePrecision, but its constants are plain strings.
_PRECISION_MS = cast(WritePrecision, WritePrecision.MS)

_MEASUREMENT_ESCAPES = str.maketrans({"\\": "\\\\", ",": "\\,", " ": "\\ "})
_KEY_ESCAPES = str.maketrans({"\\": "\\\\", ",": "\\,", "=": "\\=", " ": "\\ "})
# Line protocol has no escape for line breaks inside names or tag values.
_LINE_BREAKS = str.maketrans({"\n": " ", "\r": " "})


def escape_measurement(name: str) -> str:
    """A measurement name for line protocol: backslash-escape ``\\``, comma and space."""
    return name.translate(_LINE_BREAKS).translate(_MEASUREMENT_ESCAPES)


def escape_key(text: str) -> str:
    """A tag key, tag value or field key: backslash-escape ``\\``, comma, ``=`` and space.

    Doubling backslashes matches the InfluxDB 2.x/3.x parsers and VictoriaMetrics, and keeps a
    trailing backslash from escaping the separator after it. (InfluxDB 1.x keeps ``\\\\``
    literally, so a unit containing a backslash reads back doubled there.)
    """
    return text.translate(_LINE_BREAKS).translate(_KEY_ESCAPES)


def to_line(sample: Sample, vector_mode: VectorMode = "fields") -> str:
    """One sample as a line of line protocol with a millisecond timestamp."""
    head = f"{escape_measurement(sample.metric)},device_id={escape_key(sample.device_id)}"
    if sample.unit:  # empty tag values are invalid: omit the tag
        head += f",unit={escape_key(sample.unit)}"
    value = sample.value
    if not isinstance(value, tuple):
        fields = f"value={value!r}"
    elif vector_mode == "fields":
        fields = ",".join(f"v{i}={v!r}" for i, v in enumerate(value))
    else:
        fields = f"magnitude={magnitude(value)!r}"
    return f"{head} {fields} {sample.device_ts_ms}"


class InfluxSink(BufferedSink):
    """Telemetry to an InfluxDB v2 write endpoint, batched, bounded and retried.

    ``url``/``token``/``org``/``bucket`` as for InfluxDB 2.x. For InfluxDB 1.8+ use
    ``token="user:password"`` (or ``":"`` without auth), ``org="-"`` and
    ``bucket="database/retention_policy"``. VictoriaMetrics ignores token, org and bucket.
    """

    def __init__(
        self,
        *,
        url: str,
        token: str,
        org: str,
        bucket: str,
        vector_mode: VectorMode = "fields",
        timeout_ms: int = 10_000,
        max_pending: int = DEFAULT_MAX_PENDING,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_delay_s: float = DEFAULT_MAX_BATCH_DELAY_S,
        drain_timeout_s: float = 10.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
    ) -> None:
        super().__init__(
            name="tsdb-influx",
            max_pending=max_pending,
            batch_size=batch_size,
            max_batch_delay_s=max_batch_delay_s,
            drain_timeout_s=drain_timeout_s,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
        )
        self._url = url
        self._token = token
        self._org = org
        self._bucket = bucket
        self._vector_mode: VectorMode = vector_mode
        self._timeout_ms = timeout_ms
        self._client: InfluxDBClient | None = None
        self._write_api: WriteApi | None = None

    async def _open(self) -> None:
        # The constructor does no I/O; the server is first contacted by the first write, so
        # a gateway starts (and buffers) while InfluxDB is down.
        self._client = InfluxDBClient(
            url=self._url,
            token=self._token,
            org=self._org,
            timeout=self._timeout_ms,
            retries=False,  # retrying is ours, so that it is bounded and counted
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    async def _close(self) -> None:
        client, self._client, self._write_api = self._client, None, None
        if client is not None:
            # On the sink's thread: runs after any in-flight write has returned.
            await self._in_thread(client.close)

    async def _write(self, batch: Sequence[Sample]) -> None:
        if self._write_api is None:
            raise RuntimeError("InfluxDB client is not open")
        body = "\n".join(to_line(s, self._vector_mode) for s in batch)
        await self._in_thread(
            partial(
                self._write_api.write,
                bucket=self._bucket,
                org=self._org,
                record=body,
                write_precision=_PRECISION_MS,
            )
        )

    def _retryable(self, exc: Exception) -> bool:
        if isinstance(exc, ApiException):
            return exc.status not in _REJECT_STATUSES
        # Connection refused/reset, timeouts, DNS: the server or network is down.
        return isinstance(exc, urllib3.exceptions.HTTPError | OSError)

    async def query(
        self, device_id: str, metric: str, start_ms: int, end_ms: int, max_points: int
    ) -> list[SeriesPoint]:
        """Not supported: this sink is write-only (read InfluxDB with Flux/InfluxQL/SQL)."""
        raise QueryNotSupportedError(
            "the InfluxDB sink is write-only; query the SQLite sink or InfluxDB directly"
        )
