"""Per-source limits of the SIP listener, as pure rules with a fake clock (issue 17.5)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sipguard import (
    BUDGET_WINDOW_S,
    MAX_SOURCES,
    VERIFIED_TTL_S,
    SourceGuard,
)


def test_rate_limit_is_per_source_and_refills() -> None:
    guard = SourceGuard(datagrams_per_s=10, datagram_burst=5)
    assert all(guard.admit("10.0.0.1", 100, 0.0) for _ in range(5))
    assert not guard.admit("10.0.0.1", 100, 0.0)
    # Another source is not affected by the first one's flood.
    assert guard.admit("10.0.0.2", 100, 0.0)
    # Tokens come back at the configured rate.
    assert guard.admit("10.0.0.1", 100, 0.1)
    assert not guard.admit("10.0.0.1", 100, 0.1)
    assert guard.stats.rate_limited == 2


def test_no_more_bytes_to_an_unverified_source_than_it_sent_plus_slack() -> None:
    guard = SourceGuard(slack_bytes=100)
    guard.admit("10.0.0.1", 300, 0.0)
    assert guard.may_send("10.0.0.1", 250, 0.0)
    assert guard.may_send("10.0.0.1", 150, 0.0)
    assert not guard.may_send("10.0.0.1", 1, 0.0), "300 in + 100 slack = 400 out at most"
    assert guard.stats.budget_dropped == 1
    # A new window starts afresh.
    guard.admit("10.0.0.1", 10, BUDGET_WINDOW_S)
    assert guard.may_send("10.0.0.1", 110, BUDGET_WINDOW_S)


def test_verified_and_trusted_sources_are_not_budgeted() -> None:
    guard = SourceGuard.with_trusted(["192.168.10.0/24", "fd00::/8"])
    assert guard.may_send("192.168.10.7", 10_000, 0.0)
    assert guard.may_send("fd00::1", 10_000, 0.0)
    assert not guard.may_send("10.0.0.1", 10_000, 0.0)
    guard.verify("10.0.0.1", 0.0)
    assert guard.is_verified("10.0.0.1", 1.0)
    assert guard.may_send("10.0.0.1", 10_000, 1.0)
    assert not guard.is_verified("10.0.0.1", VERIFIED_TTL_S + 1)
    assert not guard.is_verified("not an address", 0.0)
    with pytest.raises(ValueError):
        SourceGuard.with_trusted(["not a network"])


def test_connections_per_source() -> None:
    guard = SourceGuard(max_connections_per_source=2)
    assert guard.open_connection("a") and guard.open_connection("a")
    assert not guard.open_connection("a")
    assert guard.open_connection("b")
    guard.close_connection("a")
    assert guard.connections("a") == 1 and guard.open_connection("a")
    assert guard.stats.connections_refused == 1


def test_sources_are_bounded() -> None:
    guard = SourceGuard()
    for n in range(MAX_SOURCES + 100):
        guard.admit(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", 1, 0.0)
    assert len(guard._sources) == MAX_SOURCES


@settings(max_examples=200)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 20_000), st.floats(0, 5)),
                max_size=200))
def test_an_unverified_source_never_gets_more_than_it_sent_plus_slack(
    steps: list[tuple[bool, int, float]],
) -> None:
    """Whatever a forger sends, the bytes reflected per window stay within the bound."""
    guard = SourceGuard()
    now, received, sent = 0.0, 0, 0
    window: float | None = None  # the guard's window starts with the source's first packet
    for incoming, size, advance in steps:
        now += advance
        if window is None or now - window >= BUDGET_WINDOW_S:
            window, received, sent = now, 0, 0
        if incoming:
            if guard.admit("198.51.100.9", size, now):
                received += size
        elif guard.may_send("198.51.100.9", size, now):
            sent += size
        assert sent <= received + guard.slack_bytes
