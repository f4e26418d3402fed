"""The telemetry sink port: the sample type, the interface, and the shared buffering machinery.

Overflow policy (docs/telemetry.md): telemetry is *sheddable*. Every sink holds at most
``max_pending`` samples (buffered plus the batch being written). ``offer`` never blocks, never
awaits and never raises: when the bound is reached the *new* sample is refused (``False``),
counted in ``stats.shed`` and logged at most once per ``SHED_LOG_INTERVAL_S``. Alarm handling
never waits on telemetry storage; a slow or dead database costs telemetry, never alarms.
``stats.shedding`` stays true from the first shed until the backlog has drained to half the
bound, so the gateway can raise a technical alarm for the whole episode without flapping.

Within the bound nothing is lost: a failed batch is kept and retried with jittered, capped
exponential back-off until it is written, or until the backend answers that the data itself
is unacceptable (counted in ``stats.rejected``, never retried).

One bad sample never costs the others (issue 17.6: a lone surrogate in one ``unit`` once made
the store drop a batch of 4,491 samples of other devices). A sample this backend can never
store (``_unwritable``: text that is not valid Unicode) is rejected before the batch is
written; and a batch the backend refuses as data is split in halves and each half written
again, down to the single samples it refuses, within ``MAX_ISOLATION_WRITES`` writes per
batch (a backend that refuses a whole batch for a reason of its own, say a bucket's
retention, is not asked thousands of times). Both sinks' writes are idempotent in effect
(SQLite rolls a failed batch back; InfluxDB overwrites a point with the same series and
time), so writing a half again stores nothing twice.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, TypeAlias, TypeVar, runtime_checkable

from devices.contract import TelemetryMessage
from gateway.ratelimit import LogLimiter

_LOGGER = logging.getLogger(__name__)

Value: TypeAlias = float | tuple[float, ...]
"""A sample's value: a scalar, or a vector such as an accelerometer window."""

SeriesPoint: TypeAlias = tuple[int, Value]
"""One point of a query answer: (timestamp in epoch ms, value)."""

_T = TypeVar("_T")

# Shedding is logged at warning level, but at most this often (with the count since the last
# line): under a sustained overload every offer sheds, and one log line per sample would turn
# a telemetry problem into a logging problem.
SHED_LOG_INTERVAL_S = 60.0

# A batch the backend refuses as data is bisected to find the samples it refuses; this many
# writes at most per batch. One bad sample in a batch of 5,000 takes about 2 × log2(5,000)
# = 26 writes to isolate; 64 isolates a few, and bounds what a wholesale refusal costs.
MAX_ISOLATION_WRITES = 64

# Rejections are logged once a minute per sink (with the count suppressed): they come per
# sample, from devices, and the counter is the signal.
REJECT_LOG_INTERVAL_S = 60.0


class TsdbError(Exception):
    """Base class of telemetry-store errors."""


class QueryNotSupportedError(TsdbError, NotImplementedError):
    """The sink is write-only (e.g. InfluxDB: read it with Flux, InfluxQL or Grafana)."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One telemetry sample as stored: who, what, value, and both clocks."""

    device_id: str
    metric: str
    value: Value
    unit: str | None
    device_ts_ms: int
    received_ms: int

    def __post_init__(self) -> None:
        """Refuse values no backend can store (NaN, infinities, empty vectors)."""
        if isinstance(self.value, tuple):
            if not self.value or not all(math.isfinite(v) for v in self.value):
                raise ValueError("vector value must be non-empty and finite")
        elif not math.isfinite(self.value):
            raise ValueError("value must be finite")

    @classmethod
    def from_message(cls, msg: TelemetryMessage, received_ms: int) -> Sample:
        """The sample of a parsed device message, stamped with the gateway's receive time."""
        return cls(
            device_id=msg.device_id,
            metric=msg.metric,
            value=msg.value,
            unit=msg.unit,
            device_ts_ms=msg.ts_ms,
            received_ms=received_ms,
        )


def magnitude(value: Value) -> float:
    """The scalar used wherever a single number is needed: itself, or a vector's L2 norm."""
    if isinstance(value, tuple):
        return math.hypot(*value)
    return value


