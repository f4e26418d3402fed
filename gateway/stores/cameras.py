"""Night-camera state behind one port: consents, schedules, looks and look windows.

``CameraStore`` is what ``gateway.cameras.CameraService`` keeps: every consent ever
registered (withdrawals update the latest), each recipient's schedule, every look with its
state (so a look started through one gateway is seen, continued and finished through
another, and survives a restart), and which look windows were looked in, reminded and
escalated. Two adapters, one contract (tests/test_camera_store.py):

- ``SqliteCameraStore``: one gateway, ``DATA_DIR/nattillsyn.sqlite3``. On first open it
  takes over consents and schedules from the older ``nattillsyn.json``.
- ``PostgresCameraStore``: the cluster's database (``journal_dsn``), shared by all gateways.

The adapters block (sqlite3 / psycopg): the service calls them with ``asyncio.to_thread``.

Two rules are kept by the database, not by the caller, so they hold across gateways:

- **One look per recipient at a time.** A partial unique index on the looks not ended;
  ``begin_look`` returns False when another gateway's look is in progress.
- **Each window is reminded and escalated once.** ``claim_window`` inserts a mark and says
  whether this caller was first; only that caller acts.

The look token is stored as its SHA-256: whoever can read the database cannot open a
stream with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self

from alarms.nattillsyn import Consent, EndedBy, Look, LookState, Outcome, Schedule

if TYPE_CHECKING:
    from gateway.config import Settings

__all__ = [
    "LEGACY_FILE",
    "STORE_FILE",
    "CameraStore",
    "PostgresCameraStore",
    "SqliteCameraStore",
    "StoredLook",
    "WindowMark",
    "open_camera_store",
    "token_hash",
]

STORE_FILE = "nattillsyn.sqlite3"
LEGACY_FILE = "nattillsyn.json"


class WindowMark:
    """What has happened to a look window (``claim_window``'s ``kind``)."""

    DONE = "done"
    REMINDED = "reminded"
    ESCALATED = "escalated"


def token_hash(token: str) -> str:
    """What is stored of a look token."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredLook:
    """A look as kept: the look, its token's hash, and where the camera streams."""

    look: Look
    token_hash: str
    stream_url: str | None = None

    @property
    def in_progress(self) -> bool:
        """Not ended yet."""
        return self.look.state is not LookState.ENDED


def look_to_json(look: Look) -> str:
    """The stored form of a look (metadata only: there is never any image)."""
    return json.dumps({
        "id": look.id, "recipient_id": look.recipient_id, "device_id": look.device_id,
        "viewer_id": look.viewer_id, "requested_at": look.requested_at, "max_s": look.max_s,
        "window_key": look.window_key, "ad_hoc": look.ad_hoc, "reason": look.reason,
        "state": look.state.value, "woken_at": look.woken_at,
        "streaming_at": look.streaming_at, "ended_at": look.ended_at,
        "ended_by": None if look.ended_by is None else look.ended_by.value,
        "outcome": None if look.outcome is None else look.outcome.value,
        "outcome_at": look.outcome_at,
    })


def look_from_json(text: str) -> Look:
    """Parse what ``look_to_json`` wrote."""
    body = json.loads(text)
    return Look(
        id=body["id"], recipient_id=body["recipient_id"], device_id=body["device_id"],
        viewer_id=body["viewer_id"], requested_at=body["requested_at"], max_s=body["max_s"],
        window_key=body["window_key"], ad_hoc=body["ad_hoc"], reason=body["reason"],
        state=LookState(body["state"]), woken_at=body["woken_at"],
        streaming_at=body["streaming_at"], ended_at=body["ended_at"],
        ended_by=None if body["ended_by"] is None else EndedBy(body["ended_by"]),
        outcome=None if body["outcome"] is None else Outcome(body["outcome"]),
        outcome_at=body["outcome_at"],
    )


class CameraStore(Protocol):
    """The port. Blocking and thread-safe; every method is one transaction."""

    shared: bool  # True when other gateways use the same store

    def close(self) -> None:
        """Release the storage. Idempotent."""

    def since(self, now: float) -> float:
        """When this store began keeping looks (``now`` on its first call): windows that
        closed before it are not judged missed."""

    # consents
    def consents(self) -> list[Consent]:
        """Every consent, oldest first."""

    def add_consent(self, consent: Consent) -> None:
        """Register a consent; it replaces the recipient's current one."""

    def withdraw_consent(self, recipient_id: str, *, by: str, now: float) -> Consent | None:
        """Withdraw the current consent; the withdrawn record, or None if none in force."""

    # schedules
    def schedules(self) -> dict[str, Schedule]:
        """Every schedule, by recipient."""

    def put_schedule(self, schedule: Schedule) -> None:
        """Set a recipient's schedule."""

    def remove_schedule(self, recipient_id: str) -> bool:
        """Remove a schedule; whether there was one."""

    # looks
    def begin_look(self, stored: StoredLook) -> bool:
        """Store a new look; False if the recipient has another look in progress."""

    def save_look(self, stored: StoredLook, *, unless_ended: bool = False) -> bool:
        """Store a look's new state. With ``unless_ended``, only if the stored look has not
        ended (so two gateways never both end it); returns whether it was written."""

    def look(self, look_id: str) -> StoredLook | None:
        """One look."""

    def looks(self, *, in_progress: bool = False) -> list[StoredLook]:
        """Looks by request time (only those not ended, with ``in_progress``)."""

    # windows
    def claim_window(self, key: str, kind: str, now: float) -> bool:
        """Mark a window; True if this call made the mark (the caller acts on it)."""

    def windows(self, kind: str) -> frozenset[str]:
        """Keys of windows with that mark."""

    def prune_windows(self, before: float) -> None:
        """Forget window marks made before ``before``."""


_CREATE = (
    "CREATE TABLE IF NOT EXISTS {p}cam_meta (key text PRIMARY KEY, value text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {p}cam_consents ("
    " id {serial} PRIMARY KEY, recipient_id text NOT NULL, body text NOT NULL)",
    "CREATE INDEX IF NOT EXISTS {p}cam_consents_recipient ON {p}cam_consents (recipient_id)",
    "CREATE TABLE IF NOT EXISTS {p}cam_schedules (recipient_id text PRIMARY KEY,"
    " body text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {p}cam_looks ("
    " id text PRIMARY KEY, recipient_id text NOT NULL, state text NOT NULL,"
    " requested_at double precision NOT NULL, token_hash text NOT NULL, stream_url text,"
    " body text NOT NULL)",
    # One look in progress per recipient, whichever gateway started it.
    "CREATE UNIQUE INDEX IF NOT EXISTS {p}cam_looks_one_active ON {p}cam_looks"
    " (recipient_id) WHERE state <> 'ended'",
    "CREATE TABLE IF NOT EXISTS {p}cam_windows (key text NOT NULL, kind text NOT NULL,"
    " at double precision NOT NULL, PRIMARY KEY (key, kind))",
)


class _SqlCameraStore(ABC):
    """The queries, shared by both adapters (``?`` placeholders, ``{p}`` table prefix)."""

    shared = False
    _prefix = ""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def close(self) -> None:
        """Release the storage."""

    @abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[_Tx]:
        """One transaction (a lock held for its duration)."""

    def _q(self, query: str) -> str:
        return query.replace("{p}", self._prefix)

    def since(self, now: float) -> float:
        with self._transaction() as tx:
            found = tx.one(self._q("SELECT value FROM {p}cam_meta WHERE key = 'since'"))
            if found is not None:
                return float(found[0])
            tx.run(self._q("INSERT INTO {p}cam_meta (key, value) VALUES ('since', ?)"),
                   (repr(now),))
            return now

    def consents(self) -> list[Consent]:
        with self._transaction() as tx:
            rows = tx.all(self._q("SELECT body FROM {p}cam_consents ORDER BY id"))
        return [Consent.from_json(json.loads(body)) for (body,) in rows]

    def add_consent(self, consent: Consent) -> None:
        with self._transaction() as tx:
            tx.run(self._q("INSERT INTO {p}cam_consents (recipient_id, body) VALUES (?, ?)"),
                   (consent.recipient_id, json.dumps(consent.to_json())))

    def withdraw_consent(self, recipient_id: str, *, by: str, now: float) -> Consent | None:
        with self._transaction() as tx:
            found = tx.one(self._q(
                "SELECT id, body FROM {p}cam_consents WHERE recipient_id = ?"
                " ORDER BY id DESC LIMIT 1" + self._for_update), (recipient_id,))
            if found is None:
                return None
            current = Consent.from_json(json.loads(found[1]))
            if current.withdrawn_at is not None:
                return None
            withdrawn = Consent(**{**_consent_fields(current), "withdrawn_at": now,
                                   "withdrawn_by": by})
            tx.run(self._q("UPDATE {p}cam_consents SET body = ? WHERE id = ?"),
                   (json.dumps(withdrawn.to_json()), found[0]))
        return withdrawn

    _for_update = ""

    def schedules(self) -> dict[str, Schedule]:
        with self._transaction() as tx:
            rows = tx.all(self._q("SELECT body FROM {p}cam_schedules ORDER BY recipient_id"))
        found = [Schedule.from_json(json.loads(body)) for (body,) in rows]
        return {s.recipient_id: s for s in found}

    def put_schedule(self, schedule: Schedule) -> None:
        with self._transaction() as tx:
            tx.run(self._q(
                "INSERT INTO {p}cam_schedules (recipient_id, body) VALUES (?, ?)"
                " ON CONFLICT (recipient_id) DO UPDATE SET body = excluded.body"),
                (schedule.recipient_id, json.dumps(schedule.to_json())))

    def remove_schedule(self, recipient_id: str) -> bool:
        with self._transaction() as tx:
            return tx.run(self._q("DELETE FROM {p}cam_schedules WHERE recipient_id = ?"),
                          (recipient_id,)) > 0

    def begin_look(self, stored: StoredLook) -> bool:
        look = stored.look
        with self._transaction() as tx:
            written = tx.run(self._q(
                "INSERT INTO {p}cam_looks (id, recipient_id, state, requested_at, token_hash,"
                " stream_url, body) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"),
                (look.id, look.recipient_id, look.state.value, look.requested_at,
                 stored.token_hash, stored.stream_url, look_to_json(look)))
        return written > 0

    def save_look(self, stored: StoredLook, *, unless_ended: bool = False) -> bool:
        look = stored.look
        guard = " AND state <> 'ended'" if unless_ended else ""
        with self._transaction() as tx:
            return tx.run(self._q(
                "UPDATE {p}cam_looks SET state = ?, token_hash = ?, stream_url = ?, body = ?"
                " WHERE id = ?" + guard),
                (look.state.value, stored.token_hash, stored.stream_url, look_to_json(look),
                 look.id)) > 0

    def look(self, look_id: str) -> StoredLook | None:
        with self._transaction() as tx:
            found = tx.one(self._q(
                "SELECT body, token_hash, stream_url FROM {p}cam_looks WHERE id = ?"),
                (look_id,))
        return None if found is None else StoredLook(look_from_json(found[0]), found[1],
                                                     found[2])

    def looks(self, *, in_progress: bool = False) -> list[StoredLook]:
        where = " WHERE state <> 'ended'" if in_progress else ""
        with self._transaction() as tx:
            rows = tx.all(self._q(
                "SELECT body, token_hash, stream_url FROM {p}cam_looks" + where
                + " ORDER BY requested_at, id"))
        return [StoredLook(look_from_json(body), th, url) for body, th, url in rows]

    def claim_window(self, key: str, kind: str, now: float) -> bool:
        with self._transaction() as tx:
            return tx.run(self._q(
                "INSERT INTO {p}cam_windows (key, kind, at) VALUES (?, ?, ?)"
                " ON CONFLICT DO NOTHING"), (key, kind, now)) > 0

    def windows(self, kind: str) -> frozenset[str]:
        with self._transaction() as tx:
            rows = tx.all(self._q("SELECT key FROM {p}cam_windows WHERE kind = ?"), (kind,))
        return frozenset(key for (key,) in rows)

    def prune_windows(self, before: float) -> None:
        with self._transaction() as tx:
            tx.run(self._q("DELETE FROM {p}cam_windows WHERE at < ?"), (before,))


def _consent_fields(consent: Consent) -> dict[str, Any]:
    return {name: getattr(consent, name) for name in Consent.__dataclass_fields__}


class _Tx(Protocol):
    def run(self, query: str, params: Sequence[object] = ()) -> int: ...
    def one(self, query: str, params: Sequence[object] = ()) -> tuple[Any, ...] | None: ...
    def all(self, query: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]: ...


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def run(self, query: str, params: Sequence[object] = ()) -> int:
        return self.conn.execute(query, params).rowcount

    def one(self, query: str, params: Sequence[object] = ()) -> tuple[Any, ...] | None:
        found: tuple[Any, ...] | None = self.conn.execute(query, params).fetchone()
        return found

    def all(self, query: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(query, params).fetchall()


class SqliteCameraStore(_SqlCameraStore):
    """One gateway's camera state in ``DATA_DIR/nattillsyn.sqlite3``."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.execute("PRAGMA journal_mode=WAL")
        # Consents and looks are evidence (who allowed, who looked): not lost on power cut.
        self._conn.execute("PRAGMA synchronous=FULL")
        for statement in _CREATE:
            self._conn.execute(statement.format(p="", serial="INTEGER"))
        self._take_over_legacy(path.parent / LEGACY_FILE)

    def _take_over_legacy(self, legacy: Path) -> None:
        """Consents and schedules from ``nattillsyn.json`` (before this store), once."""
        if not legacy.is_file():
            return
        with self._transaction() as tx:
            if tx.one("SELECT 1 FROM cam_meta WHERE key = 'legacy_imported'") is not None:
                return
            body = json.loads(legacy.read_text(encoding="utf-8"))
            for consent in body.get("consents", []):
                tx.run("INSERT INTO cam_consents (recipient_id, body) VALUES (?, ?)",
                       (consent["recipient_id"], json.dumps(consent)))
            for schedule in body.get("schedules", []):
                tx.run("INSERT OR REPLACE INTO cam_schedules (recipient_id, body)"
                       " VALUES (?, ?)", (schedule["recipient_id"], json.dumps(schedule)))
            tx.run("INSERT INTO cam_meta (key, value) VALUES ('legacy_imported', ?)",
                   (str(legacy),))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_Tx]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _PgTx:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def run(self, query: str, params: Sequence[object] = ()) -> int:
        cur = self.conn.execute(query.replace("?", "%s").encode(), params)
        return int(cur.rowcount)

    def one(self, query: str, params: Sequence[object] = ()) -> tuple[Any, ...] | None:
        found: tuple[Any, ...] | None = self.conn.execute(
            query.replace("?", "%s").encode(), params).fetchone()
        return found

    def all(self, query: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self.conn.execute(
            query.replace("?", "%s").encode(), params).fetchall()
        return rows


CAMERA_MIGRATIONS: list[list[str]] = [
    [s.format(p="trygg_", serial="bigserial") for s in _CREATE],
]


class PostgresCameraStore(_SqlCameraStore):
    """The cluster's camera state, in the shared database (tables ``trygg_cam_*``)."""

    shared = True
    _prefix = "trygg_"
    # Two gateways withdrawing at once: the second sees the first's withdrawal.
    _for_update = " FOR UPDATE"

    def __init__(self, dsn: str, *, gateway_id: str = "") -> None:
        from gateway.pg_schema import connect, migrate_sync

        super().__init__()
        self.dsn = dsn
        self._connect = connect
        self._conn = connect(dsn)
        migrate_sync(self._conn, "cameras", CAMERA_MIGRATIONS, applied_by=gateway_id)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_Tx]:
        with self._lock:
            if self._conn.closed:
                # A lost connection fails one call; the next one reconnects.
                self._conn = self._connect(self.dsn)
            with self._conn.transaction():
                yield _PgTx(self._conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_camera_store(settings: Settings) -> CameraStore:
    """The store these settings use: the cluster's database, or the data directory's file.
    Blocking."""
    if settings.cluster is not None and settings.journal_dsn is not None:
        return PostgresCameraStore(settings.journal_dsn, gateway_id=settings.gateway_id)
    return SqliteCameraStore(settings.data_dir / STORE_FILE)
