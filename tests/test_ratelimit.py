"""LogLimiter: one line per key per interval, with the count of what it suppressed."""

from __future__ import annotations

import logging

import pytest

from gateway.ratelimit import LogLimiter

_LOGGER = logging.getLogger("tests.ratelimit")


def test_one_line_per_key_per_interval_with_the_suppressed_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    limiter = LogLimiter(60.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger=_LOGGER.name)
    for n in range(5):
        limiter.log(_LOGGER, logging.WARNING, "a", "message %d", n)
    limiter.log(_LOGGER, logging.INFO, "b", "other")
    now[0] = 60.0
    assert limiter.log(_LOGGER, logging.WARNING, "a", "message %d", 5)
    assert not limiter.log(_LOGGER, logging.WARNING, "a", "message %d", 6)
    assert [r.getMessage() for r in caplog.records] == [
        "message 0", "other", "message 5 (4 similar suppressed)"]
    # The caller's line, not the limiter's, is on the record.
    assert caplog.records[0].funcName == "test_one_line_per_key_per_interval_with_the_suppressed_count"


def test_exc_info_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    limiter = LogLimiter(60.0)
    try:
        raise ValueError("boom")
    except ValueError as exc:
        limiter.log(_LOGGER, logging.ERROR, "e", "failed for %s", "x", exc_info=exc)
    [record] = caplog.records
    assert record.exc_info is not None and record.exc_info[1] is not None
    assert str(record.exc_info[1]) == "boom"
    caplog.clear()  # the logged exception was the point of this test
