"""Live staff connections: who is connected, and a bounded outbox per connection.

Each WebSocket connection gets a bounded queue. A client that cannot keep up is
disconnected rather than silently skipped: on reconnect it resyncs every open alarm, so
nothing is lost, and the gap is visible (the staff app shows it is offline).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

_LOGGER = logging.getLogger(__name__)

# Messages waiting for one client. A phone on a weak link may lag a few seconds; a
# thousand queued alarm updates means it is gone, and resync is cheaper than more memory.
MAX_PENDING_PER_CONNECTION = 1000


class Connection:
    """One staff client's socket, seen from the gateway."""

    def __init__(self, staff_id: str) -> None:
        self.staff_id = staff_id
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MAX_PENDING_PER_CONNECTION)
        self.overflowed = asyncio.Event()

    def offer(self, message: dict[str, Any]) -> None:
        """Queue a message, or mark the connection for closing if it is too far behind."""
        try:
            self.outbox.put_nowait(message)
        except asyncio.QueueFull:
            if not self.overflowed.is_set():
                _LOGGER.warning("staff %s client is too slow; disconnecting it", self.staff_id)
            self.overflowed.set()


class StaffHub:
    """Fans alarm updates out to the connected clients of the staff they are for."""

    def __init__(self) -> None:
        self._by_staff: defaultdict[str, set[Connection]] = defaultdict(set)
        # Told whenever a client connects or disconnects (staff presence supervision).
        self.on_change: Callable[[], None] | None = None

    def attach(self, staff_id: str) -> Connection:
        """Register a new connection for ``staff_id``."""
        connection = Connection(staff_id)
        self._by_staff[staff_id].add(connection)
        if self.on_change is not None:
            self.on_change()
        return connection

    def detach(self, connection: Connection) -> None:
        """Forget a closed connection."""
        connections = self._by_staff.get(connection.staff_id)
        if connections is not None:
            connections.discard(connection)
            if not connections:
                del self._by_staff[connection.staff_id]
        if self.on_change is not None:
            self.on_change()

    def connected_staff(self) -> frozenset[str]:
        """Staff with at least one open connection."""
        return frozenset(self._by_staff)

    def connection_count(self) -> int:
        """Open connections."""
        return sum(len(c) for c in self._by_staff.values())

    def send(self, staff_ids: frozenset[str], message: dict[str, Any]) -> int:
        """Offer ``message`` to every connection of ``staff_ids``; returns how many."""
        sent = 0
        for staff_id in staff_ids:
            for connection in self._by_staff.get(staff_id, ()):
                connection.offer(message)
                sent += 1
        return sent
