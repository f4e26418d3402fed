"""The telemetry sinks: one contract suite for every sink, then sink-specific behaviour.

The InfluxDB sink is tested against a real server: a private VictoriaMetrics (Debian package
``victoria-metrics``), which implements the InfluxDB v2 write API and reads back through
``/api/v1/export``. Those tests are skipped only if the binary is missing.
"""

from __future__ import annotations

import abc
import asyncio
import json
import shutil
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import httpx
import pytest
import urllib3.exceptions
from influxdb_client.rest import ApiException

from devices.contract import TelemetryMessage
from gateway.tsdb import (
    BufferedSink,
    QueryNotSupportedError,
    Retention,
    Sample,
    SeriesPoint,
    SqliteSink,
    TelemetrySink,
)
from gateway.tsdb.base import MAX_ISOLATION_WRITES
from gateway.tsdb.influx import InfluxSink, escape_key, escape_measurement, to_line
from gateway.tsdb.sqlite import DAY_MS, MINUTE_MS

VM_BINARY = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
VM_INSTALLED = Path(VM_BINARY).exists()
needs_vm = pytest.mark.skipif(
    not VM_INSTALLED,
    reason="victoria-metrics not installed (apt-get install victoria-metrics)",
)

# A minute-aligned epoch for tests with explicit times (2023-11-14T22:13:00Z).
BASE = 28_333_333 * MINUTE_MS
# Generous guards so a broken sink fails the test instead of hanging it; never asserted on.
GUARD_S = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _scalars(device_id: str, metric: str, n: int, t0: int) -> list[Sample]:
    return [Sample(device_id, metric, float(i) + 0.25, "C", t0 + i, t0 + i) for i in range(n)]


