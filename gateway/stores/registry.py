"""The device registry's storage: the port, the SQLite and the PostgreSQL adapters.

``gateway.provisioning.DeviceRegistry`` holds the technician's workflow (checks, hooks,
broker files); this module holds only its rows: registered devices, their broker
credentials (hashes), one-time claim codes (hashes) and their history.

- ``SqliteRegistryStore``: ``provisioning.sqlite3`` in the data directory (one gateway).
- ``PgRegistryStore``: the same tables in PostgreSQL (a cluster), so a device registered on
  one gateway gets its claim code redeemed on another. Every change of credentials is
  NOTIFYed on ``REGISTRY_CHANNEL`` so every gateway rewrites its broker files
  (``gateway.broker_sync``).

Redeeming is one conditional UPDATE (``consumed_at IS NULL``): two gateways redeeming the
same code at once both run it, the row lock makes the second re-check the condition after
the first commits, and it finds nothing. Exactly one gets credentials.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.stores import pg

__all__ = [
    "REGISTRY_CHANNEL",
    "HistoryEvent",
    "PgRegistryStore",
    "RegisteredDevice",
    "RegistryExport",
    "RegistryStore",
    "SqliteRegistryStore",
]

REGISTRY_CHANNEL = "trygg_registry"


@dataclass(frozen=True, slots=True)
class RegisteredDevice:
    """One row of the registry."""

    device_id: str
    serial: str
    type: str
    model: str
    firmware: str
    state: str  # registered | enrolled | decommissioned
    registered_at: float
    replaces: str | None = None
    replaced_by: str | None = None


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """One entry of a device's history; ``detail`` is a JSON object's text."""

    device_id: str
    at: float
    event: str
    actor: str
    detail: str = "{}"

    @classmethod
    def of(cls, device_id: str, at: float, event: str, actor: str,
           **detail: Any) -> HistoryEvent:
        """An entry with its detail encoded (sorted keys: stable text)."""
        return cls(device_id, at, event, actor, json.dumps(detail, sort_keys=True))


@dataclass(frozen=True, slots=True)
class RegistryExport:
    """A whole registry: rows, credentials (id, hash, issued at), claim codes (hash, id,
    expires at, consumed at) and history."""

    devices: list[RegisteredDevice]
    credentials: list[tuple[str, str, float]]
    claims: list[tuple[str, str, float, float | None]]
    history: list[HistoryEvent]


class RegistryStore(Protocol):
    """Rows of the device registry. Each method is one transaction."""

    def get(self, device_id: str) -> RegisteredDevice | None:
        """The registry row of a device, if registered."""

    def all(self) -> list[RegisteredDevice]:
        """Every registered device, decommissioned ones included, by id."""

    def history(self, device_ids: list[str]) -> list[HistoryEvent]:
        """The events of these devices, oldest first."""

    def register(self, row: RegisteredDevice, event: HistoryEvent) -> bool:
        """Add a device; False (and nothing written) if its id is taken."""

    def adopt(self, row: RegisteredDevice) -> None:
        """Add a device if its id is free (devices seeded straight into the organisation)."""

    def log(self, event: HistoryEvent) -> None:
        """Append to a device's history."""

    def swap(self, old_id: str, new_id: str, events: list[HistoryEvent]) -> None:
        """Record that ``new_id`` replaces ``old_id``."""

    def decommission(self, device_id: str, event: HistoryEvent) -> None:
        """Out of service: credentials deleted, open claim codes spent."""

    def set_firmware(self, device_id: str, firmware: str) -> None:
        """Record the firmware a device reported."""

    def issue_claim(self, code_hash: str, device_id: str, expires_at: float,
                    event: HistoryEvent) -> None:
        """A new claim code for the device; its earlier unspent codes are spent."""

    def redeem(self, code_hash: str, now: float, password_hash: str) -> str | None:
        """Spend a claim code and store the device's credentials, exactly once; the
        device id, or None for an unknown, spent or expired code or a decommissioned
        device."""

    def credentials(self) -> list[tuple[str, str]]:
        """(device id, password hash) of every device in service holding credentials."""

    def has_credentials(self, device_id: str) -> bool:
        """Whether the device holds credentials."""

    def prune(self, cutoff_s: float) -> int:
        """Retention: drop decommissioned devices' history and claim codes expired or
        spent before ``cutoff_s``; returns the history entries dropped."""


_COLUMNS = ("device_id, serial, type, model, firmware, state, registered_at,"
            " replaces, replaced_by")

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS registry (
    device_id TEXT PRIMARY KEY, serial TEXT NOT NULL, type TEXT NOT NULL,
    model TEXT NOT NULL, firmware TEXT NOT NULL, state TEXT NOT NULL,
    registered_at REAL NOT NULL, replaces TEXT, replaced_by TEXT);
