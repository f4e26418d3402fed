"""The embedded telemetry store: one SQLite file, separate from the alarm journal.

Layout (schema version 1):

- ``raw``: every sample, kept ``Retention.raw_ms`` (default 7 days) by device time. Scalars
  in ``num``; vectors as a little-endian float64 blob in ``vec`` (lossless, 8 bytes a value,
  about half of JSON) with their L2 magnitude in ``num``.
- ``rollup_1m``: per device, metric and UTC minute: min, max, avg and count of ``num``,
  kept ``Retention.rollup_ms`` (default 90 days). Vectors are aggregated by magnitude, so
  an accelerometer's minute reads as "how much movement", which is what the UI plots.
- ``meta``: the rollup watermark (last raw row id rolled up) and the raw horizon (raw rows
  older than it are deleted; queries read rollups below it and raw rows above it).

Every raw row is rolled up exactly once, by row id, so samples that arrive late or out of
device-time order are merged into their minute (avg and count combine exactly).

Durability: WAL with ``synchronous=NORMAL``. In WAL mode that cannot corrupt the file; a
power cut may lose the last transactions written before it. Telemetry is sheddable by
policy, so a few lost seconds are acceptable, and skipping the per-commit fsync keeps the
disk free for the alarm journal, which runs with ``synchronous=FULL`` in its own file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.sqlrows import insert_rows
from gateway.tsdb.base import BufferedSink, Sample, SeriesPoint, TsdbError, Value, magnitude

_LOGGER = logging.getLogger(__name__)

MINUTE_MS = 60_000
DAY_MS = 86_400_000
SCHEMA_VERSION = 1

# Defaults sized for one gateway of a few thousand devices: ~1 sample/s each is a few
# thousand rows/s, well below SQLite's batched insert rate (see bench/tsdb_bench.py).
DEFAULT_MAX_PENDING = 50_000
# One transaction per batch: 1000 rows amortise the commit; bigger batches only make the
# writer thread hold the database (and queries) longer.
DEFAULT_BATCH_SIZE = 1_000
# A lone sample waits at most this long before it is written (and queryable).
DEFAULT_MAX_BATCH_DELAY_S = 0.5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS raw (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- monotonic: the rollup watermark relies on it
    device_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    unit TEXT,
    num REAL NOT NULL,
    vec BLOB
);
CREATE INDEX IF NOT EXISTS raw_series ON raw (device_id, metric, ts_ms);
CREATE INDEX IF NOT EXISTS raw_ts ON raw (ts_ms);
CREATE TABLE IF NOT EXISTS rollup_1m (
    device_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    minute_ms INTEGER NOT NULL,
    min REAL NOT NULL,
    max REAL NOT NULL,
    avg REAL NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (device_id, metric, minute_ms)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rollup_minute ON rollup_1m (minute_ms);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_INSERT_HEAD = "INSERT INTO raw (device_id, metric, ts_ms, received_ms, unit, num, vec)"

# The WHERE clause also resolves SQLite's INSERT ... SELECT ... ON CONFLICT ambiguity.
_ROLLUP = f"""
INSERT INTO rollup_1m (device_id, metric, minute_ms, min, max, avg, count)
SELECT device_id, metric, (ts_ms / {MINUTE_MS}) * {MINUTE_MS}, MIN(num), MAX(num), AVG(num),
       COUNT(*)
FROM raw WHERE id > ? AND id <= ?
GROUP BY device_id, metric, ts_ms / {MINUTE_MS}
ON CONFLICT (device_id, metric, minute_ms) DO UPDATE SET
    min = MIN(min, excluded.min),
    max = MAX(max, excluded.max),
    avg = (avg * count + excluded.avg * excluded.count) / (count + excluded.count),
    count = count + excluded.count