class VictoriaMetrics:
    """A private victoria-metrics process on 127.0.0.1 with its own data directory."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start and wait for /health."""
        self._proc = subprocess.Popen(
            [
                VM_BINARY,
                f"-httpListenAddr=127.0.0.1:{self.port}",
                f"-storageDataPath={self.data_dir}",
                "-retentionPeriod=100y",
                "-loggerLevel=ERROR",
                # Read back what was just written: no response cache, no 30 s hiding offset.
                "-search.disableCache",
                "-search.latencyOffset=0s",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + GUARD_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"victoria-metrics exited with {self._proc.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("victoria-metrics did not become healthy")

    def stop(self) -> None:
        """Terminate and wait (SIGTERM flushes its data to disk)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=GUARD_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    async def export(self, match: str) -> list[dict[str, object]]:
        """All series matching ``match`` (a series selector), as /api/v1/export JSON lines."""
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            (await client.get("/internal/force_flush")).raise_for_status()
            resp = await client.post("/api/v1/export", data={"match[]": match, "start": "0"})
            resp.raise_for_status()
            return [json.loads(line) for line in resp.text.splitlines() if line.strip()]

    async def read_series(self, device_id: str, metric: str, expected: int) -> list[SeriesPoint]:
        """A device's points of ``metric``, waiting (bounded) until ``expected`` are visible.

        VictoriaMetrics stores field ``f`` of measurement ``m`` as series ``m_f``; vector
        fields ``v0..vN`` are reassembled into tuples by timestamp.
        """
        points: list[SeriesPoint] = []
        deadline = time.monotonic() + GUARD_S
        while True:
            rows = await self.export(f'{{__name__=~"{metric}_.+",device_id="{device_id}"}}')
            points = _assemble(rows, metric)
            if len(points) >= expected or time.monotonic() > deadline:
                return points
            await asyncio.sleep(0.1)  # new series become searchable within a second or so


def _assemble(rows: Sequence[dict[str, object]], metric: str) -> list[SeriesPoint]:
    scalars: dict[int, float] = {}
    vectors: dict[int, dict[int, float]] = {}
    for row in rows:
        labels = row["metric"]
        values = row["values"]
        stamps = row["timestamps"]
        assert isinstance(labels, dict)
        assert isinstance(values, list)
        assert isinstance(stamps, list)
        field = str(labels["__name__"])[len(metric) + 1 :]
        for ts, value in zip(stamps, values, strict=True):
            if field == "value":
                scalars[int(ts)] = float(value)
            else:
                vectors.setdefault(int(ts), {})[int(field[1:])] = float(value)
    points: list[SeriesPoint] = list(scalars.items())
    points += [(ts, tuple(v[i] for i in sorted(v))) for ts, v in vectors.items()]
    return sorted(points)


@pytest.fixture(scope="session")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    """One private VictoriaMetrics for the session."""
    if not VM_INSTALLED:
        pytest.skip("victoria-metrics not installed (apt-get install victoria-metrics)")
    vm = VictoriaMetrics(tmp_path_factory.mktemp("vm-session"))
    vm.start()
    yield vm
    vm.stop()


# -- the contract, run against every sink ------------------------------------------------


class SinkContract(abc.ABC):
    """Behaviour every TelemetrySink must have. Subclasses say how to make and read one."""

    @abc.abstractmethod
    def make_sink(
        self, *, max_pending: int = 1000, batch_size: int = 100, max_batch_delay_s: float = 0.05
    ) -> BufferedSink:
        """A fresh, not yet entered sink on this test's backend."""

    @abc.abstractmethod
    async def read_back(self, device_id: str, metric: str, expected: int) -> list[SeriesPoint]:
        """Every stored point of a series, read from the backend itself."""

    async def test_is_a_telemetry_sink(self) -> None:
        """Both sinks satisfy the port the gateway programs against."""
        assert isinstance(self.make_sink(), TelemetrySink)

    async def test_written_samples_read_back(self) -> None:
        """Samples offered are stored and read back with their device timestamps."""
        dev, t0 = _unique("dev"), _now_ms()
        samples = _scalars(dev, "temperature", 250, t0)
        async with self.make_sink() as sink:
            assert all(sink.offer(s) for s in samples)
            await sink.flush()
            stats = sink.stats
        assert (stats.written, stats.pending, stats.shed, stats.failed_writes) == (250, 0, 0, 0)
        got = await self.read_back(dev, "temperature", 250)
        assert got == [(s.device_ts_ms, s.value) for s in samples]

    async def test_vector_values_round_trip(self) -> None:
        """Vector samples come back as tuples, in order, beside scalars of other devices."""
        dev, t0 = _unique("acc"), _now_ms()
        vectors = [(0.5, -1.25, 9.81), (1e-3, 2.0, -3.5), (123456.789, 0.0, 1e10)]
        async with self.make_sink() as sink:
            for i, vec in enumerate(vectors):
                assert sink.offer(Sample(dev, "accel", vec, "m/s2", t0 + i, t0 + i))
            assert sink.offer(Sample(_unique("other"), "accel", 1.0, None, t0, t0))
            await sink.flush()
        got = await self.read_back(dev, "accel", 3)
        assert got == [(t0 + i, vec) for i, vec in enumerate(vectors)]

    async def test_flush_does_not_wait_for_the_batch_delay(self) -> None:
        """flush() writes a partial batch at once and returns when everything is written."""
        dev, t0 = _unique("dev"), _now_ms()
        async with self.make_sink(batch_size=1000, max_batch_delay_s=3600) as sink:
            await sink.flush()  # nothing pending: returns at once
            for s in _scalars(dev, "temperature", 7, t0):
                sink.offer(s)
            async with asyncio.timeout(GUARD_S):
                await sink.flush()
            assert (sink.stats.written, sink.stats.pending) == (7, 0)
        assert len(await self.read_back(dev, "temperature", 7)) == 7

    async def test_exit_drains_what_was_offered(self) -> None:
        """Leaving the context writes everything still buffered."""
        dev, t0 = _unique("dev"), _now_ms()
        sink = self.make_sink(max_batch_delay_s=3600)
        async with sink:
            for s in _scalars(dev, "temperature", 5, t0):
                sink.offer(s)
        assert (sink.stats.written, sink.stats.shed) == (5, 0)
        assert len(await self.read_back(dev, "temperature", 5)) == 5

    async def test_shed_counted_beyond_the_bound(self) -> None:
        """Beyond max_pending, offer refuses, counts and flags shedding; the rest is kept."""
        dev, t0 = _unique("dev"), _now_ms()
        sink = self.make_sink(max_pending=50, batch_size=20)
        accepted = [sink.offer(s) for s in _scalars(dev, "temperature", 60, t0)]
        assert accepted == [True] * 50 + [False] * 10
        assert (sink.stats.shed, sink.stats.pending, sink.stats.shedding) == (10, 50, True)
        async with sink:
            await sink.flush()
            stats = sink.stats
        assert (stats.written, stats.shed, stats.pending, stats.shedding) == (50, 10, 0, False)
        got = await self.read_back(dev, "temperature", 50)
        assert [ts for ts, _ in got] == [t0 + i for i in range(50)]

    async def test_offer_never_blocks_while_writes_stall(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A stalled backend costs telemetry (shed), never the caller's time."""
        dev, t0 = _unique("dev"), _now_ms()
        samples = _scalars(dev, "temperature", 25, t0)
        sink = self.make_sink(max_pending=20, batch_size=5)
        started, release = asyncio.Event(), asyncio.Event()
        real_write = sink._write

        async def stalled_write(batch: Sequence[Sample]) -> None:
            started.set()
            await release.wait()
            await real_write(batch)

        monkeypatch.setattr(sink, "_write", stalled_write)
        async with sink:
            assert sink.offer(samples[0])
            async with asyncio.timeout(GUARD_S):
                await started.wait()  # the writer holds one sample and is stuck
            # Plain calls, no await: the loop never runs the writer in between.
            accepted = [sink.offer(s) for s in samples[1:]]
            assert accepted == [True] * 19 + [False] * 5
            assert (sink.stats.pending, sink.stats.shed, sink.stats.shedding) == (20, 5, True)
            release.set()
            await sink.flush()
            assert (sink.stats.written, sink.stats.shedding) == (20, False)
        assert len(await self.read_back(dev, "temperature", 20)) == 20

    async def test_closed_sink_sheds_and_is_reusable(self) -> None:
        """offer after exit returns False (counted); the sink can be entered again."""
        dev, t0 = _unique("dev"), _now_ms()
        s1, s2, s3 = _scalars(dev, "temperature", 3, t0)
        sink = self.make_sink()
        async with sink:
            assert sink.offer(s1)
        assert not sink.offer(s2)
        assert sink.stats.shed == 1
        async with sink:
            assert sink.offer(s3)
        assert sink.stats.written == 2
        assert [ts for ts, _ in await self.read_back(dev, "temperature", 2)] == [t0, t0 + 2]

    async def test_one_sample_that_cannot_be_stored_costs_only_itself(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Issue 17.6: a lone surrogate in one sample's unit (device id, metric) is rejected
        alone; the other devices' samples of the same batch are stored. Logged once."""
        devices, t0 = [_unique("dev") for _ in range(3)], _now_ms()
        good = [Sample(devices[i % 3], "temperature", i + 0.5, "C", t0 + i, t0 + i)
                for i in range(450)]
        bad = [Sample(devices[0], "temperature", 1.0, "\ud800", t0 + 1000, t0),
               Sample("dev-\udfff", "temperature", 1.0, "C", t0 + 1001, t0),
               Sample(devices[1], "temp\udc00", 1.0, None, t0 + 1002, t0)]
        batch = [bad[0], *good[:200], bad[1], *good[200:], bad[2]]
        async with self.make_sink(max_pending=1000, batch_size=500) as sink:
            assert all(sink.offer(s) for s in batch)
            await sink.flush()
            stats = sink.stats
        assert (stats.written, stats.rejected, stats.pending) == (450, 3, 0)
        for n, device in enumerate(devices):
            mine = [(s.device_ts_ms, s.value) for s in good[n::3]]
            assert await self.read_back(device, "temperature", len(mine)) == mine
        assert len([r for r in caplog.records if "cannot be stored" in r.getMessage()]) == 1

    async def test_a_sample_the_backend_refuses_is_found_by_halving_the_batch(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A sample only the backend knows it refuses (here: an injected data error) is
        isolated by writing halves again: the rest is stored, in few writes."""
        dev, t0 = _unique("dev"), _now_ms()
        samples = _scalars(dev, "temperature", 500, t0)
        poison = Sample(dev, "poison", 1.0, None, t0, t0)
        sink = self.make_sink(batch_size=501)
        real_write, writes = sink._write, []

        async def picky_write(batch: Sequence[Sample]) -> None:
            writes.append(len(batch))
            if poison in batch:
                raise ValueError("the backend refuses this data")
            await real_write(batch)

        monkeypatch.setattr(sink, "_write", picky_write)
        async with sink:
            for s in [*samples[:300], poison, *samples[300:]]:
                sink.offer(s)
            await sink.flush()
            stats = sink.stats
        assert (stats.written, stats.rejected) == (500, 1)
        assert len(writes) <= 2 * 9 + 1  # halving 501 down to 1: 9 levels, 2 writes each
        assert await self.read_back(dev, "temperature", 500) == [
            (s.device_ts_ms, s.value) for s in samples]

    async def test_a_batch_refused_wholesale_costs_a_bounded_number_of_writes(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A backend that refuses everything is not asked once per sample."""
        dev, t0 = _unique("dev"), _now_ms()
        sink = self.make_sink(batch_size=1000, max_pending=1000)
        writes: list[int] = []

        async def refuse(batch: Sequence[Sample]) -> None:
            writes.append(len(batch))
            raise ValueError("outside the bucket's retention")

        monkeypatch.setattr(sink, "_write", refuse)
        async with sink:
            for s in _scalars(dev, "temperature", 1000, t0):
                sink.offer(s)
            await sink.flush()
            assert (sink.stats.written, sink.stats.rejected) == (0, 1000)
        assert len(writes) <= MAX_ISOLATION_WRITES

    async def test_not_reentrant(self) -> None:
        """Entering a running sink again is an error, not a second writer."""
        async with self.make_sink() as sink:
            with pytest.raises(RuntimeError, match="not re-entrant"):
                await sink.__aenter__()


class TestSqliteContract(SinkContract):
    """The contract against the SQLite sink."""

    @pytest.fixture(autouse=True)
    def _db(self, tmp_path: Path) -> None:
        self.path = tmp_path / "telemetry.sqlite"

    def make_sink(
        self, *, max_pending: int = 1000, batch_size: int = 100, max_batch_delay_s: float = 0.05
    ) -> BufferedSink:
        """A sink on this test's file."""
        return SqliteSink(
            self.path,
            max_pending=max_pending,
            batch_size=batch_size,
            max_batch_delay_s=max_batch_delay_s,
        )

    async def read_back(self, device_id: str, metric: str, expected: int) -> list[SeriesPoint]:
        """Through a second sink on the same file: what survives a close/reopen."""
        async with SqliteSink(self.path) as reader:
            return await reader.query(device_id, metric, 0, 2**62, max_points=10**9)


@needs_vm
@pytest.mark.network
class TestInfluxContract(SinkContract):
    """The contract against the InfluxDB sink, read back through VictoriaMetrics."""

    @pytest.fixture(autouse=True)
    def _server(self, victoria: VictoriaMetrics) -> None:
        self.vm = victoria

    def make_sink(
        self, *, max_pending: int = 1000, batch_size: int = 100, max_batch_delay_s: float = 0.05
    ) -> BufferedSink:
        """A sink writing to the session's VictoriaMetrics."""
        return _influx(self.vm.url, max_pending, batch_size, max_batch_delay_s)

    async def read_back(self, device_id: str, metric: str, expected: int) -> list[SeriesPoint]:
        """Through the server's export API."""
        return await self.vm.read_series(device_id, metric, expected)


def _influx(
    url: str,
    max_pending: int = 1000,
    batch_size: int = 100,
    max_batch_delay_s: float = 0.05,
    drain_timeout_s: float = 10.0,
) -> InfluxSink:
    return InfluxSink(
        url=url,
        token="test-token",  # VictoriaMetrics ignores token, org and bucket
        org="trygg",
        bucket="telemetry",
        max_pending=max_pending,
        batch_size=batch_size,
        max_batch_delay_s=max_batch_delay_s,
        timeout_ms=2_000,
        drain_timeout_s=drain_timeout_s,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
    )


def _signal_after(
    sink: BufferedSink, method: str, *, calls: int, failed: bool = False
) -> asyncio.Event:
    """Wrap an async method of ``sink``; the event is set after ``calls`` (failed) calls."""
    real = getattr(sink, method)
    done = asyncio.Event()
    seen = 0

    async def wrapper(*args: object) -> object:
        nonlocal seen
        try:
            result = await real(*args)
        except Exception:
            seen += 1
            if seen >= calls:
                done.set()
            raise
        if not failed:
            seen += 1
            if seen >= calls:
                done.set()
        return result

    setattr(sink, method, wrapper)
    return done


# -- Sample ------------------------------------------------------------------------------


def test_sample_from_message() -> None:
    """A parsed device message becomes a sample stamped with the receive time."""
    msg = TelemetryMessage("dev-1", "r1", 1_000, "accel", (1.0, 2.0), "g")
    assert Sample.from_message(msg, received_ms=1_250) == Sample(
        "dev-1", "accel", (1.0, 2.0), "g", 1_000, 1_250
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), (), (1.0, float("-inf"))])
def test_sample_refuses_unstorable_values(value: float | tuple[float, ...]) -> None:
    """NaN, infinities and empty vectors are refused at construction, not at write time."""
    with pytest.raises(ValueError, match="finite"):
        Sample("d", "m", value, None, 0, 0)


# -- SQLite specifics --------------------------------------------------------------------


def _sqlite(path: Path, now_ms: int, retention: Retention | None = None) -> SqliteSink:
    # A fixed clock: periodic maintenance must not apply the wall clock to these explicit
    # 2023 timestamps (its first run is one interval, default 5 min, after start).
    return SqliteSink(path, retention=retention, max_batch_delay_s=0.01, clock=lambda: now_ms)


def _rollups(path: Path) -> list[tuple[str, int, float, float, float, int]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT metric, minute_ms, min, max, avg, count FROM rollup_1m ORDER BY 1, 2"
        ).fetchall()
    conn.close()
    return [tuple(r) for r in rows]


async def test_sqlite_uses_wal_in_its_own_file(tmp_path: Path) -> None:
    """The telemetry file is created where asked, in WAL mode."""
    path = tmp_path / "sub" / "telemetry.sqlite"
    async with _sqlite(path, BASE):
        pass
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


async def test_sqlite_rollup_and_retention(tmp_path: Path) -> None:
    """Raw kept 7 days, minutes kept 90 days; vectors aggregate by magnitude."""
    path = tmp_path / "t.sqlite"
    async with _sqlite(path, BASE) as sink:
        for day in range(10):
            t = BASE + day * DAY_MS
            for i, v in enumerate((1.0, 2.0, 6.0)):
                sink.offer(Sample("d1", "temperature", v, "C", t + i * 10_000, t))
            sink.offer(Sample("d1", "accel", (3.0, 4.0), None, t + 30_000, t))
        await sink.flush()

        result = await sink.maintain(BASE + 10 * DAY_MS)
        assert result.rolled_up == 40
        assert result.raw_deleted == 12  # days 0, 1, 2: older than 7 days
        assert result.rollups_deleted == 0
        assert result.raw_horizon_ms == BASE + 3 * DAY_MS
        minutes = _rollups(path)
        assert len(minutes) == 20
        assert ("temperature", BASE, 1.0, 6.0, 3.0, 3) in minutes
        assert ("accel", BASE, 5.0, 5.0, 5.0, 1) in minutes

        # Below the horizon only the minute average is left; above it the raw samples.
        day1 = BASE + DAY_MS
        assert await sink.query("d1", "temperature", day1, day1 + MINUTE_MS, 10) == [(day1, 3.0)]
        day5 = BASE + 5 * DAY_MS
        assert await sink.query("d1", "temperature", day5, day5 + MINUTE_MS, 10) == [
            (day5, 1.0),
            (day5 + 10_000, 2.0),
            (day5 + 20_000, 6.0),
        ]
        assert await sink.query("d1", "accel", day5, day5 + MINUTE_MS, 10) == [
            (day5 + 30_000, (3.0, 4.0))
        ]

        result = await sink.maintain(BASE + 95 * DAY_MS)
        assert result.rolled_up == 0
        assert result.raw_deleted == 28  # everything left: all older than 7 days now
        assert result.rollups_deleted == 10  # days 0-4: older than 90 days
        everything = await sink.query("d1", "temperature", 0, 2**62, 10**6)
        assert everything == [(BASE + d * DAY_MS, 3.0) for d in range(5, 10)]


async def test_sqlite_late_samples_merge_into_their_minute(tmp_path: Path) -> None:
    """A sample arriving after its minute was rolled up is merged exactly, once."""
    path = tmp_path / "t.sqlite"
    async with _sqlite(path, BASE) as sink:
        sink.offer(Sample("d1", "temperature", 2.0, None, BASE + 1_000, BASE))
        sink.offer(Sample("d1", "temperature", 4.0, None, BASE + 2_000, BASE))
        await sink.flush()
        assert (await sink.maintain(BASE)).rolled_up == 2
        sink.offer(Sample("d1", "temperature", 9.0, None, BASE + 59_000, BASE + 90_000))
        sink.offer(Sample("d1", "temperature", -3.0, None, BASE + 3_000, BASE + 90_000))
        await sink.flush()
        assert (await sink.maintain(BASE)).rolled_up == 2
        assert (await sink.maintain(BASE)).rolled_up == 0
    assert _rollups(path) == [("temperature", BASE, -3.0, 9.0, 3.0, 4)]


async def test_sqlite_query_downsamples_to_bucket_averages(tmp_path: Path) -> None:
    """More points than max_points: equal buckets, each (bucket start, mean)."""
    async with _sqlite(tmp_path / "t.sqlite", BASE) as sink:
        for i in range(100):
            sink.offer(Sample("d1", "temperature", float(i), None, BASE + i * 1_000, BASE))
        sink.offer(Sample("d1", "accel", (6.0, 8.0), None, BASE, BASE))
        sink.offer(Sample("d1", "accel", (0.0, 0.0), None, BASE + 1_000, BASE))
        await sink.flush()
        got = await sink.query("d1", "temperature", BASE, BASE + 100_000, 10)
        assert got == [(BASE + k * 10_000, 10 * k + 4.5) for k in range(10)]
        # A window with fewer points than max_points returns them raw.
        assert len(await sink.query("d1", "temperature", BASE, BASE + 100_000, 100)) == 100
        # Vectors are averaged by magnitude: (10 + 0) / 2.
        assert await sink.query("d1", "accel", BASE, BASE + 2_000, 1) == [(BASE, 5.0)]
        assert await sink.query("d1", "temperature", BASE, BASE, 10) == []
        with pytest.raises(ValueError, match="max_points"):
            await sink.query("d1", "temperature", BASE, BASE + 1, 0)


async def test_sqlite_query_across_the_raw_horizon(tmp_path: Path) -> None:
    """A range spanning the horizon combines minute rollups and raw samples, weighted."""
    retention = Retention(raw_ms=10 * MINUTE_MS, rollup_ms=DAY_MS)
    async with _sqlite(tmp_path / "t.sqlite", BASE, retention) as sink:
        for minute in range(20):
            for second in (0, 30):
                ts = BASE + minute * MINUTE_MS + second * 1_000
                sink.offer(Sample("d1", "temperature", float(minute), None, ts, ts))
        await sink.flush()
        result = await sink.maintain(BASE + 20 * MINUTE_MS)
        assert result.raw_horizon_ms == BASE + 10 * MINUTE_MS
        assert result.raw_deleted == 20
        got = await sink.query("d1", "temperature", BASE, BASE + 20 * MINUTE_MS, 4)
        assert got == [(BASE + k * 5 * MINUTE_MS, 5 * k + 2.0) for k in range(4)]


async def test_sqlite_maintenance_runs_periodically(tmp_path: Path) -> None:
    """The sink runs maintain() itself, with its clock, every interval."""
    path = tmp_path / "t.sqlite"
    async with _sqlite(path, BASE) as sink:
        sink.offer(Sample("d1", "temperature", 1.0, None, BASE, BASE))
        await sink.flush()
    retention = Retention(maintenance_interval_s=0.01)
    sink = _sqlite(path, BASE + 30 * DAY_MS, retention)
    ran = _signal_after(sink, "maintain", calls=2)
    async with sink:
        async with asyncio.timeout(GUARD_S):
            await ran.wait()
        assert sink.last_maintenance is not None
        assert sink.last_maintenance.raw_horizon_ms == BASE + 23 * DAY_MS
        assert await sink.query("d1", "temperature", 0, 2**62, 10) == [(BASE, 1.0)]
    assert _rollups(path) == [("temperature", BASE, 1.0, 1.0, 1.0, 1)]


def test_retention_is_validated() -> None:
    """Rollups must be kept at least as long as raw data."""
    with pytest.raises(ValueError, match="raw_ms"):
        Retention(raw_ms=DAY_MS, rollup_ms=DAY_MS - 1)


# -- InfluxDB specifics ------------------------------------------------------------------


def test_line_protocol_escaping() -> None:
    """Measurement: backslash, comma, space. Keys and tag values: also '='. No line breaks."""
    assert escape_measurement("a b,c=d\\") == "a\\ b\\,c=d\\\\"
    assert escape_key("a b,c=d\\") == "a\\ b\\,c\\=d\\\\"
    assert escape_key("two\nlines\r") == "two\\ lines\\ "
    assert escape_key("m/s²") == "m/s²"


def test_line_protocol_lines() -> None:
    """Scalar, vector as fields or magnitude; unit tag omitted when empty."""
    scalar = Sample("dev 1", "temperature", 21.5, "°C", 1_700_000_000_123, 0)
    assert to_line(scalar) == "temperature,device_id=dev\\ 1,unit=°C value=21.5 1700000000123"
    vector = Sample("d", "accel", (3.0, 4.0, 1e-20), "", 5, 0)
    assert to_line(vector) == "accel,device_id=d v0=3.0,v1=4.0,v2=1e-20 5"
    assert to_line(vector, "magnitude") == "accel,device_id=d magnitude=5.0 5"


def _api_error(status: int) -> ApiException:
    return ApiException(status=status)  # type: ignore[no-untyped-call]  # untyped library


def test_influx_error_classification() -> None:
    """Data errors are rejected; server, auth and network errors are retried."""
    sink = _influx("http://127.0.0.1:9")
    assert not sink._retryable(_api_error(400))
    assert not sink._retryable(_api_error(422))
    for status in (401, 404, 429, 500, 503):
        assert sink._retryable(_api_error(status))
    assert sink._retryable(urllib3.exceptions.ProtocolError("Connection aborted"))
    assert sink._retryable(ConnectionResetError())
    assert not sink._retryable(ValueError("bug"))


async def test_influx_query_is_not_supported() -> None:
    """The InfluxDB sink is write-only."""
    with pytest.raises(QueryNotSupportedError):
        await _influx("http://127.0.0.1:9").query("d", "m", 0, 1, 1)


@needs_vm
@pytest.mark.network
async def test_influx_special_characters_survive_the_server(victoria: VictoriaMetrics) -> None:
    """Our escaping is what a real v2 write endpoint parses back to the original strings."""
    dev, t0 = _unique("dev") + " a=b,c", _now_ms()
    unit = "m/s² ,=\\x\\"
    async with _influx(victoria.url) as sink:
        sink.offer(Sample(dev, "temp", 1.5, unit, t0, t0))
        await sink.flush()
        assert sink.stats.written == 1
    deadline = time.monotonic() + GUARD_S
    rows: list[dict[str, object]] = []
    while not rows and time.monotonic() < deadline:
        rows = await victoria.export('{__name__="temp_value"}')
        rows = [
            r for r in rows if isinstance(r["metric"], dict) and r["metric"]["device_id"] == dev
        ]
        await asyncio.sleep(0.05)
    assert len(rows) == 1
    assert rows[0]["metric"] == {"__name__": "temp_value", "device_id": dev, "unit": unit}


@pytest.fixture
async def private_vm(tmp_path: Path) -> AsyncIterator[VictoriaMetrics]:
    """A VictoriaMetrics of this test's own, to stop and start."""
    if not VM_INSTALLED:
        pytest.skip("victoria-metrics not installed (apt-get install victoria-metrics)")
    vm = VictoriaMetrics(tmp_path / "vm")
    vm.start()
    yield vm
    vm.stop()


@needs_vm
@pytest.mark.network
@pytest.mark.slow
async def test_influx_outage_buffers_retries_and_delivers(private_vm: VictoriaMetrics) -> None:
    """Server down: buffered and retried, shed beyond the bound; back up: all within arrive."""
    dev, t0 = _unique("dev"), _now_ms()
    samples = _scalars(dev, "temperature", 230, t0)
    sink = _influx(private_vm.url, max_pending=200, batch_size=50)
    three_failures = _signal_after(sink, "_write", calls=3, failed=True)
    async with sink:
        for s in samples[:20]:
            assert sink.offer(s)
        await sink.flush()
        assert sink.stats.written == 20

        await asyncio.to_thread(private_vm.stop)
        accepted = [sink.offer(s) for s in samples[20:]]
        assert accepted == [True] * 200 + [False] * 10
        async with asyncio.timeout(GUARD_S):
            await three_failures.wait()
        down = sink.stats
        assert not down.backend_ok
        assert down.last_error is not None
        assert (down.written, down.pending, down.shed, down.shedding) == (20, 200, 10, True)

        await asyncio.to_thread(private_vm.start)
        async with asyncio.timeout(GUARD_S):
            await sink.flush()
        up = sink.stats
        assert up.backend_ok
        assert (up.written, up.pending, up.shed, up.rejected, up.shedding) == (
            220,
            0,
            10,
            0,
            False,
        )
    got = await private_vm.read_series(dev, "temperature", 220)
    assert got == [(s.device_ts_ms, s.value) for s in samples[:220]]


@needs_vm
@pytest.mark.network
async def test_influx_starts_while_server_is_down(tmp_path: Path) -> None:
    """A gateway starts and buffers with the server unreachable; data arrives once it is up."""
    vm = VictoriaMetrics(tmp_path / "vm")  # port chosen, nothing listening yet
    dev, t0 = _unique("dev"), _now_ms()
    try:
        sink = _influx(vm.url, max_pending=100, batch_size=30)
        failed = _signal_after(sink, "_write", calls=1, failed=True)
        async with sink:
            for s in _scalars(dev, "temperature", 100, t0):
                assert sink.offer(s)
            async with asyncio.timeout(GUARD_S):
                await failed.wait()
            assert sink.stats.written == 0
            await asyncio.to_thread(vm.start)
            async with asyncio.timeout(GUARD_S):
                await sink.flush()
            assert (sink.stats.written, sink.stats.shed) == (100, 0)
        assert len(await vm.read_series(dev, "temperature", 100)) == 100
    finally:
        vm.stop()


async def test_influx_exit_with_server_down_sheds_leftovers() -> None:
    """Shutdown does not hang on a dead server: after the drain timeout leftovers are shed."""
    sink = _influx(f"http://127.0.0.1:{_free_port()}", drain_timeout_s=0.2)
    failed = _signal_after(sink, "_write", calls=1, failed=True)
    async with sink:
        for s in _scalars("dev", "temperature", 40, _now_ms()):
            assert sink.offer(s)
        async with asyncio.timeout(GUARD_S):
            await failed.wait()
    stats = sink.stats
    assert (stats.written, stats.pending, stats.shed) == (0, 0, 40)
    assert stats.failed_writes >= 1
    assert not sink.offer(Sample("dev", "temperature", 1.0, None, 0, 0))