CREATE TABLE IF NOT EXISTS credentials (
    device_id TEXT PRIMARY KEY, hash TEXT NOT NULL, issued_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS claims (
    code_hash TEXT PRIMARY KEY, device_id TEXT NOT NULL, expires_at REAL NOT NULL,
    consumed_at REAL);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL, at REAL NOT NULL,
    event TEXT NOT NULL, actor TEXT NOT NULL, detail TEXT NOT NULL);
"""


def _row(values: Any) -> RegisteredDevice:
    return RegisteredDevice(*values)


class SqliteRegistryStore:
    """The registry in ``provisioning.sqlite3`` (a connection per operation: changes are
    rare, and the CLI and the gateway can both use the file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._db():
            pass

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=10)) as conn:
            conn.execute("PRAGMA secure_delete=ON")
            conn.executescript(_SQLITE_SCHEMA)
            with conn:
                yield conn

    @staticmethod
    def _log(conn: sqlite3.Connection, event: HistoryEvent) -> None:
        conn.execute(
            "INSERT INTO history (device_id, at, event, actor, detail) VALUES (?, ?, ?, ?, ?)",
            (event.device_id, event.at, event.event, event.actor, event.detail),
        )

    def get(self, device_id: str) -> RegisteredDevice | None:
        """The registry row of a device, if registered."""
        with self._db() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM registry WHERE device_id = ?",
                               (device_id,)).fetchone()
        return _row(row) if row else None

    def all(self) -> list[RegisteredDevice]:
        """Every registered device, by id."""
        with self._db() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM registry ORDER BY device_id").fetchall()
        return [_row(r) for r in rows]

    def history(self, device_ids: list[str]) -> list[HistoryEvent]:
        """The events of these devices, oldest first."""
        marks = ",".join("?" * len(device_ids))
        with self._db() as conn:
            rows = conn.execute(
                f"SELECT device_id, at, event, actor, detail FROM history"
                f" WHERE device_id IN ({marks}) ORDER BY seq", device_ids
            ).fetchall()
        return [HistoryEvent(*r) for r in rows]

    def register(self, row: RegisteredDevice, event: HistoryEvent) -> bool:
        """Add a device; False if its id is taken."""
        with self._db() as conn:
            inserted = conn.execute(
                "INSERT OR IGNORE INTO registry VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
                (row.device_id, row.serial, row.type, row.model, row.firmware, row.state,
                 row.registered_at),
            ).rowcount
            if inserted:
                self._log(conn, event)
        return inserted > 0

    def adopt(self, row: RegisteredDevice) -> None:
        """Add a device if its id is free."""
        with self._db() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO registry VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
                (row.device_id, row.serial, row.type, row.model, row.firmware, row.state,
                 row.registered_at),
            )

    def log(self, event: HistoryEvent) -> None:
        """Append to a device's history."""
        with self._db() as conn:
            self._log(conn, event)

    def swap(self, old_id: str, new_id: str, events: list[HistoryEvent]) -> None:
        """Record that ``new_id`` replaces ``old_id``."""
        with self._db() as conn:
            conn.execute("UPDATE registry SET replaces = ? WHERE device_id = ?",
                         (old_id, new_id))
            conn.execute("UPDATE registry SET replaced_by = ? WHERE device_id = ?",
                         (new_id, old_id))
            for event in events:
                self._log(conn, event)

    def decommission(self, device_id: str, event: HistoryEvent) -> None:
        """Out of service: credentials deleted, open claim codes spent."""
        with self._db() as conn:
            conn.execute("UPDATE registry SET state = 'decommissioned' WHERE device_id = ?",
                         (device_id,))
            conn.execute("DELETE FROM credentials WHERE device_id = ?", (device_id,))
            conn.execute("UPDATE claims SET consumed_at = ? WHERE device_id = ?"
                         " AND consumed_at IS NULL", (event.at, device_id))
            self._log(conn, event)

    def set_firmware(self, device_id: str, firmware: str) -> None:
        """Record the firmware a device reported."""
        with self._db() as conn:
            conn.execute("UPDATE registry SET firmware = ? WHERE device_id = ?",
                         (firmware, device_id))

    def issue_claim(self, code_hash: str, device_id: str, expires_at: float,
                    event: HistoryEvent) -> None:
        """A new claim code; earlier unspent ones stop working."""
        with self._db() as conn:
            conn.execute("UPDATE claims SET consumed_at = ? WHERE device_id = ?"
                         " AND consumed_at IS NULL", (event.at, device_id))
            conn.execute("INSERT INTO claims VALUES (?, ?, ?, NULL)",
                         (code_hash, device_id, expires_at))
            self._log(conn, event)

    def redeem(self, code_hash: str, now: float, password_hash: str) -> str | None:
        """Spend the code (one conditional UPDATE) and store the credentials."""
        with self._db() as conn:
            row = conn.execute(
                "UPDATE claims SET consumed_at = ? WHERE code_hash = ?"
                " AND consumed_at IS NULL AND expires_at >= ? AND device_id IN"
                " (SELECT device_id FROM registry WHERE state != 'decommissioned')"
                " RETURNING device_id", (now, code_hash, now),
            ).fetchone()
            if row is None:
                return None
            device_id = str(row[0])
            conn.execute("INSERT OR REPLACE INTO credentials VALUES (?, ?, ?)",
                         (device_id, password_hash, now))
            conn.execute("UPDATE registry SET state = 'enrolled' WHERE device_id = ?",
                         (device_id,))
            self._log(conn, HistoryEvent.of(device_id, now, "enrolled", device_id))
        return device_id

    def credentials(self) -> list[tuple[str, str]]:
        """(device id, hash) of every device in service holding credentials."""
        with self._db() as conn:
            rows = conn.execute(
                "SELECT c.device_id, c.hash FROM credentials c JOIN registry r"
                " ON r.device_id = c.device_id WHERE r.state != 'decommissioned'"
                " ORDER BY c.device_id"
            ).fetchall()
        return [(str(d), str(h)) for d, h in rows]

    def has_credentials(self, device_id: str) -> bool:
        """Whether the device holds credentials."""
        with self._db() as conn:
            return conn.execute("SELECT 1 FROM credentials WHERE device_id = ?",
                                (device_id,)).fetchone() is not None

    def prune(self, cutoff_s: float) -> int:
        """Retention (gateway.privacy runs the same on the file for a lone gateway)."""
        with self._db() as conn:
            dropped = conn.execute(
                "DELETE FROM history WHERE at < ? AND device_id IN"
                " (SELECT device_id FROM registry WHERE state = 'decommissioned')",
                (cutoff_s,)).rowcount
            conn.execute("DELETE FROM claims WHERE expires_at < ? OR consumed_at < ?",
                         (cutoff_s, cutoff_s))
        return dropped

    def export(self) -> RegistryExport:
        """Every row, for moving a single gateway's registry into a cluster's."""
        with self._db() as conn:
            return RegistryExport(
                devices=[_row(r) for r in conn.execute(
                    f"SELECT {_COLUMNS} FROM registry ORDER BY device_id")],
                credentials=[(str(d), str(h), float(t)) for d, h, t in conn.execute(
                    "SELECT device_id, hash, issued_at FROM credentials")],
                claims=[(str(c), str(d), float(e), None if u is None else float(u))
                        for c, d, e, u in conn.execute(
                            "SELECT code_hash, device_id, expires_at, consumed_at FROM claims")],
                history=[HistoryEvent(*r) for r in conn.execute(
                    "SELECT device_id, at, event, actor, detail FROM history ORDER BY seq")],
            )


MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE trygg_registry ("
        " device_id text PRIMARY KEY, serial text NOT NULL, type text NOT NULL,"
        " model text NOT NULL, firmware text NOT NULL, state text NOT NULL,"
        " registered_at double precision NOT NULL, replaces text, replaced_by text)",
        "CREATE TABLE trygg_credentials ("
        " device_id text PRIMARY KEY, hash text NOT NULL,"
        " issued_at double precision NOT NULL)",
        "CREATE TABLE trygg_claims ("
        " code_hash text PRIMARY KEY, device_id text NOT NULL,"
        " expires_at double precision NOT NULL, consumed_at double precision)",
        "CREATE INDEX trygg_claims_device ON trygg_claims (device_id)",
        "CREATE TABLE trygg_registry_history ("
        " seq bigserial PRIMARY KEY, device_id text NOT NULL,"
        " at double precision NOT NULL, event text NOT NULL, actor text NOT NULL,"
        " detail text NOT NULL)",
        "CREATE INDEX trygg_registry_history_device ON trygg_registry_history (device_id)",
    ],
]

_PG_INSERT = ("INSERT INTO trygg_registry (device_id, serial, type, model, firmware, state,"
              " registered_at) VALUES (%s, %s, %s, %s, %s, %s, %s)"
              " ON CONFLICT (device_id) DO NOTHING")


