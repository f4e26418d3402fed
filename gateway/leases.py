"""Leases: exactly one gateway owns each timer set and each outbound queue.

Several gateways share one PostgreSQL database. Work that must happen once (firing the
escalation deadlines, calling the alarm centre, sending Web Push) is guarded by a named
lease. A ``LeaseManager`` claims names, renews what it holds every ``ttl_s / 3`` and keeps
trying to take over the names it wants but another gateway holds. A gateway that dies or
loses the database stops renewing; its leases expire after ``ttl_s`` and another manager
takes them on its next round, so the takeover bound is ``ttl_s + ttl_s / 3`` after the
holder's last successful renewal (about 6.7 s with the default 5 s TTL).

Safety: expiry is measured on the database server's clock only, and this process believes
it holds a lease only until ``LOCAL_VALIDITY`` of the TTL after it *sent* the claim, by its
monotonic clock. The database extends the lease from the moment it executes the claim,
which is later, so a manager's belief always ends before the row can be claimed by
another: no two managers hold a name at once, even if the holder is partitioned away. [1]

Every change of owner increments the lease's ``token`` (a fencing token): outbound work can
carry it so that a receiver refuses a stale holder's late requests.

[1] This assumes the database server's clock is not stepped forward by more than the
    margin (NTP slewing is fine), and that the two clocks tick at the same rate to within
    the margin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Self, TypeAlias

import psycopg

from gateway.journal_pg import migrate

__all__ = ["DEFAULT_TTL_S", "LeaseError", "LeaseManager"]

_LOGGER = logging.getLogger(__name__)

DEFAULT_TTL_S = 5.0
# Share of the TTL this process trusts its own lease for, counted from when it sent the
# claim. The 10 % left over absorbs clock-rate differences and a slewing server clock.
LOCAL_VALIDITY = 0.9
# Renewals per TTL: three means two renewals can fail (a slow query, a reconnect) before
# the lease lapses.
RENEWALS_PER_TTL = 3
CONNECT_TIMEOUT_S = 10

ChangeCallback: TypeAlias = Callable[[frozenset[str]], None]

_ENSURE = "INSERT INTO trygg_leases (name) SELECT unnest(%s::text[]) ON CONFLICT (name) DO NOTHING"
# One statement: lock the rows this owner may take (its own, or expired) and skip rows
# another claimer is taking right now, then extend them. A changed or lapsed owner gets a
# new fencing token.
_CLAIM = """
WITH free AS (
    SELECT name FROM trygg_leases
    WHERE name = ANY(%(names)s::text[])
      AND (owner = %(owner)s OR expires_at <= clock_timestamp())
    ORDER BY name
    FOR UPDATE SKIP LOCKED
)
UPDATE trygg_leases AS l SET
    token = CASE WHEN l.owner IS DISTINCT FROM %(owner)s OR l.expires_at <= clock_timestamp()
                 THEN l.token + 1 ELSE l.token END,
    acquired_at = CASE WHEN l.owner IS DISTINCT FROM %(owner)s
                         OR l.expires_at <= clock_timestamp()
                       THEN clock_timestamp() ELSE l.acquired_at END,
    owner = %(owner)s,
    expires_at = clock_timestamp() + make_interval(secs => %(ttl)s)
