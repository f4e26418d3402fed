"""``trygg org import`` for a cluster: the organisation file, written once to the database.

Teams, staff, recipients and devices go into ``trygg_org`` exactly as a change made through
a running gateway would (``gateway.cluster``: latest state per entity, numbered under the
organisation lock, NOTIFY ``trygg_org``), so every running gateway applies them at once and
a gateway started later applies them on its first start. Rosters go into ``trygg_rosters``
(``gateway.stores.rosters``). All of it is one transaction: a file is imported whole or not
at all, and no gateway ever sees half of it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg

from gateway.cluster import _WRITE_ORG, MIGRATIONS_COMPONENT, ORG_CHANNEL, ORG_LOCK
from gateway.journal_pg import migrate
from gateway.orgfile import changes_of, counts_of, parse
from gateway.pg_schema import connect
from gateway.stores.rosters import write_rosters

__all__ = ["IMPORTER_ID", "import_shared"]

# The ``gateway_id`` of rows the import writes: no gateway has it, so every gateway
# applies them (a gateway skips only its own changes).
IMPORTER_ID = "trygg-org-import"


async def _migrate(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await migrate(conn, MIGRATIONS_COMPONENT, applied_by=IMPORTER_ID)


def import_shared(path: Path, dsn: str) -> dict[str, int]:
    """Validate ``path`` completely, then write it to the cluster's database. Returns counts
    per kind. ``OrgFileError`` if the file is invalid (nothing written)."""
    data = parse(path)
    changes = changes_of(data)
    # The cluster's tables, if no gateway has created them yet.
    asyncio.run(_migrate(dsn))
    with connect(dsn) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ORG_LOCK,))
        for change in changes:
            conn.execute(_WRITE_ORG, (change.kind, change.id, IMPORTER_ID, change.body()))
        conn.execute("SELECT pg_notify(%s, %s)", (ORG_CHANNEL, IMPORTER_ID))
        write_rosters(conn, {team: roster.model_dump() for team, roster in data.rosters.items()})
    return counts_of(data)
