"""Per-source limits for the SIP listener: no reflection, no flood, no lock-out (issue 17.5).

Pure bookkeeping: every method takes ``now`` (monotonic seconds) and nothing here does I/O,
so the listener (``gateway.sip``) stays thin and the rules are tested on their own.

UDP has no handshake: the source address of a datagram may be forged, and whatever we send
goes to whoever the forger named. So, per source IP:

- **Verified or not.** A source is *verified* once it answered one of our own requests (the
  ``<mrs>`` MESSAGE) with a 2xx carrying our random branch, which only a host that receives
  at that address can do; TCP and TLS peers are verified by their handshake; and an operator
  may list trusted networks (the controllers' VPN). A verification lasts ``VERIFIED_TTL_S``.
- **No amplification toward unverified sources.** What we send to an unverified source in a
  window is at most what it sent us in that window plus ``UNVERIFIED_SLACK_BYTES``; nothing
  is retransmitted to it. Beyond that we stay silent (a real controller retransmits, which
  earns the answer). Flooding with a victim's address thus reflects fewer bytes than it costs.
- **Datagrams per second.** A token bucket per source; datagrams beyond it are dropped
  before they are parsed. Other sources have buckets of their own, so one flood locks no one
  else out (a forger using a controller's own address can slow that controller down: use TCP
  or TLS for controllers that can, see docs/security.md).
- **TCP connections per source**, so one host cannot take every connection slot.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

# A verification proves that the host received our packet at that address; addresses of
# controllers on mobile networks change over hours, so it is renewed daily by traffic.
VERIFIED_TTL_S = 24 * 3600.0

# The accounting window for the byte budget toward unverified sources.
BUDGET_WINDOW_S = 60.0

# Bytes an unverified source may receive beyond what it sent, per window: room for the
# first <mrs> MESSAGE (~450 bytes) after the 200 to a first-contact controller, whose
# request alone would not pay for both. A forger gains at most this per window and victim.
UNVERIFIED_SLACK_BYTES = 1024

# Datagrams per second and burst per source. A controller sends a few per minute (alarms,
# heartbeats, the 200s to our <mrs>), at most a handful in a second when it retransmits;
# twenty a second is far above that and far below what costs us anything.
DATAGRAMS_PER_S = 20.0
DATAGRAM_BURST = 40.0

# TCP connections per source IP: a controller needs one; a few controllers behind one NAT,
# a few each.
MAX_CONNECTIONS_PER_SOURCE = 8

# Sources remembered (buckets, budgets, verifications); the oldest is forgotten first. A
# forgotten source starts again from a full bucket and an empty budget: never more lenient
# than the bound above.
MAX_SOURCES = 8192


@dataclass(slots=True)
class _Source:
    tokens: float
    refilled: float
    window_start: float
    received: int = 0
    sent: int = 0
    verified_until: float = 0.0


@dataclass(slots=True)
class GuardStats:
    """Counters for /metrics and tests."""

    rate_limited: int = 0
    budget_dropped: int = 0
    budget_dropped_bytes: int = 0
    verified: int = 0
    connections_refused: int = 0


@dataclass(slots=True)
class SourceGuard:
    """The per-source rules of the module doc, for one listener."""

    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    datagrams_per_s: float = DATAGRAMS_PER_S
    datagram_burst: float = DATAGRAM_BURST
    max_connections_per_source: int = MAX_CONNECTIONS_PER_SOURCE
    slack_bytes: int = UNVERIFIED_SLACK_BYTES
    stats: GuardStats = field(default_factory=GuardStats)
    _sources: OrderedDict[str, _Source] = field(default_factory=OrderedDict)
    _connections: dict[str, int] = field(default_factory=dict)

    @classmethod
    def with_trusted(
        cls,
        networks: Iterable[str],
        *,
        datagrams_per_s: float = DATAGRAMS_PER_S,
        max_connections_per_source: int = MAX_CONNECTIONS_PER_SOURCE,
    ) -> SourceGuard:
        """A guard trusting ``networks`` (CIDR strings; ValueError for a bad one)."""
        parsed = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        return cls(
            parsed,
            datagrams_per_s=datagrams_per_s,
            datagram_burst=max(1.0, 2 * datagrams_per_s),
            max_connections_per_source=max_connections_per_source,
        )

    def _source(self, ip: str, now: float) -> _Source:
        source = self._sources.get(ip)
        if source is None:
            source = _Source(self.datagram_burst, now, now)
            self._sources[ip] = source
            if len(self._sources) > MAX_SOURCES:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(ip)
        if now - source.window_start >= BUDGET_WINDOW_S:
            source.window_start, source.received, source.sent = now, 0, 0
        return source

    # -- verification ----------------------------------------------------------------------

    def is_trusted(self, ip: str) -> bool:
        """Whether ``ip`` is in a configured trusted network."""
        if not self.trusted:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.trusted)

    def is_verified(self, ip: str, now: float) -> bool:
        """Whether ``ip`` proved it receives at its address (or is trusted)."""
        if self.is_trusted(ip):
            return True
        source = self._sources.get(ip)
        return source is not None and source.verified_until > now

    def verify(self, ip: str, now: float) -> None:
        """``ip`` answered a request of ours with our branch: it receives at that address."""
        source = self._source(ip, now)
        if source.verified_until <= now:
            self.stats.verified += 1
        source.verified_until = now + VERIFIED_TTL_S

    # -- UDP -------------------------------------------------------------------------------

    def admit(self, ip: str, size: int, now: float) -> bool:
        """A datagram of ``size`` bytes from ``ip``: whether to process it at all."""
        source = self._source(ip, now)
        source.tokens = min(
            self.datagram_burst, source.tokens + (now - source.refilled) * self.datagrams_per_s
        )
        source.refilled = now
        if source.tokens < 1.0:
            self.stats.rate_limited += 1
            return False
        source.tokens -= 1.0
        source.received += size
        return True

    def may_send(self, ip: str, size: int, now: float) -> bool:
        """Whether ``size`` bytes may go to ``ip`` now; books them if so."""
        if self.is_verified(ip, now):
            return True
        source = self._source(ip, now)
        if source.sent + size > source.received + self.slack_bytes:
            self.stats.budget_dropped += 1
            self.stats.budget_dropped_bytes += size
            return False
        source.sent += size
        return True

    # -- TCP -------------------------------------------------------------------------------

    def open_connection(self, ip: str) -> bool:
        """A TCP connection from ``ip`` opens: whether it may (then ``close_connection``)."""
        count = self._connections.get(ip, 0)
        if count >= self.max_connections_per_source:
            self.stats.connections_refused += 1
            return False
        self._connections[ip] = count + 1
        return True

    def close_connection(self, ip: str) -> None:
        """A connection admitted by ``open_connection`` closed."""
        count = self._connections.get(ip, 0) - 1
        if count <= 0:
            self._connections.pop(ip, None)
        else:
            self._connections[ip] = count

    def connections(self, ip: str) -> int:
        """Open connections from ``ip``."""
        return self._connections.get(ip, 0)
