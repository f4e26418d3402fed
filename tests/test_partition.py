"""The telemetry partition (gateway.partition): pure properties, checked with hypothesis."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from gateway.partition import owner

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
members_st = st.sets(names, min_size=1, max_size=8)
devices_st = st.lists(names, min_size=1, max_size=50, unique=True)


@given(members_st, devices_st)
def test_every_device_has_exactly_one_live_owner(members: set[str], devices: list[str]) -> None:
    """The owner is one of the live members, and the same whatever order they are listed in."""
    for device in devices:
        chosen = owner(device, members)
        assert chosen in members
        assert owner(device, sorted(members, reverse=True)) == chosen


@given(members_st, devices_st, st.data())
def test_a_leaving_member_moves_only_its_own_devices(
    members: set[str], devices: list[str], data: st.DataObject
) -> None:
    """When a member leaves, only the devices it owned change owner."""
    gone = data.draw(st.sampled_from(sorted(members)))
    left = members - {gone}
    for device in devices:
        before = owner(device, members)
        after = owner(device, left)
        if before != gone:
            assert after == before
        else:
            assert after in left or not left


@given(members_st, devices_st, names)
def test_a_joining_member_takes_only_what_it_wins(
    members: set[str], devices: list[str], newcomer: str
) -> None:
    """When a member joins, a device either stays or moves to the newcomer."""
    for device in devices:
        after = owner(device, members | {newcomer})
        assert after in (owner(device, members), newcomer)


def test_no_members_no_owner() -> None:
    """Without live members nobody owns anything."""
    assert owner("dev-1", []) is None


def test_devices_spread_over_members() -> None:
    """A fleet spreads roughly evenly (each of 3 gateways gets 25-42 % of 3,000 devices)."""
    counts = Counter(owner(f"dev-{n}", ["gw1", "gw2", "gw3"]) for n in range(3000))
    assert set(counts) == {"gw1", "gw2", "gw3"}
    assert all(750 <= c <= 1250 for c in counts.values()), counts
