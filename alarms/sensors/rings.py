"""Fixed-size per-stream ring buffers of (ts_ms, value), stored as two 2-D numpy arrays.

One row per stream, ``capacity`` columns; a batch of many streams is written with one fancy
assignment. Rows are handed out on first write, so a store for battery readings does not
pay for the thousands of motion and door streams.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import numpy.typing as npt

from alarms.sensors.episodes import segment_starts

_T = TypeVar("_T", bound=np.generic)


class RingStore:
    """The last ``capacity`` samples of each stream, optionally one per ``bucket_ms``."""

    def __init__(self, capacity: int, bucket_ms: int = 0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        # With a bucket, only the first sample of each bucket (e.g. each hour) is kept: a
        # battery read every 90 s would otherwise fill the ring in hours, and a discharge
        # slope needs days.
        self.bucket_ms = bucket_ms
        self._row_of = np.full(0, -1, dtype=np.intp)
        self._rows = 0
        self.ts = np.zeros((0, capacity), dtype=np.int64)
        self.val = np.zeros((0, capacity), dtype=np.float64)
        self.count = np.zeros(0, dtype=np.int64)

    def row_of(self, streams: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
        """The row of each stream, -1 if it has never been written."""
        out = np.full(streams.size, -1, dtype=np.intp)
        known = streams < self._row_of.size
        out[known] = self._row_of[streams[known]]
        return out

    def _allocate(self, streams: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
        if streams.size and int(streams.max()) >= self._row_of.size:
            size = max(int(streams.max()) + 1, 2 * self._row_of.size, 16)
            grown = np.full(size, -1, dtype=np.intp)
            grown[: self._row_of.size] = self._row_of
            self._row_of = grown
        uniq = np.unique(streams)
        new = uniq[self._row_of[uniq] < 0]
        if new.size:
            self._row_of[new] = np.arange(self._rows, self._rows + new.size, dtype=np.intp)
            self._rows += new.size
            if self._rows > self.count.size:
                size = max(self._rows, 2 * self.count.size, 16)
                self.ts = _grow2(self.ts, size)
                self.val = _grow2(self.val, size)
                self.count = np.concatenate(
                    [self.count, np.zeros(size - self.count.size, dtype=np.int64)]
                )
        return self._row_of[streams]

    def write(
        self,
        stream: npt.NDArray[np.intp],
        ts_ms: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
    ) -> None:
        """Append a (stream, time)-sorted batch."""
        if stream.size == 0:
            return
        row = self._allocate(stream)
        if self.bucket_ms:
            bucket = ts_ms // self.bucket_ms
            prev = np.empty_like(bucket)
            prev[1:] = bucket[:-1]
            first = segment_starts(stream)
            stored = self.count[row] > 0
            last_slot = (self.count[row] - 1) % self.capacity
            last_bucket = np.where(stored, self.ts[row, last_slot] // self.bucket_ms, -1)
            prev = np.where(first, last_bucket, prev)
            keep = bucket != prev
            stream, ts_ms, value, row = stream[keep], ts_ms[keep], value[keep], row[keep]
            if stream.size == 0:
                return
        n = stream.size
        pos = np.arange(n, dtype=np.intp)
        first = segment_starts(stream)
        seg_start = np.maximum.accumulate(np.where(first, pos, 0))
        rank = pos - seg_start
        ends = np.flatnonzero(np.append(first[1:], True))
        lengths = ends - np.flatnonzero(first) + 1
        seg_len = np.repeat(lengths, lengths)
        # Only the last ``capacity`` samples of a stream survive; writing just those keeps
        # each slot assigned once (numpy leaves repeated fancy-index writes unordered).
        keep = rank >= seg_len - self.capacity
        slot = (self.count[row] + rank) % self.capacity
        # Flat indices into the raveled (contiguous) arrays: cheaper than a 2-D fancy index.
        flat = row[keep] * self.capacity + slot[keep]
        np.put(self.ts, flat, ts_ms[keep])
        np.put(self.val, flat, value[keep])
        self.count[row[ends]] += seg_len[ends]

    def history(self, stream: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """One stream's stored samples, oldest first."""
        if stream >= self._row_of.size or self._row_of[stream] < 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        row = int(self._row_of[stream])
        n = int(min(self.count[row], self.capacity))
        order = (int(self.count[row]) - n + np.arange(n)) % self.capacity
        return self.ts[row, order], self.val[row, order]

    def matrix(
        self, streams: npt.NDArray[np.intp]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """Several streams' samples as (rows x capacity) arrays, oldest first, plus a mask."""
        row = self.row_of(streams)
        row = np.where(row < 0, 0, row)
        count = self.count[row] if self.count.size else np.zeros(row.size, dtype=np.int64)
        k = self.capacity
        col = np.arange(k, dtype=np.int64)
        filled = np.minimum(count, k)
        order = (count[:, None] - filled[:, None] + col[None, :]) % k
        valid = col[None, :] < filled[:, None]
        valid &= (self.row_of(streams) >= 0)[:, None]
        ts = np.take_along_axis(self.ts[row], order, axis=1)
        val = np.take_along_axis(self.val[row], order, axis=1)
        return ts, val, valid


def _grow2(arr: npt.NDArray[_T], rows: int) -> npt.NDArray[_T]:
    out = np.zeros((rows, arr.shape[1]), dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out
