"""Link flapping: a link that keeps dropping is a fault of its own, not a series of outages.

A gateway's broker session that is taken over by another client with its client id (a
device, a second gateway with the same account, a misconfigured broker) drops, reconnects,
is taken over again: an alarm's ack can be lost at every turn, while each single outage
lasts only a moment. ``FlapDetector`` notices that pattern: ``max_drops`` drops of one link
within ``window_s`` make it *flapping* (one drop is enough when the broker said "session
taken over", MQTT 5 reason code 0x8E); it stops flapping once it has been up without a drop
for ``quiet_s``.

Pure: times in, verdicts out (``gateway.links.LinkWatch`` turns them into technical alarms).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class FlapPolicy:
    """When a link counts as flapping, and when as settled again."""

    # A broker restart or a network blip drops a link once or twice; three drops within two
    # minutes is a pattern (a take-over loop drops it every second or so).
    window_s: float = 120.0
    max_drops: int = 3
    # Up for five minutes without a drop: settled.
    quiet_s: float = 300.0


@dataclass(frozen=True, slots=True)
class Flapping:
    """A link just became flapping."""

    link: str
    drops: int  # drops within the window, this one included
    window_s: float
    taken_over: bool  # the broker said another client took the session over


@dataclass(slots=True)
class _Link:
    drops: deque[float] = field(default_factory=deque)
    last_drop: float = float("-inf")
    flapping: bool = False


class FlapDetector:
    """Drop times per link, in a sliding window."""

    def __init__(self, policy: FlapPolicy | None = None) -> None:
        self.policy = policy or FlapPolicy()
        self._links: dict[str, _Link] = {}

    def dropped(self, link: str, now: float, *, taken_over: bool = False) -> Flapping | None:
        """``link`` went down at ``now``; a ``Flapping`` when this makes it flapping."""
        state = self._links.setdefault(link, _Link())
        state.drops.append(now)
        state.last_drop = max(state.last_drop, now)
        while state.drops and state.drops[0] <= now - self.policy.window_s:
            state.drops.popleft()
        if state.flapping:
            return None
        if taken_over or len(state.drops) >= self.policy.max_drops:
            state.flapping = True
            return Flapping(link, len(state.drops), self.policy.window_s, taken_over)
        return None

    def settled(self, now: float, up: Collection[str]) -> list[str]:
        """Flapping links that are ``up`` and have not dropped for ``quiet_s``; from now on
        they count as settled (and a new pattern of drops makes them flapping again)."""
        calm = [name for name, state in self._links.items()
                if state.flapping and name in up
                and now - state.last_drop >= self.policy.quiet_s]
        for name in calm:
            state = self._links[name]
            state.flapping = False
            state.drops.clear()
        return sorted(calm)

    def next_check(self) -> float | None:
        """When the earliest flapping link may be settled (None: none is flapping)."""
        times = [s.last_drop + self.policy.quiet_s for s in self._links.values() if s.flapping]
        return min(times, default=None)

    def flapping(self, link: str) -> bool:
        """Whether ``link`` is flapping now."""
        state = self._links.get(link)
        return state is not None and state.flapping