@dataclass(frozen=True, slots=True)
class SinkStats:
    """A snapshot of a sink's counters, for /metrics and the technical-alarm check."""

    written: int
    """Samples durably accepted by the backend."""
    shed: int
    """Samples refused by ``offer`` (bound reached or sink closed) or lost at shutdown."""
    rejected: int
    """Samples the backend refused as invalid; not retried."""
    failed_writes: int
    """Write attempts (batches) that raised."""
    retries: int
    """Back-off retries of failed batches."""
    pending: int
    """Samples buffered or in the batch being written."""
    last_error: str | None
    """The most recent write error, kept after recovery for diagnosis."""
    shedding: bool
    """True from the first shed until the backlog drains to half the bound."""
    backend_ok: bool
    """False while the current batch is failing and being retried."""


@runtime_checkable
class TelemetrySink(Protocol):
    """What the gateway needs from a telemetry store. Use as ``async with sink: ...``."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def offer(self, sample: Sample) -> bool:
        """Queue a sample; never blocks or raises. False: shed (bound reached), counted."""
        ...

    @property
    def stats(self) -> SinkStats:
        """Current counters."""
        ...

    async def flush(self) -> None:
        """Wait until every sample offered so far is written, rejected or shed."""
        ...

    async def wait(self) -> None:
        """Until the sink's loops end (on close, or if they die)."""
        ...

    async def query(
        self, device_id: str, metric: str, start_ms: int, end_ms: int, max_points: int
    ) -> list[SeriesPoint]:
        """Points in ``[start_ms, end_ms)``, bucket-averaged to at most ``max_points``."""
        ...


