"""Epoch milliseconds <-> Europe/Stockholm wall-clock time, vectorised and DST-correct.

Rules are written in local time ("night is 22:00-07:00") but samples carry UTC epoch
milliseconds. A fixed offset would be wrong for half the year, and wrong by an hour on the
two nights the clocks change, which are exactly the nights a bed-exit rule is tested on. So
the UTC offset is looked up in the tz database (zoneinfo) once per UTC hour the batch spans
and broadcast to the samples: a batch of a million samples over ten minutes costs one or two
zoneinfo calls, not a million.
"""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

TZ_NAME = "Europe/Stockholm"
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
_EPOCH = date(1970, 1, 1)
# Above this many hours in one batch, look up only the hours that occur instead of a table.
_TABLE_MAX_HOURS = 24 * 62

I64: np.dtype[np.int64] = np.dtype(np.int64)


@functools.lru_cache(maxsize=8)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@functools.lru_cache(maxsize=1 << 16)
def _offset_ms(tz_name: str, at_ms: int) -> int:
    moment = datetime.fromtimestamp(at_ms / 1000, tz=UTC).astimezone(_zone(tz_name))
    offset = moment.utcoffset()
    assert offset is not None
    return int(offset.total_seconds()) * 1000


def _hour_offsets(tz_name: str, hours: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The UTC offset in force during each whole UTC hour.

    Every transition of Europe/Stockholm (and of every European zone) falls on a whole UTC
    hour, so one lookup per hour is exact. For a zone whose transition falls inside an hour,
    ``local_ms`` corrects the samples of that hour one by one.
    """
    return np.fromiter(
        (_offset_ms(tz_name, int(h) * HOUR_MS) for h in hours), dtype=np.int64, count=len(hours)
    )


def offsets_ms(ts_ms: npt.NDArray[np.int64], tz_name: str = TZ_NAME) -> npt.NDArray[np.int64]:
    """The UTC offset (ms) of ``tz_name`` in force at each instant."""
    if ts_ms.size == 0:
        return np.zeros(0, dtype=np.int64)
    hour = ts_ms // HOUR_MS
    lo, hi = int(hour.min()), int(hour.max())
    if hi - lo <= _TABLE_MAX_HOURS:
        table = _hour_offsets(tz_name, np.arange(lo, hi + 1, dtype=np.int64))
        out = table[hour - lo]
        mixed_hours = np.arange(lo, hi + 1, dtype=np.int64)[
            table != _hour_offsets(tz_name, np.arange(lo + 1, hi + 2, dtype=np.int64))
        ]
    else:
        uniq, inverse = np.unique(hour, return_inverse=True)
        out = _hour_offsets(tz_name, uniq)[inverse]
        nxt = _hour_offsets(tz_name, uniq + 1)
        mixed_hours = uniq[_hour_offsets(tz_name, uniq) != nxt]
    if mixed_hours.size:
        # An offset change inside an hour (not the case for Stockholm): exact per sample.
        for i in np.flatnonzero(np.isin(hour, mixed_hours)):
            out[i] = _offset_ms(tz_name, int(ts_ms[i]))
    return out


def local_ms(ts_ms: npt.NDArray[np.int64], tz_name: str = TZ_NAME) -> npt.NDArray[np.int64]:
    """Wall-clock time as if it were UTC: ``local_ms % DAY_MS`` is the time of day."""
    return ts_ms + offsets_ms(ts_ms, tz_name)


def minute_of_day(ts_ms: npt.NDArray[np.int64], tz_name: str = TZ_NAME) -> npt.NDArray[np.int64]:
    """Local minute of the day (0..1439) of each instant."""
    return (local_ms(ts_ms, tz_name) % DAY_MS) // MINUTE_MS


def in_window(
    minute: npt.NDArray[np.int64],
    start_min: npt.NDArray[np.int64] | int,
    end_min: npt.NDArray[np.int64] | int,
) -> npt.NDArray[np.bool_]:
    """Whether each local minute lies in [start, end); a window with start > end wraps."""
    start = np.asarray(start_min, dtype=np.int64)
    end = np.asarray(end_min, dtype=np.int64)
    plain = (minute >= start) & (minute < end)
    wrapped = (minute >= start) | (minute < end)
    return np.where(start <= end, plain, wrapped)


def local_day(ts_ms: int, tz_name: str = TZ_NAME) -> int:
    """The local calendar day of an instant, as days since 1970-01-01."""
    return (ts_ms + _offset_ms(tz_name, ts_ms)) // DAY_MS


@functools.lru_cache(maxsize=1 << 14)
def utc_ms_of_local(day: int, minute: int, tz_name: str = TZ_NAME) -> int:
    """The instant at which local ``day`` reaches wall-clock ``minute``.

    On the spring-forward day a time in the missing hour (02:30) does not exist; zoneinfo's
    fold=0 reading puts it an hour later in wall-clock terms (03:30), i.e. the check happens
    as soon as the clock passes it. On the fall-back day a time in the repeated hour means its
    first occurrence.
    """
    moment = datetime.combine(
        _EPOCH + timedelta(days=day), datetime.min.time(), tzinfo=_zone(tz_name)
    ) + timedelta(minutes=minute)
    # datetime + timedelta is wall-clock arithmetic in the same tzinfo; that is what we want.
    return int(moment.timestamp() * 1000)


def utc_ms_of_local_array(
    day: int, minutes: npt.NDArray[np.int64], tz_name: str = TZ_NAME
) -> npt.NDArray[np.int64]:
    """``utc_ms_of_local`` for many minutes of one day (few distinct values in practice)."""
    if minutes.size == 0:
        return np.zeros(0, dtype=np.int64)
    uniq, inverse = np.unique(minutes, return_inverse=True)
    table = np.array([utc_ms_of_local(day, int(m), tz_name) for m in uniq], dtype=np.int64)
    return table[inverse]


def hhmm(ts_ms: int, tz_name: str = TZ_NAME) -> str:
    """Local wall-clock ``HH:MM`` of an instant, for alarm texts."""
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC).astimezone(_zone(tz_name))
    return f"{moment:%H:%M}"
