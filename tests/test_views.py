"""The JSON shapes' helpers: ``iso`` writes exactly what ``datetime.isoformat`` writes."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from gateway.views import iso


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False) | st.integers(0, 4 * 10**9).map(
    lambda n: n + 0.9999995))
def test_iso_is_datetime_isoformat_to_the_millisecond(ts: float) -> None:
    assert iso(ts) == datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