class PgRegistryStore:
    """The registry in PostgreSQL, shared by every gateway on ``dsn``."""

    def __init__(self, dsn: str, gateway_id: str = "") -> None:
        self.dsn = dsn
        self.gateway_id = gateway_id
        pg.translated(pg.migrate)(dsn, "registry", MIGRATIONS)

    @staticmethod
    def _log(conn: Any, event: HistoryEvent) -> None:
        conn.execute(
            "INSERT INTO trygg_registry_history (device_id, at, event, actor, detail)"
            " VALUES (%s, %s, %s, %s, %s)",
            (event.device_id, event.at, event.event, event.actor, event.detail),
        )

    def _credentials_changed(self, conn: Any) -> None:
        # Delivered at COMMIT, only if the transaction commits.
        conn.execute("SELECT pg_notify(%s, %s)", (REGISTRY_CHANNEL, self.gateway_id))

    @pg.translated
    def get(self, device_id: str) -> RegisteredDevice | None:
        """The registry row of a device, if registered."""
        with pg.connection(self.dsn) as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM trygg_registry WHERE device_id = %s",
                               (device_id,)).fetchone()
        return _row(row) if row else None

    @pg.translated
    def all(self) -> list[RegisteredDevice]:
        """Every registered device, by id."""
        with pg.connection(self.dsn) as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM trygg_registry ORDER BY device_id").fetchall()
        return [_row(r) for r in rows]

    @pg.translated
    def history(self, device_ids: list[str]) -> list[HistoryEvent]:
        """The events of these devices, oldest first."""
        with pg.connection(self.dsn) as conn:
            rows = conn.execute(
                "SELECT device_id, at, event, actor, detail FROM trygg_registry_history"
                " WHERE device_id = ANY(%s) ORDER BY seq", (device_ids,)
            ).fetchall()
        return [HistoryEvent(*r) for r in rows]

    @pg.translated
    def register(self, row: RegisteredDevice, event: HistoryEvent) -> bool:
        """Add a device; False if its id is taken (on any gateway)."""
        with pg.connection(self.dsn) as conn, conn.transaction():
            inserted = conn.execute(_PG_INSERT, (
                row.device_id, row.serial, row.type, row.model, row.firmware, row.state,
                row.registered_at)).rowcount
            if inserted:
                self._log(conn, event)
        return inserted > 0

    @pg.translated
    def adopt(self, row: RegisteredDevice) -> None:
        """Add a device if its id is free."""
        with pg.connection(self.dsn) as conn:
            conn.execute(_PG_INSERT, (row.device_id, row.serial, row.type, row.model,
                                      row.firmware, row.state, row.registered_at))

    @pg.translated
    def log(self, event: HistoryEvent) -> None:
        """Append to a device's history."""
        with pg.connection(self.dsn) as conn:
            self._log(conn, event)

    @pg.translated
    def swap(self, old_id: str, new_id: str, events: list[HistoryEvent]) -> None:
        """Record that ``new_id`` replaces ``old_id``."""
        with pg.connection(self.dsn) as conn, conn.transaction():
            conn.execute("UPDATE trygg_registry SET replaces = %s WHERE device_id = %s",
                         (old_id, new_id))
            conn.execute("UPDATE trygg_registry SET replaced_by = %s WHERE device_id = %s",
                         (new_id, old_id))
            for event in events:
                self._log(conn, event)

    @pg.translated
    def decommission(self, device_id: str, event: HistoryEvent) -> None:
        """Out of service: credentials deleted, open claim codes spent."""
        with pg.connection(self.dsn) as conn, conn.transaction():
            conn.execute("UPDATE trygg_registry SET state = 'decommissioned'"
                         " WHERE device_id = %s", (device_id,))
            conn.execute("DELETE FROM trygg_credentials WHERE device_id = %s", (device_id,))
            conn.execute("UPDATE trygg_claims SET consumed_at = %s WHERE device_id = %s"
                         " AND consumed_at IS NULL", (event.at, device_id))
            self._log(conn, event)
            self._credentials_changed(conn)

    @pg.translated
    def set_firmware(self, device_id: str, firmware: str) -> None:
        """Record the firmware a device reported."""
        with pg.connection(self.dsn) as conn:
            conn.execute("UPDATE trygg_registry SET firmware = %s WHERE device_id = %s",
                         (firmware, device_id))

    @pg.translated
    def issue_claim(self, code_hash: str, device_id: str, expires_at: float,
                    event: HistoryEvent) -> None:
        """A new claim code; earlier unspent ones stop working."""
        with pg.connection(self.dsn) as conn, conn.transaction():
            conn.execute("UPDATE trygg_claims SET consumed_at = %s WHERE device_id = %s"
                         " AND consumed_at IS NULL", (event.at, device_id))
            conn.execute("INSERT INTO trygg_claims (code_hash, device_id, expires_at)"
                         " VALUES (%s, %s, %s)", (code_hash, device_id, expires_at))
            self._log(conn, event)

    @pg.translated
    def redeem(self, code_hash: str, now: float, password_hash: str) -> str | None:
        """Spend the code (one conditional UPDATE: one winner) and store the credentials."""
        with pg.connection(self.dsn) as conn, conn.transaction():
            row = conn.execute(
                "UPDATE trygg_claims c SET consumed_at = %s FROM trygg_registry r"
                " WHERE c.code_hash = %s AND c.consumed_at IS NULL AND c.expires_at >= %s"
                " AND r.device_id = c.device_id AND r.state <> 'decommissioned'"
                " RETURNING c.device_id", (now, code_hash, now),
            ).fetchone()
            if row is None:
                return None
            device_id = str(row[0])
            conn.execute(
                "INSERT INTO trygg_credentials (device_id, hash, issued_at)"
                " VALUES (%s, %s, %s) ON CONFLICT (device_id) DO UPDATE"
                " SET hash = excluded.hash, issued_at = excluded.issued_at",
                (device_id, password_hash, now))
            conn.execute("UPDATE trygg_registry SET state = 'enrolled' WHERE device_id = %s",
                         (device_id,))
            self._log(conn, HistoryEvent.of(device_id, now, "enrolled", device_id))
            self._credentials_changed(conn)
        return device_id

    @pg.translated
    def credentials(self) -> list[tuple[str, str]]:
        """(device id, hash) of every device in service holding credentials."""
        with pg.connection(self.dsn) as conn:
            rows = conn.execute(
                "SELECT c.device_id, c.hash FROM trygg_credentials c JOIN trygg_registry r"
                " ON r.device_id = c.device_id WHERE r.state <> 'decommissioned'"
                " ORDER BY c.device_id"
            ).fetchall()
        return [(str(d), str(h)) for d, h in rows]

    @pg.translated
    def has_credentials(self, device_id: str) -> bool:
        """Whether the device holds credentials."""
        with pg.connection(self.dsn) as conn:
            return conn.execute("SELECT 1 FROM trygg_credentials WHERE device_id = %s",
                                (device_id,)).fetchone() is not None

    @pg.translated
    def prune(self, cutoff_s: float) -> int:
        """Retention of the shared registry (every gateway may run it: idempotent)."""
        with pg.connection(self.dsn) as conn, conn.transaction():
            dropped = conn.execute(
                "DELETE FROM trygg_registry_history WHERE at < %s AND device_id IN"
                " (SELECT device_id FROM trygg_registry WHERE state = 'decommissioned')",
                (cutoff_s,)).rowcount
            conn.execute("DELETE FROM trygg_claims WHERE expires_at < %s OR consumed_at < %s",
                         (cutoff_s, cutoff_s))
        return dropped

    @pg.translated
    def import_devices(self, source: RegistryExport) -> list[str]:
        """Bring a single gateway's registry into the cluster's; returns the devices added.

        A device the shared registry already has is left as it is there (with its
        credentials, codes and history); the others come with theirs. Idempotent: run on
        every start of a gateway that has a ``provisioning.sqlite3``, it adds nothing the
        second time. Without it, the first broker files written from the shared registry
        would lack the devices enrolled before the cluster, and lock them out.
        """
        with pg.connection(self.dsn) as conn, conn.transaction():
            added: list[str] = []
            for row in source.devices:
                cur = conn.execute(
                    "INSERT INTO trygg_registry VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (device_id) DO NOTHING",
                    (row.device_id, row.serial, row.type, row.model, row.firmware,
                     row.state, row.registered_at, row.replaces, row.replaced_by))
                if cur.rowcount:
                    added.append(row.device_id)
            new = set(added)
            for device_id, hash_, issued_at in source.credentials:
                if device_id in new:
                    conn.execute("INSERT INTO trygg_credentials VALUES (%s, %s, %s)"
                                 " ON CONFLICT (device_id) DO NOTHING",
                                 (device_id, hash_, issued_at))
            for code_hash, device_id, expires_at, consumed_at in source.claims:
                if device_id in new:
                    conn.execute("INSERT INTO trygg_claims VALUES (%s, %s, %s, %s)"
                                 " ON CONFLICT (code_hash) DO NOTHING",
                                 (code_hash, device_id, expires_at, consumed_at))
            for event in source.history:
                if event.device_id in new:
                    self._log(conn, event)
            if added:
                self._credentials_changed(conn)
        return added
