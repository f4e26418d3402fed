"""Team rosters behind one port: this gateway's SQLite file, or the cluster's database.

``RosterBook`` is what routing reads (``rosters()``, every team's roster) and what
``trygg org import`` writes (``put_many``). Adapters, one contract
(tests/test_roster_store.py):

- ``gateway.orgfile.RosterStore``: ``DATA_DIR/rosters.sqlite3``, read fresh on every call
  (one gateway; ``refresh`` has nothing to do).
- ``PostgresRosterStore``: table ``trygg_rosters`` in the cluster's database. Routing reads
  rosters on the event loop, so this adapter answers from memory and ``refresh`` (blocking,
  run in a thread) reloads it when the rosters changed. Every write NOTIFYs
  ``trygg_rosters``; ``RosterFollower`` refreshes on that (and every ``ROSTER_POLL_S`` in
  case a notification was missed) and hands routing the new rosters, so an import reaches
  every running gateway without a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from alarms.roster import Roster
from gateway.orgfile import RosterStore, roster_of

if TYPE_CHECKING:
    import psycopg

    from gateway.config import Settings

# psycopg is imported only where PostgreSQL is used: a lone gateway loads this module on
# its alarm path and never needs it.

__all__ = [
    "ROSTER_CHANNEL",
    "PostgresRosterStore",
    "RosterBook",
    "RosterFollower",
    "open_roster_store",
    "write_rosters",
]

_LOGGER = logging.getLogger(__name__)

ROSTER_CHANNEL = "trygg_rosters"
# Even without a notification, rosters are re-read this often: a missed NOTIFY (listener
# reconnecting) delays a roster change by at most this long, never for good.
ROSTER_POLL_S = 30.0
BACKOFF_CAP_S = 5.0

RosterBody = Mapping[str, list[str]]

ROSTER_MIGRATIONS: list[list[str]] = [
    [
        "CREATE SEQUENCE trygg_rosters_seq AS bigint",
        "CREATE TABLE trygg_rosters ("
        " team_id text PRIMARY KEY,"
        " body text NOT NULL,"
        " seq bigint NOT NULL DEFAULT nextval('trygg_rosters_seq'),"
        " changed_at timestamptz NOT NULL DEFAULT now())",
    ],
]


class RosterBook(Protocol):
    """The port."""

    def put(self, team_id: str, body: dict[str, list[str]]) -> None:
        """Replace one team's roster."""

    def put_many(self, rosters: Mapping[str, RosterBody]) -> None:
        """Replace several teams' rosters at once (one transaction)."""

    def rosters(self) -> dict[str, Roster]:
        """Every team's roster (for the PostgreSQL adapter: as of the last ``refresh``)."""

    def refresh(self) -> bool:
        """Re-read the storage if it changed; whether it did. Blocking."""

    def close(self) -> None:
        """Release the storage. Idempotent."""


class PostgresRosterStore:
    """The cluster's rosters. Thread-safe; ``rosters()`` never touches the database."""

    def __init__(self, dsn: str, *, gateway_id: str = "") -> None:
        from gateway.pg_schema import connect, migrate_sync

        self.dsn = dsn
        self._connect = connect
        self._lock = threading.Lock()
        self._conn = connect(dsn)
        migrate_sync(self._conn, "rosters", ROSTER_MIGRATIONS, applied_by=gateway_id)
        self._version = -1
        self._rosters: dict[str, Roster] = {}
        self.refresh()

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn.closed:
            self._conn = self._connect(self.dsn)
        return self._conn

    def put(self, team_id: str, body: dict[str, list[str]]) -> None:
        self.put_many({team_id: body})

    def put_many(self, rosters: Mapping[str, RosterBody]) -> None:
        with self._lock:
            conn = self._connection()
            with conn.transaction():
                write_rosters(conn, rosters)
        self.refresh()

    def rosters(self) -> dict[str, Roster]:
        return dict(self._rosters)

    def refresh(self) -> bool:
        with self._lock:
            conn = self._connection()
            with conn.transaction():
                row = conn.execute("SELECT coalesce(max(seq), 0) FROM trygg_rosters").fetchone()
                version = int(row[0]) if row is not None else 0
                if version == self._version:
                    return False
                rows = conn.execute("SELECT team_id, body FROM trygg_rosters").fetchall()
            self._rosters = {team: roster_of(team, json.loads(body)) for team, body in rows}
            self._version = version
            return True

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def write_rosters(conn: psycopg.Connection[Any], rosters: Mapping[str, RosterBody]) -> None:
    """Replace teams' rosters inside the caller's transaction, and tell the gateways."""
    from gateway.pg_schema import migrate_sync

    migrate_sync(conn, "rosters", ROSTER_MIGRATIONS)
    for team_id, body in rosters.items():
        conn.execute(
            "INSERT INTO trygg_rosters (team_id, body) VALUES (%s, %s)"
            " ON CONFLICT (team_id) DO UPDATE SET body = excluded.body,"
            " seq = nextval('trygg_rosters_seq'), changed_at = now()",
            (team_id, json.dumps(dict(body))))
    conn.execute("SELECT pg_notify(%s, '')", (ROSTER_CHANNEL,))


def open_roster_store(settings: Settings) -> RosterBook:
    """The store these settings use. Blocking (it connects, in a cluster)."""
    if settings.cluster is not None and settings.journal_dsn is not None:
        return PostgresRosterStore(settings.journal_dsn, gateway_id=settings.gateway_id)
    return RosterStore(settings.data_dir / "rosters.sqlite3")


class RosterFollower:
    """Keeps a ``PostgresRosterStore`` current: LISTEN, refresh, tell routing.

    ``run`` is a supervised task (restarted if it fails); it never returns.
    """

    def __init__(self, store: RosterBook, dsn: str, on_change: Callable[[], None]) -> None:
        self.store = store
        self.dsn = dsn
        self.on_change = on_change
        self.refreshes = 0

    async def _refresh(self) -> None:
        if await asyncio.to_thread(self.store.refresh):
            self.refreshes += 1
            _LOGGER.info("rosters changed in the cluster's database; routing updated")
            self.on_change()

    async def run(self) -> None:
        """Follow until cancelled."""
        import psycopg

        attempt = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self.dsn, autocommit=True, connect_timeout=10) as conn:
                    await conn.execute(f"LISTEN {ROSTER_CHANNEL}")
                    attempt = 0
                    # Whatever changed while nobody listened.
                    await self._refresh()
                    while True:
                        async for _ in conn.notifies(timeout=ROSTER_POLL_S, stop_after=1):
                            pass
                        await self._refresh()
            except psycopg.Error as exc:
                attempt += 1
                delay = random.uniform(0.5, min(BACKOFF_CAP_S, 0.5 * 2**attempt))
                _LOGGER.warning("roster follower lost its connection (%s); retrying in %.1f s",
                                exc, delay)
                await asyncio.sleep(delay)
