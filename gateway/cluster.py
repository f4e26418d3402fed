"""Several gateways as one: following the shared journal, shared presence, leases.

A gateway with ``[cluster]`` settings shares its PostgreSQL journal with other gateways
(docs/deployment.md). ``Cluster`` is the part of it that talks to the others, all through
PostgreSQL — the gateways never talk to each other directly:

- **Following.** Every journal commit NOTIFYs ``trygg_journal``. A listener connection
  wakes the follower, which reads the rows other gateways committed (``PostgresJournal.
  follow``) and hands their records to ``on_records``. After a lost listener connection
  the follower reads once on reconnect, so a missed notification only delays.
- **Presence.** Which staff have a client connected *here* is upserted into
  ``trygg_presence`` with an expiry and NOTIFYed on ``trygg_presence``; the union over the
  other live gateways goes to ``on_presence``. A gateway that dies stops refreshing its
  row, which then expires (``PRESENCE_TTL_FACTOR`` × the lease TTL). The gateways with a
  live row are the cluster's members (``on_members``: gateway.partition).
- **Organisation.** Every change made through this gateway's ``OrgStore`` (an admin, a
  technician binding a device) is written to ``trygg_org`` (latest state per entity) and
  NOTIFYed on ``trygg_org``; the others apply it to their own store and routing, so a
  device provisioned through one gateway is known to all before its first alarm arrives
  at another. How far a gateway has applied is kept in its org store.
- **Leases.** ``LeaseManager`` claims every name in ``gateway.duties.DUTIES``; ``holds(name)`` says
  whether this gateway acts on that kind of work now, ``on_leases`` reports changes.

Owned lifecycle: ``async with Cluster(...)``; every task lives in one task group and is
cancelled and awaited on exit, the presence row is deleted and the leases released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import psycopg

from alarms.records import Record
from gateway.duties import DUTIES
from gateway.journal import JournalError
from gateway.journal_pg import JOURNAL_CHANNEL, PostgresJournal, lock_key, migrate
from gateway.leases import DEFAULT_TTL_S, LeaseManager
from gateway.org import OrgChange

__all__ = ["PRESENCE_CHANNEL", "Cluster"]

_LOGGER = logging.getLogger(__name__)

PRESENCE_CHANNEL = "trygg_presence"
ORG_CHANNEL = "trygg_org"
# The org store's bookkeeping key: the last trygg_org seq applied.
ORG_HEAD_KEY = "cluster_org_seq"
# Serialises organisation changes across gateways, so that seq order is commit order.
ORG_LOCK = lock_key("org")
# A presence row lives this many lease TTLs without a refresh; refreshed every TTL.
PRESENCE_TTL_FACTOR = 3
# Reconnect back-off of the listener connection.
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 5.0
CONNECT_TIMEOUT_S = 10
# The listener checks its connection after this long without a notification.
LISTEN_CHECK_S = 10.0

MIGRATIONS_COMPONENT = "cluster"

_UPSERT_PRESENCE = (
    "INSERT INTO trygg_presence (gateway_id, staff, expires_at)"
    " VALUES (%(gw)s, %(staff)s, clock_timestamp() + make_interval(secs => %(ttl)s))"
    " ON CONFLICT (gateway_id) DO UPDATE SET staff = excluded.staff,"
    " expires_at = excluded.expires_at"
)
_WRITE_ORG = (
    "INSERT INTO trygg_org (kind, id, seq, gateway_id, body)"
    " VALUES (%s, %s, nextval('trygg_org_seq'), %s, %s)"
    " ON CONFLICT (kind, id) DO UPDATE SET seq = excluded.seq,"
    " gateway_id = excluded.gateway_id, body = excluded.body, changed_at = now()"
)
_READ_ORG = (
    "SELECT seq, gateway_id, kind, id, body FROM trygg_org WHERE seq > %s ORDER BY seq"
)
_READ_PRESENCE = (
    "SELECT staff, extract(epoch FROM expires_at - clock_timestamp()), gateway_id"
    " FROM trygg_presence WHERE gateway_id <> %s AND expires_at > clock_timestamp()"
)


class Cluster:
    """This gateway's link to the other gateways sharing its database. Not re-entrant."""

    def __init__(
        self,
        dsn: str,
        *,
        gateway_id: str,
        journal: PostgresJournal,
        on_records: Callable[[list[Record]], None],
        on_presence: Callable[[frozenset[str]], None],
        on_leases: Callable[[frozenset[str]], None],
        on_org: Callable[[list[OrgChange]], None] | None = None,
        on_members: Callable[[frozenset[str]], None] | None = None,
        org_head: int = 0,
        lease_ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        self.dsn = dsn
        self.gateway_id = gateway_id
        self.journal = journal
        self._on_records = on_records
        self._on_presence = on_presence
        self._on_members = on_members
        # The live gateways (an unexpired presence row), this one included; None until
        # first read (gateway.partition: telemetry ownership).
        self.members: frozenset[str] | None = None
        self._on_org = on_org
        self.org_head = org_head
        self._org_out: asyncio.Queue[OrgChange] = asyncio.Queue()
        self._org_changed = asyncio.Event()
        self.lease_ttl_s = lease_ttl_s
        self.leases = LeaseManager(dsn, owner=gateway_id, ttl_s=lease_ttl_s, on_change=on_leases)
        self._local: frozenset[str] = frozenset()
        self._published: frozenset[str] | None = None
        self.remote: frozenset[str] = frozenset()
        self._journal_changed = asyncio.Event()
        self._presence_changed = asyncio.Event()
        self._local_changed = asyncio.Event()
        self._follow_lock = asyncio.Lock()
        self._runner: asyncio.Task[None] | None = None
        self.listening = False
        self.followed = 0
        self.follow_failures = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            async with await self._connect() as conn:
                await migrate(conn, MIGRATIONS_COMPONENT, applied_by=self.gateway_id)
        except psycopg.Error as exc:
            raise JournalError(f"cannot open the cluster tables: {exc}") from exc
        await self.leases.__aenter__()
        try:
            self._runner = asyncio.create_task(self._run(), name="cluster")
            await self.leases.claim(DUTIES)
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        try:
            # Gone at once rather than after the expiry: routing stops counting our staff.
            async with await self._connect() as conn:
                await conn.execute(
                    "DELETE FROM trygg_presence WHERE gateway_id = %s", (self.gateway_id,)
                )
        except psycopg.Error as exc:
            _LOGGER.warning("could not remove this gateway's presence row (it expires): %s", exc)
        await self.leases.__aexit__(None, None, None)

    async def _connect(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        """A connection of its own: presence and organisation exchanges are rare and
        brief, and the listener holds its connection for as long as it lives."""
        return await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
        )

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._listen(), name="cluster listener")
            group.create_task(self._follow_loop(), name="journal follower")
            group.create_task(self._presence_loop(), name="presence publisher")
            group.create_task(self._org_publisher(), name="org publisher")
            group.create_task(self._org_follower(), name="org follower")

    # -- public API ------------------------------------------------------------------------

    async def wait(self) -> None:
        """Return (or raise) when the cluster's tasks end: they never should while entered.

        The gateway runs this in its own task group, so that a failure here (a bug applying
        another gateway's records) stops the gateway loudly instead of leaving it running
        without following the others.
        """
        assert self._runner is not None
        await asyncio.shield(self._runner)

    def holds(self, name: str) -> bool:
        """Whether this gateway does the work guarded by lease ``name`` right now."""
        return name in self.leases.held

    def set_local_presence(self, staff: frozenset[str]) -> None:
        """The staff with a client connected to this gateway (published soon after)."""
        if staff != self._local:
            self._local = staff
            self._local_changed.set()

    def publish_org(self, change: OrgChange) -> None:
        """An organisation change made here: written for the others soon, in order."""
        self._org_out.put_nowait(change)

    async def catch_up(self) -> None:
        """Apply everything other gateways committed up to now (after a conflict)."""
        await self._follow_once()

    # -- following the journal -------------------------------------------------------------

    async def _listen(self) -> None:
        attempt = 0
        while True:
            try:
                async with await self._connect() as conn:
                    await conn.execute(f"LISTEN {JOURNAL_CHANNEL}")
                    await conn.execute(f"LISTEN {PRESENCE_CHANNEL}")
                    await conn.execute(f"LISTEN {ORG_CHANNEL}")
                    if attempt:
                        _LOGGER.warning("cluster listener connected again")
                    attempt = 0
                    self.listening = True
                    # Whatever was committed while we were not listening.
                    self._journal_changed.set()
                    self._presence_changed.set()
                    self._org_changed.set()
                    while True:
                        async for notify in conn.notifies(timeout=LISTEN_CHECK_S):
                            if notify.payload == self.gateway_id:
                                continue  # our own commit: already applied here
                            if notify.channel == JOURNAL_CHANNEL:
                                self._journal_changed.set()
                            elif notify.channel == ORG_CHANNEL:
                                self._org_changed.set()
                            else:
                                self._presence_changed.set()
                        # A quiet spell: prove the connection still lives. A connection
                        # that died without a FIN would otherwise wait for ever, and this
                        # gateway would silently stop following the others.
                        async with asyncio.timeout(LISTEN_CHECK_S):
                            await conn.execute("SELECT 1")
            except (psycopg.Error, TimeoutError) as exc:
                self.listening = False
                window = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)
                delay = random.uniform(BACKOFF_BASE_S, window)
                attempt += 1
                log = _LOGGER.error if attempt == 1 else _LOGGER.debug
                log("cluster listener lost (%s); other gateways' changes are not followed "
                    "until it is back; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    async def _follow_loop(self) -> None:
        while True:
            await self._journal_changed.wait()
            self._journal_changed.clear()
            try:
                await self._follow_once()
            except JournalError as exc:
                self.follow_failures += 1
                _LOGGER.error("following the journal failed: %s; retrying", exc)
                await asyncio.sleep(random.uniform(BACKOFF_BASE_S, BACKOFF_CAP_S))
                self._journal_changed.set()

    async def _follow_once(self) -> None:
        async with self._follow_lock:
            records = await self.journal.follow()
            if records:
                self.followed += len(records)
                self._on_records(records)

    # -- the organisation ------------------------------------------------------------------

    async def _org_publisher(self) -> None:
        """Write local organisation changes in order; retried until written, never dropped."""
        while True:
            change = await self._org_out.get()
            attempt = 0
            while True:
                try:
                    async with await self._connect() as conn, conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (ORG_LOCK,))
                        await conn.execute(
                            _WRITE_ORG, (change.kind, change.id, self.gateway_id, change.body())
                        )
                        await conn.execute(
                            "SELECT pg_notify(%s, %s)", (ORG_CHANNEL, self.gateway_id)
                        )
                    break
                except psycopg.Error as exc:
                    attempt += 1
                    _LOGGER.error("could not share the change of %s %s with the other "
                                  "gateways (attempt %d): %s", change.kind, change.id,
                                  attempt, exc)
                    await asyncio.sleep(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))

    async def _org_follower(self) -> None:
        while True:
            await self._org_changed.wait()
            self._org_changed.clear()
            try:
                async with await self._connect() as conn:
                    cur = await conn.execute(_READ_ORG, (self.org_head,))
                    rows: list[tuple[Any, ...]] = await cur.fetchall()
            except psycopg.Error as exc:
                _LOGGER.error("reading the other gateways' organisation changes failed: %s",
                              exc)
                await asyncio.sleep(random.uniform(BACKOFF_BASE_S, BACKOFF_CAP_S))
                self._org_changed.set()
                continue
            if not rows:
                continue
            changes = []
            for _, gateway_id, kind, entity_id, body in rows:
                if gateway_id == self.gateway_id:
                    continue
                try:
                    changes.append(OrgChange.decode(kind, entity_id, body))
                except (ValueError, TypeError) as exc:
                    _LOGGER.error("organisation change %s %s cannot be read, skipped: %s",
                                  kind, entity_id, exc)
            self.org_head = int(rows[-1][0])
            if changes and self._on_org is not None:
                self._on_org(changes)

    # -- presence --------------------------------------------------------------------------

    async def _presence_loop(self) -> None:
        """Publish our staff on change and every TTL; read the others' on their change.

        Rows of dead gateways expire without a notification, so the reader also wakes at
        the earliest expiry it knows of.
        """
        next_refresh = 0.0
        next_read = 0.0
        while True:
            now = time.monotonic()
            try:
                if self._local_changed.is_set() or now >= next_refresh:
                    self._local_changed.clear()
                    await self._publish()
                    next_refresh = time.monotonic() + self.lease_ttl_s
                if self._presence_changed.is_set() or now >= next_read:
                    self._presence_changed.clear()
                    expiry = await self._read()
                    next_read = time.monotonic() + min(expiry, self.lease_ttl_s)
            except psycopg.Error as exc:
                _LOGGER.warning("staff presence exchange failed: %s", exc)
                next_refresh = next_read = time.monotonic() + BACKOFF_CAP_S
            timeout = max(0.0, min(next_refresh, next_read) - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await _first(self._local_changed, self._presence_changed)

    async def _publish(self) -> None:
        staff = sorted(self._local)
        async with await self._connect() as conn, conn.transaction():
            await conn.execute(_UPSERT_PRESENCE, {
                "gw": self.gateway_id, "staff": staff,
                "ttl": self.lease_ttl_s * PRESENCE_TTL_FACTOR,
            })
            if frozenset(staff) != self._published:
                await conn.execute(
                    "SELECT pg_notify(%s, %s)", (PRESENCE_CHANNEL, self.gateway_id)
                )
        self._published = frozenset(staff)

    async def _read(self) -> float:
        """Read the other gateways' presence; returns seconds until the first row expires."""
        async with await self._connect() as conn:
            cur = await conn.execute(_READ_PRESENCE, (self.gateway_id,))
            rows: list[tuple[Any, ...]] = await cur.fetchall()
        remote = frozenset(s for staff, _, _ in rows for s in staff)
        first_expiry = min((float(left) for _, left, _ in rows), default=float("inf"))
        if remote != self.remote:
            self.remote = remote
            self._on_presence(remote)
        members = frozenset(str(gw) for _, _, gw in rows) | {self.gateway_id}
        if members != self.members:
            self.members = members
            if self._on_members is not None:
                self._on_members(members)
        return first_expiry


async def _first(*events: asyncio.Event) -> None:
    """Return once any of ``events`` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