FROM free
WHERE l.name = free.name
RETURNING l.name, l.token
"""
_RELEASE = (
    "UPDATE trygg_leases SET expires_at = clock_timestamp()"
    " WHERE owner = %s AND name = ANY(%s::text[]) AND expires_at > clock_timestamp()"
)


class LeaseError(Exception):
    """The lease table could not be reached; held leases stay valid until they lapse."""


class LeaseManager:
    """Named leases of one owner (a gateway id). Reusable, not re-entrant.

    ``async with LeaseManager(dsn, owner="gw1") as leases:`` then ``await leases.claim(...)``.
    ``on_change`` is called on the event loop with the new ``held`` set whenever it changes.
    """

    def __init__(
        self,
        dsn: str,
        *,
        owner: str,
        ttl_s: float = DEFAULT_TTL_S,
        on_change: ChangeCallback | None = None,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self.dsn = dsn
        self.owner = owner
        self.ttl_s = ttl_s
        self.on_change = on_change
        self._interval = ttl_s / RENEWALS_PER_TTL
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        self._db = asyncio.Lock()  # one statement at a time on the one connection
        self._entered = asyncio.Lock()
        self._wanted: set[str] = set()
        self._known: set[str] = set()  # names whose row exists
        self._deadlines: dict[str, float] = {}  # name -> monotonic end of our belief
        self._tokens: dict[str, int] = {}
        self._reported: frozenset[str] = frozenset()
        self._renewer: asyncio.Task[None] | None = None
        self._failures = 0
        # Set by tests: simulate a gateway that cannot reach the database (or hangs), so
        # that its leases lapse without it exiting.
        self.fail_renewals: Callable[[], bool] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._entered.locked():
            raise RuntimeError("LeaseManager is not re-entrant")
        await self._entered.acquire()
        try:
            conn = await self._connect()
            try:
                await migrate(conn, "leases", applied_by=self.owner)
            except BaseException:
                await conn.close()
                raise
        except psycopg.Error as exc:
            self._entered.release()
            raise LeaseError(f"cannot open the lease table: {exc}") from exc
        except BaseException:
            self._entered.release()
            raise
        self._conn = conn
        self._renewer = asyncio.create_task(self._renew_loop(), name=f"lease renew {self.owner}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._renewer is not None:
                self._renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._renewer
                self._renewer = None
            held = list(self._deadlines)
            # Stop believing first, then free the rows: never the other way round.
            self._deadlines.clear()
            self._tokens.clear()
            self._wanted.clear()
            self._report()
            if held and self._conn is not None and not self._conn.closed:
                try:
                    async with self._db:
                        await self._conn.execute(_RELEASE, (self.owner, held))
                except psycopg.Error as exc:
                    _LOGGER.warning("could not release leases %s (they lapse): %s", held, exc)
        finally:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None
            self._known.clear()
            self._entered.release()

    # -- public API ------------------------------------------------------------------------

    @property
    def held(self) -> frozenset[str]:
        """The names this manager holds right now (its belief ends before the row expires)."""
        now = time.monotonic()
        return frozenset(name for name, end in self._deadlines.items() if end > now)

    def token(self, name: str) -> int | None:
        """The fencing token of a held lease (grows with every change of owner)."""
        return self._tokens.get(name) if name in self.held else None

    async def claim(self, names: Iterable[str]) -> set[str]:
        """Want ``names`` from now on and try to take them at once; returns those held.

        Names held elsewhere stay wanted: the renew task takes them over when they lapse.
        Raises ``LeaseError`` if the database cannot be reached (the names stay wanted).
        """
        if self._renewer is None:
            raise RuntimeError("LeaseManager is not entered")
        wanted = set(names)
        self._wanted |= wanted
        try:
            await self._round()
        except psycopg.Error as exc:
            raise LeaseError(f"cannot claim leases: {exc}") from exc
        return wanted & self.held

    async def release(self, names: Iterable[str]) -> None:
        """Stop wanting ``names`` and free those held, so another gateway may take them."""
        names = set(names)
        self._wanted -= names
        held = [name for name in names if name in self._deadlines]
        for name in held:
            del self._deadlines[name]
            self._tokens.pop(name, None)
        self._report()
        if not held:
            return
        try:
            async with self._db:
                conn = await self._connection()
                await conn.execute(_RELEASE, (self.owner, held))
        except psycopg.Error as exc:
            await self._drop_connection()
            _LOGGER.warning("could not release leases %s (they lapse): %s", held, exc)

    # -- internals -------------------------------------------------------------------------

    async def _connect(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        return await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
        )

    async def _connection(self) -> psycopg.AsyncConnection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = await self._connect()
        return self._conn

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _round(self) -> None:
        """Renew what is held and try what is wanted, in one statement."""
        async with self._db:
            names = sorted(self._wanted)
            if not names:
                return
            sent = time.monotonic()
            try:
                if self.fail_renewals is not None and self.fail_renewals():
                    raise psycopg.OperationalError("lease database unreachable (simulated)")
                conn = await self._connection()
                missing = [name for name in names if name not in self._known]
                if missing:
                    await conn.execute(_ENSURE, (missing,))
                    self._known.update(missing)
                cur = await conn.execute(
                    _CLAIM, {"names": names, "owner": self.owner, "ttl": self.ttl_s}
                )
                rows = await cur.fetchall()
            except psycopg.Error:
                if self._conn is not None and self._conn.broken:
                    await self._drop_connection()
                raise
            until = sent + self.ttl_s * LOCAL_VALIDITY
            granted = {str(name) for name, _ in rows}
            for name in [name for name in self._deadlines if name not in granted]:
                # Not renewed: the row is no longer ours. Stop believing at once.
                del self._deadlines[name]
                self._tokens.pop(name, None)
            for name, token in rows:
                if name in self._wanted:  # not released while we waited
                    self._deadlines[str(name)] = until
                    self._tokens[str(name)] = int(token)
        self._report()

    def _expire(self) -> None:
        now = time.monotonic()
        for name in [name for name, end in self._deadlines.items() if end <= now]:
            del self._deadlines[name]
            self._tokens.pop(name, None)

    def _report(self) -> None:
        """Call ``on_change`` if ``held`` differs from what it was last told."""
        self._expire()
        held = frozenset(self._deadlines)
        if held == self._reported:
            return
        self._reported = held
        if self.on_change is not None:
            try:
                self.on_change(held)
            except Exception:  # one bad listener must not stop renewals
                _LOGGER.exception("lease change callback failed")

    async def _renew_loop(self) -> None:
        next_round = time.monotonic() + self._interval
        while True:
            now = time.monotonic()
            # Wake for the next renewal, or earlier when a belief ends (to report it).
            wake = min([next_round, *self._deadlines.values()])
            await asyncio.sleep(max(0.0, wake - now))
            self._report()
            if time.monotonic() < next_round:
                continue
            try:
                await self._round()
            except psycopg.Error as exc:
                self._failures += 1
                # Once per outage, then every tenth attempt: an outage must not flood the log.
                log = _LOGGER.warning if self._failures % 10 == 1 else _LOGGER.debug
                log("lease renewal by %s failed (%d in a row): %s", self.owner, self._failures, exc)
                # Retry sooner than a full interval, jittered, but never slower than it.
                next_round = time.monotonic() + random.uniform(0.25, 1.0) * self._interval
                continue
            if self._failures:
                _LOGGER.info("lease renewal by %s works again", self.owner)
            self._failures = 0
            next_round = time.monotonic() + self._interval