class BufferedSink(abc.ABC):
    """Bounded buffer, batching writer task, retry and flush, shared by every sink.

    Subclasses implement ``_open``, ``_close``, ``_write`` (one batch; raise on failure) and
    ``_retryable``. Blocking backend calls run on ``self._executor``, a single thread owned by
    the sink, so the backend client is only ever touched from one thread and shutdown can wait
    for an in-flight call before closing it.

    All methods must be called from the event loop thread (``offer`` included: it is a plain
    function so that callers cannot be made to wait, not a thread-safe one).
    """

    def __init__(
        self,
        *,
        name: str,
        max_pending: int,
        batch_size: int,
        max_batch_delay_s: float,
        drain_timeout_s: float,
        backoff_initial_s: float,
        backoff_max_s: float,
    ) -> None:
        if max_pending < 1 or batch_size < 1:
            raise ValueError("max_pending and batch_size must be positive")
        self._name = name
        self._max_pending = max_pending
        self._batch_size = batch_size
        self._max_batch_delay_s = max_batch_delay_s
        self._drain_timeout_s = drain_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s

        self._buffer: deque[Sample] = deque()
        self._inflight = 0
        self._accepting = True
        # Every accepted sample gets a sequence number; it is "done" once written, rejected
        # or lost at shutdown. flush() waits for done >= the accepted count at call time.
        self._accepted = 0
        self._done = 0

        self._written = 0
        self._shed = 0
        self._rejected = 0
        self._failed_writes = 0
        self._retries = 0
        self._last_error: str | None = None
        self._shedding = False
        self._backend_ok = True
        self._shed_unlogged = 0
        self._shed_logged_at = -math.inf
        self._reject_log = LogLimiter(REJECT_LOG_INTERVAL_S)

        self._flush_waiters = 0
        self._wake: asyncio.Event | None = None
        self._batch_ready: asyncio.Event | None = None
        self._progress: asyncio.Condition | None = None
        self._runner: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    # -- the port ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Open the backend and start the writer (and any maintenance) task."""
        if self._runner is not None:
            raise RuntimeError(f"{self._name} is already running; it is not re-entrant")
        # Events are created here, not in __init__, so they bind to the loop that runs us.
        self._wake = asyncio.Event()
        self._batch_ready = asyncio.Event()
        self._progress = asyncio.Condition()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        try:
            await self._open()
        except BaseException:
            await self._stop_executor()
            raise
        self._accepting = True
        if self._buffer:  # offered before start: write them now
            self._wake.set()
        self._runner = asyncio.create_task(self._run(), name=f"{self._name} runner")
        return self

    async def wait(self) -> None:
        """Until the sink's loops end (on close, or if they die)."""
        assert self._runner is not None
        await asyncio.shield(self._runner)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Drain for up to ``drain_timeout_s``, stop the tasks, count leftovers as shed."""
        runner = self._runner
        if runner is None:
            return
        self._accepting = False
        try:
            async with asyncio.timeout(self._drain_timeout_s):
                await self.flush()
        except TimeoutError:
            _LOGGER.warning(
                "%s: %d telemetry samples not written within %.1f s of shutdown; shedding them",
                self._name,
                self.stats.pending,
                self._drain_timeout_s,
            )
        runner.cancel()
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        finally:
            self._runner = None
            lost = len(self._buffer) + self._inflight
            self._buffer.clear()
            self._inflight = 0
            self._shed += lost
            await self._mark_done(lost)
            await self._close()
            await self._stop_executor()

    def offer(self, sample: Sample) -> bool:
        """Queue ``sample`` for writing. Never blocks, awaits or raises.

        Returns False when the sample is shed: the sink is closed or already holds
        ``max_pending`` samples. Shed samples are counted and logged (rate-limited).
        """
        if not self._accepting or len(self._buffer) + self._inflight >= self._max_pending:
            self._note_shed()
            return False
        self._buffer.append(sample)
        self._accepted += 1
        if self._wake is not None and self._batch_ready is not None:
            self._wake.set()
            if len(self._buffer) >= self._batch_size:
                self._batch_ready.set()
        return True

    @property
    def stats(self) -> SinkStats:
        """A snapshot of the counters."""
        return SinkStats(
            written=self._written,
            shed=self._shed,
            rejected=self._rejected,
            failed_writes=self._failed_writes,
            retries=self._retries,
            pending=len(self._buffer) + self._inflight,
            last_error=self._last_error,
            shedding=self._shedding,
            backend_ok=self._backend_ok,
        )

    async def flush(self) -> None:
        """Wait until everything offered so far is written, rejected or shed.

        Skips the batch delay. While the backend is down this waits for it to come back;
        wrap it in ``asyncio.timeout`` if that is not wanted.
        """
        target = self._accepted
        if self._done >= target:
            return
        if self._runner is None or self._progress is None or self._batch_ready is None:
            raise RuntimeError(f"{self._name} is not running; enter it with 'async with'")
        self._flush_waiters += 1
        self._batch_ready.set()
        try:
            async with self._progress:
                await self._progress.wait_for(lambda: self._done >= target)
        finally:
            self._flush_waiters -= 1

    @abc.abstractmethod
    async def query(
        self, device_id: str, metric: str, start_ms: int, end_ms: int, max_points: int
    ) -> list[SeriesPoint]:
        """Points in ``[start_ms, end_ms)``, bucket-averaged to at most ``max_points``."""

    # -- for subclasses ------------------------------------------------------------------

    @abc.abstractmethod
    async def _open(self) -> None:
        """Connect to / create the backend (may use ``_in_thread``)."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Release the backend; the writer task has stopped."""

    @abc.abstractmethod
    async def _write(self, batch: Sequence[Sample]) -> None:
        """Write one batch durably, or raise."""

    @abc.abstractmethod
    def _retryable(self, exc: Exception) -> bool:
        """Whether a write error is transient (retry) or about the data (reject)."""

    def _unwritable(self, sample: Sample) -> str | None:
        """Why this backend can never store ``sample``, or None. Checked before each write.

        Every backend here stores text as UTF-8, which a lone surrogate cannot be encoded in
        (the MQTT codec refuses those; other paths into the sink might not).
        """
        for text in (sample.device_id, sample.metric, sample.unit):
            if text is not None and not text.isascii() and not _is_unicode(text):
                return "text that is not valid Unicode"
        return None

    def _start_background(self, tg: asyncio.TaskGroup) -> None:  # noqa: B027  (optional hook)
        """Start extra owned tasks (e.g. periodic maintenance) in the sink's TaskGroup."""

    async def _in_thread(self, fn: Callable[..., _T], /, *args: object) -> _T:
        """Run a blocking backend call on the sink's own thread."""
        if self._executor is None:
            raise RuntimeError(f"{self._name} is not running; enter it with 'async with'")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    # -- internals -----------------------------------------------------------------------

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._write_loop(), name=f"{self._name} writer")
            self._start_background(tg)

    async def _write_loop(self) -> None:
        assert self._wake is not None
        assert self._batch_ready is not None
        while True:
            await self._wake.wait()
            if not self._urgent():
                # [1] Wait for a full batch, a flush, or the max batch delay, whichever comes
                # first: small batches cost a transaction (SQLite) or a request (InfluxDB).
                self._batch_ready.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._max_batch_delay_s):
                        await self._batch_ready.wait()
            n = min(len(self._buffer), self._batch_size)
            batch = [self._buffer.popleft() for _ in range(n)]
            self._inflight = n
            if not self._buffer:
                self._wake.clear()
            if batch:
                await self._write_isolating(batch)
            self._inflight = 0
            await self._mark_done(n)

    def _urgent(self) -> bool:
        return (
            len(self._buffer) >= self._batch_size or self._flush_waiters > 0 or not self._accepting
        )

    async def _write_isolating(self, batch: Sequence[Sample]) -> None:
        """Write ``batch``; reject only the samples that cannot be stored (module docstring)."""
        good: list[Sample] = []
        for sample in batch:
            reason = self._unwritable(sample)
            if reason is None:
                good.append(sample)
            else:
                self._reject([sample], reason)
        chunks = [good] if good else []
        budget = MAX_ISOLATION_WRITES
        refusal: str | None = None
        while chunks:
            chunk = chunks.pop()
            if budget == 0:
                # Out of writes: what is left shares the fate of the refused rest.
                self._reject(chunk, f"not tried again after {refusal}")
                continue
            budget -= 1
            refusal = await self._write_with_retry(chunk)
            if refusal is None:
                continue
            if len(chunk) == 1 or budget < 2:
                self._reject(chunk, refusal)
                continue
            # Halves in order: the first half is written first (popped last-in first-out).
            half = len(chunk) // 2
            chunks += [chunk[half:], chunk[:half]]

    def _reject(self, samples: Sequence[Sample], reason: str) -> None:
        self._rejected += len(samples)
        first = samples[0]
        self._reject_log.log(
            _LOGGER, logging.WARNING, "rejected",
            "%s: %d telemetry sample(s) cannot be stored, dropped (first: device %s, metric "
            "%s): %s", self._name, len(samples), ascii(first.device_id), ascii(first.metric),
            reason,
        )

    async def _write_with_retry(self, batch: Sequence[Sample]) -> str | None:
        """Write ``batch``, retrying transient errors; the refusal if the data is refused."""
        attempt = 0
        while True:
            try:
                await self._write(batch)
            except Exception as exc:  # noqa: BLE001  the backend boundary: classify, never die
                self._failed_writes += 1
                self._last_error = f"{type(exc).__name__}: {exc}"[:500]
                if not self._retryable(exc):
                    return self._last_error
                self._backend_ok = False
                delay = self._backoff_delay(attempt)
                if attempt == 0:
                    _LOGGER.warning(
                        "%s: write failed, retrying with back-off (pending %d): %s",
                        self._name,
                        len(self._buffer) + self._inflight,
                        self._last_error,
                    )
                attempt += 1
                self._retries += 1
                await asyncio.sleep(delay)
            else:
                self._written += len(batch)
                if not self._backend_ok:
                    self._backend_ok = True
                    _LOGGER.info("%s: writes recovered after %d retries", self._name, attempt)
                return None

    def _backoff_delay(self, attempt: int) -> float:
        # "Equal jitter": half the capped exponential is fixed, half random, so retries from
        # several gateways spread out but never hammer a recovering server with ~0 s delays.
        cap = min(self._backoff_max_s, self._backoff_initial_s * 2.0 ** min(attempt, 30))
        return cap / 2 + random.uniform(0, cap / 2)

    async def _mark_done(self, n: int) -> None:
        self._done += n
        if self._shedding and len(self._buffer) + self._inflight <= self._max_pending // 2:
            self._shedding = False
            _LOGGER.info("%s: backlog drained, no longer shedding telemetry", self._name)
        if self._progress is not None:
            async with self._progress:
                self._progress.notify_all()

    def _note_shed(self) -> None:
        self._shed += 1
        self._shed_unlogged += 1
        self._shedding = True
        now = time.monotonic()
        if now - self._shed_logged_at >= SHED_LOG_INTERVAL_S:
            _LOGGER.warning(
                "%s: shedding telemetry (%s, %d pending); %d samples shed since last report",
                self._name,
                "closed" if not self._accepting else "buffer full",
                len(self._buffer) + self._inflight,
                self._shed_unlogged,
            )
            self._shed_logged_at = now
            self._shed_unlogged = 0

    async def _stop_executor(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            # Waits for an in-flight backend call so _close never races it.
            await asyncio.to_thread(executor.shutdown, wait=True)


def _is_unicode(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
