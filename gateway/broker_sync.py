"""Broker credentials for the whole cluster: rewrite the broker files when any gateway
changes the shared registry.

In a cluster the device registry is in PostgreSQL (gateway.stores.registry) and every
change of credentials (a claim code redeemed, a device decommissioned) is NOTIFYed on
``REGISTRY_CHANNEL`` by the gateway that made it. A gateway with ``[broker_auth]`` (the one
that writes the Mosquitto password and ACL files and SIGHUPs the broker) listens, and on
each notification from another gateway rewrites its files from the shared registry and
reloads the broker: a device enrolled through any gateway can connect at once, with nobody
copying files or restarting anything. Chosen over Mosquitto's dynamic-security plugin
because the files are what single gateways already use (and the embedded broker reads):
one mechanism, one ACL generator, and the broker keeps working from its files while the
database is away.

After (re)connecting the listener, the files are rewritten once: whatever was changed while
nobody listened is picked up, so a lost notification only delays.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from types import TracebackType
from typing import Self

import psycopg

from gateway.stores import StoreError
from gateway.stores.registry import REGISTRY_CHANNEL

__all__ = ["BrokerSync"]

_LOGGER = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10
# Reconnect back-off of the listener (jittered, capped).
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 5.0
# The listener proves its connection after this long without a notification: a connection
# that died without a FIN would otherwise leave the files stale for ever.
LISTEN_CHECK_S = 10.0


class BrokerSync:
    """Listens for registry changes and rewrites the broker files. Not re-entrant.

    ``sync`` is ``DeviceRegistry.sync_broker`` (synchronous: it runs in a worker thread).
    Notifications arriving while a sync runs are coalesced into one more sync.
    """

    def __init__(self, dsn: str, *, gateway_id: str, sync: Callable[[], bool]) -> None:
        self.dsn = dsn
        self.gateway_id = gateway_id
        self._sync = sync
        self._changed = asyncio.Event()
        self._open = False
        self.syncs = 0  # files rewritten (for health and tests)
        self.listening = False

    async def __aenter__(self) -> Self:
        if self._open:
            raise RuntimeError("BrokerSync is already open; it is not re-entrant")
        self._open = True
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._open = False
        self.listening = False

    async def wait(self) -> None:
        """The listener and the writer (the supervisor's task while open)."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._listen(), name="registry listener")
            group.create_task(self._write(), name="broker files writer")

    async def _listen(self) -> None:
        attempt = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                    await conn.execute(f"LISTEN {REGISTRY_CHANNEL}")
                    attempt = 0
                    self.listening = True
                    self._changed.set()  # whatever changed while nobody listened
                    while True:
                        async for notify in conn.notifies(timeout=LISTEN_CHECK_S):
                            if notify.payload != self.gateway_id:  # ours: already written
                                self._changed.set()
                        async with asyncio.timeout(LISTEN_CHECK_S):
                            await conn.execute("SELECT 1")
            except (psycopg.Error, TimeoutError) as exc:
                self.listening = False
                delay = random.uniform(BACKOFF_BASE_S,
                                       min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))
                attempt += 1
                log = _LOGGER.error if attempt == 1 else _LOGGER.debug
                log("registry listener lost (%s); devices enrolled through other gateways "
                    "reach the broker once it is back; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    async def _write(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                if await asyncio.to_thread(self._sync):
                    self.syncs += 1
            except (StoreError, OSError) as exc:
                _LOGGER.error("rewriting the broker files failed (%s); retrying", exc)
                await asyncio.sleep(random.uniform(BACKOFF_BASE_S, BACKOFF_CAP_S))
                self._changed.set()