"""


@dataclass(frozen=True, slots=True)
class Retention:
    """How long data is kept and how often the sink enforces it."""

    raw_ms: int = 7 * DAY_MS
    rollup_ms: int = 90 * DAY_MS
    maintenance_interval_s: float = 300.0

    def __post_init__(self) -> None:
        """Rollups must outlive raw data, or queries would find neither."""
        if not 0 < self.raw_ms <= self.rollup_ms:
            raise ValueError("need 0 < raw_ms <= rollup_ms")
        if self.maintenance_interval_s <= 0:
            raise ValueError("maintenance_interval_s must be positive")


@dataclass(frozen=True, slots=True)
class MaintenanceResult:
    """What one ``maintain`` pass did."""

    rolled_up: int
    """Raw rows aggregated into minutes."""
    raw_deleted: int
    rollups_deleted: int
    raw_horizon_ms: int
    """Raw data older than this is gone; queries use rollups below it."""


def wall_clock_ms() -> int:
    """Epoch milliseconds now."""
    return time.time_ns() // 1_000_000


def encode_vector(value: tuple[float, ...]) -> bytes:
    """A vector as little-endian float64s."""
    return struct.pack(f"<{len(value)}d", *value)


def decode_vector(blob: bytes) -> tuple[float, ...]:
    """Inverse of ``encode_vector``."""
    return struct.unpack(f"<{len(blob) // 8}d", blob)


def _init_schema(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.executescript(_SCHEMA)
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
    elif row[0] != SCHEMA_VERSION:
        raise TsdbError(f"{path}: telemetry schema {row[0]}, expected {SCHEMA_VERSION}")


def _row(s: Sample) -> tuple[str, str, int, int, str | None, float, bytes | None]:
    if isinstance(s.value, tuple):
        return (
            s.device_id,
            s.metric,
            s.device_ts_ms,
            s.received_ms,
            s.unit,
            magnitude(s.value),
            encode_vector(s.value),
        )
    return (s.device_id, s.metric, s.device_ts_ms, s.received_ms, s.unit, s.value, None)


class SqliteSink(BufferedSink):
    """Telemetry in a local SQLite file, with retention and 1-minute rollups.

    ``async with SqliteSink(path) as sink:`` opens (creating if needed) the file, starts the
    writer and the periodic maintenance task; leaving the block drains and closes it.
    All database work runs on the sink's single thread, so queries and maintenance are
    serialised with writes on one connection.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        retention: Retention | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_delay_s: float = DEFAULT_MAX_BATCH_DELAY_S,
        drain_timeout_s: float = 10.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        super().__init__(
            name="tsdb-sqlite",
            max_pending=max_pending,
            batch_size=batch_size,
            max_batch_delay_s=max_batch_delay_s,
            drain_timeout_s=drain_timeout_s,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
        )
        self._path = Path(path)
        self._retention = retention or Retention()
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self.last_maintenance: MaintenanceResult | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def _open(self) -> None:
        await self._in_thread(self._open_sync)

    def _open_sync(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per batch.
        conn = sqlite3.connect(self._path, isolation_level=None)
        try:
            _init_schema(conn, self._path)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def _close(self) -> None:
        await self._in_thread(self._close_sync)

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _start_background(self, tg: asyncio.TaskGroup) -> None:
        tg.create_task(self._maintenance_loop(), name="tsdb-sqlite maintenance")

    async def _maintenance_loop(self) -> None:
        # First run one interval after start: startup stays quick, and explicit maintain()
        # calls (tests, CLI) are not raced by an implicit one.
        while True:
            await asyncio.sleep(self._retention.maintenance_interval_s)
            try:
                await self.maintain(self._clock())
            except sqlite3.Error:
                _LOGGER.exception("telemetry maintenance failed; retrying next interval")

    # -- writing -------------------------------------------------------------------------

    async def _write(self, batch: Sequence[Sample]) -> None:
        await self._in_thread(self._write_sync, batch)

    def _write_sync(self, batch: Sequence[Sample]) -> None:
        conn = self._connection()
        conn.execute("BEGIN")
        try:
            insert_rows(conn, _INSERT_HEAD, [_row(s) for s in batch])
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _retryable(self, exc: Exception) -> bool:
        # Locked, disk full, I/O error: may pass. Anything else is a bug or bad data.
        return isinstance(exc, sqlite3.OperationalError)

    # -- maintenance ---------------------------------------------------------------------

    async def maintain(self, now_ms: int) -> MaintenanceResult:
        """Roll raw rows up into minutes, then apply retention relative to ``now_ms``."""
        result = await self._in_thread(self._maintain_sync, now_ms)
        self.last_maintenance = result
        if result.raw_deleted or result.rollups_deleted:
            _LOGGER.info(
                "telemetry maintenance: rolled up %d, deleted %d raw and %d minute rows",
                result.rolled_up,
                result.raw_deleted,
                result.rollups_deleted,
            )
        return result

    def _maintain_sync(self, now_ms: int) -> MaintenanceResult:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            rolled_id = self._meta(conn, "rolled_id")
            max_id = conn.execute("SELECT COALESCE(MAX(id), 0) FROM raw").fetchone()[0]
            rolled_up = 0
            if max_id > rolled_id:
                rolled_up = conn.execute(
                    "SELECT COUNT(*) FROM raw WHERE id > ? AND id <= ?", (rolled_id, max_id)
                ).fetchone()[0]
                conn.execute(_ROLLUP, (rolled_id, max_id))
                self._set_meta(conn, "rolled_id", max_id)
            # Minute-aligned, so no minute is split between raw rows and its rollup.
            cutoff = (now_ms - self._retention.raw_ms) // MINUTE_MS * MINUTE_MS
            horizon = max(self._meta(conn, "raw_horizon_ms"), cutoff)
            self._set_meta(conn, "raw_horizon_ms", horizon)
            # Every row up to max_id is rolled up, so deleting below the horizon loses no data.
            raw_deleted = conn.execute("DELETE FROM raw WHERE ts_ms < ?", (horizon,)).rowcount
            rollups_deleted = conn.execute(
                "DELETE FROM rollup_1m WHERE minute_ms < ?", (now_ms - self._retention.rollup_ms,)
            ).rowcount
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return MaintenanceResult(rolled_up, raw_deleted, rollups_deleted, horizon)

    # -- reading -------------------------------------------------------------------------

    async def query(
        self, device_id: str, metric: str, start_ms: int, end_ms: int, max_points: int
    ) -> list[SeriesPoint]:
        """Points in ``[start_ms, end_ms)``, oldest first.

        If the range holds at most ``max_points`` stored points, they are returned as stored:
        raw samples (vectors as tuples) above the raw horizon, ``(minute start, average)``
        below it. Otherwise the range is cut into ``max_points`` equal buckets and each
        non-empty bucket is returned as ``(bucket start, mean)``, vectors counted by magnitude,
        rollup minutes weighted by their count (a minute belongs to the bucket of its start).
        """
        if max_points < 1:
            raise ValueError("max_points must be positive")
        if end_ms <= start_ms:
            return []
        return await self._in_thread(
            self._query_sync, device_id, metric, start_ms, end_ms, max_points
        )

    def _query_sync(
        self, device_id: str, metric: str, start_ms: int, end_ms: int, max_points: int
    ) -> list[SeriesPoint]:
        conn = self._connection()
        horizon = self._meta(conn, "raw_horizon_ms")
        raw_start = max(start_ms, horizon)
        roll_end = min(end_ms, horizon)
        series = (device_id, metric)
        (raw_count,) = conn.execute(
            "SELECT COUNT(*) FROM raw"
            " WHERE device_id = ? AND metric = ? AND ts_ms >= ? AND ts_ms < ?",
            (*series, raw_start, end_ms),
        ).fetchone()
        roll_count = 0
        if start_ms < roll_end:
            (roll_count,) = conn.execute(
                "SELECT COUNT(*) FROM rollup_1m"
                " WHERE device_id = ? AND metric = ? AND minute_ms >= ? AND minute_ms < ?",
                (*series, start_ms, roll_end),
            ).fetchone()
        if raw_count + roll_count <= max_points:
            # Few enough: as fine as stored. Minute averages below the horizon, raw above.
            points: list[SeriesPoint] = []
            if roll_count:
                points += conn.execute(
                    "SELECT minute_ms, avg FROM rollup_1m"
                    " WHERE device_id = ? AND metric = ? AND minute_ms >= ? AND minute_ms < ?"
                    " ORDER BY minute_ms",
                    (*series, start_ms, roll_end),
                ).fetchall()
            rows = conn.execute(
                "SELECT ts_ms, num, vec FROM raw"
                " WHERE device_id = ? AND metric = ? AND ts_ms >= ? AND ts_ms < ?"
                " ORDER BY ts_ms, id",
                (*series, raw_start, end_ms),
            )
            points += [(ts, _value(num, vec)) for ts, num, vec in rows]
            return points
        width = max(1, -(-(end_ms - start_ms) // max_points))
        buckets: dict[int, tuple[float, int]] = {}
        parts = [
            (
                "SELECT (ts_ms - ?) / ?, SUM(num), COUNT(*) FROM raw"
                " WHERE device_id = ? AND metric = ? AND ts_ms >= ? AND ts_ms < ? GROUP BY 1",
                raw_start,
                end_ms,
            ),
            (
                "SELECT (minute_ms - ?) / ?, SUM(avg * count), SUM(count) FROM rollup_1m"
                " WHERE device_id = ? AND metric = ? AND minute_ms >= ? AND minute_ms < ?"
                " GROUP BY 1",
                start_ms,
                roll_end,
            ),
        ]
        for sql, lo, hi in parts:
            if lo >= hi:
                continue
            for bucket, total, n in conn.execute(sql, (start_ms, width, *series, lo, hi)):
                old_total, old_n = buckets.get(bucket, (0.0, 0))
                buckets[bucket] = (old_total + total, old_n + n)
        return [
            (start_ms + bucket * width, total / n) for bucket, (total, n) in sorted(buckets.items())
        ]

    # -- helpers -------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("telemetry database is not open")
        return self._conn

    @staticmethod
    def _meta(conn: sqlite3.Connection, key: str) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row is not None else 0

    @staticmethod
    def _set_meta(conn: sqlite3.Connection, key: str, value: int) -> None:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


def _value(num: float, vec: bytes | None) -> Value:
    return decode_vector(vec) if vec is not None else num
