"""Battery discharge trend: a least-squares line through recent readings, many devices at once.

A battery-low flag from the device comes when the battery is nearly empty; staff want to
swap it on a planned visit days before. A straight line through the last days of readings
predicts when the level reaches "empty". Straight is good enough over a window of days for
the slow, near-linear middle of a lithium cell's discharge; the prediction is refreshed with
every reading, so the knee at the end only makes it more urgent, never silent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from alarms.sensors.localtime import DAY_MS

# A rise this big between two readings is a new battery (or a charged one): the line must
# start again after it, or the old battery's slope would predict the new one's end.
REPLACEMENT_JUMP = 0.15


@dataclass(frozen=True, slots=True)
class Forecast:
    """Per row: whether a forecast could be made, and what it says."""

    ok: npt.NDArray[np.bool_]
    slope_per_day: npt.NDArray[np.float64]
    level_now: npt.NDArray[np.float64]
    days_left: npt.NDArray[np.float64]
    last_ts: npt.NDArray[np.int64]
    last_value: npt.NDArray[np.float64]


def forecast(
    ts: npt.NDArray[np.int64],
    val: npt.NDArray[np.float64],
    valid: npt.NDArray[np.bool_],
    *,
    empty_level: npt.NDArray[np.float64],
    window_ms: npt.NDArray[np.int64],
    min_readings: npt.NDArray[np.int64],
    min_span_ms: npt.NDArray[np.int64],
) -> Forecast:
    """Fit ``level = a + b * days`` per row over its valid, recent, same-battery readings.

    Rows are oldest-first with the valid cells leading (as ``RingStore.matrix`` returns them).
    Parameters are per row, so each recipient's settings apply to their own devices.
    """
    rows, cols = ts.shape
    col = np.arange(cols)
    filled = valid.sum(axis=1)
    last_col = np.maximum(filled - 1, 0)
    last_ts = ts[np.arange(rows), last_col]
    last_value = val[np.arange(rows), last_col]

    rise = np.zeros((rows, cols), dtype=np.bool_)
    rise[:, 1:] = (val[:, 1:] - val[:, :-1] > REPLACEMENT_JUMP) & valid[:, 1:]
    since = np.max(np.where(rise, col[None, :], 0), axis=1)
    use = valid & (col[None, :] >= since[:, None]) & (ts >= (last_ts - window_ms)[:, None])

    w = use.astype(np.float64)
    x = np.where(use, (ts - last_ts[:, None]) / DAY_MS, 0.0)
    y = np.where(use, val, 0.0)
    s = w.sum(axis=1)
    sx = x.sum(axis=1)
    sy = y.sum(axis=1)
    sxx = (x * x).sum(axis=1)
    sxy = (x * y).sum(axis=1)
    denom = s * sxx - sx * sx
    first_ts = np.min(np.where(use, ts, np.iinfo(np.int64).max), axis=1)
    span = np.where(s > 0, last_ts - first_ts, 0)
    ok = (s >= min_readings) & (span >= min_span_ms) & (denom > 1e-12)

    safe = np.where(ok, denom, 1.0)
    slope = np.where(ok, (s * sxy - sx * sy) / safe, 0.0)
    level = np.where(ok, (sy - slope * sx) / np.where(s > 0, s, 1.0), last_value)
    falling = ok & (slope < 0)
    days_left = np.where(
        falling,
        np.maximum(level - empty_level, 0.0) / np.where(falling, -slope, 1.0),
        np.inf,
    )
    return Forecast(ok, slope, level, days_left, last_ts, last_value)
