"""``trygg org erase``: GDPR erasure of recipients whose care ended, from the command line.

The same erasure as ``POST /api/v1/admin/recipients/{id}/erase`` (``gateway.privacy``), for
the end-of-year clean-up of many recipients at once, with a progress bar. It works on the
data directory with the gateway stopped (as ``trygg devices``): a running gateway keeps the
organisation in memory and would show the erased names until its next start.

Recipients with open alarms are refused as the API refuses them, so the alarms are read
from the SQLite journal; a gateway on PostgreSQL (``journal_dsn``) erases through the API.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alarms.core import AlarmCore
from alarms.model import Alarm
from gateway.audit import AUDIT_FILENAME, AuditLog
from gateway.journal import SqliteJournal
from gateway.org import OrgStore
from gateway.privacy import erase_recipient
from gateway.progress import SILENT, Tracker, progress

JOURNAL_FILENAME = "journal.sqlite3"
# The audit kind the web API records for the same act (gateway/web/org.py).
AUDIT_KIND = "privacy_erase"


class ErasureRefused(Exception):
    """Nothing was erased; the message says why (one line)."""


@dataclass(frozen=True, slots=True)
class Erased:
    """What the erasure of one recipient did."""

    recipient_id: str
    devices_unbound: tuple[str, ...]
    telemetry_rows_deleted: int
    alarms_kept: int


def _alarms(data_dir: Path) -> list[Alarm]:
    path = data_dir / JOURNAL_FILENAME
    if not path.exists():
        raise ErasureRefused(
            f"no journal in {data_dir} ({JOURNAL_FILENAME}): a gateway on PostgreSQL erases "
            "through the API (POST /api/v1/admin/recipients/{id}/erase)")
    core = AlarmCore()
    for record in asyncio.run(SqliteJournal(path).load()):
        core.apply(record)
    return list(core.alarms.values())


def erase(data_dir: Path, recipient_ids: list[str], *, actor: str,
          tracker: Tracker = SILENT) -> list[Erased]:
    """Erase every recipient, or none if one is unknown or has open alarms."""
    alarms = _alarms(data_dir)
    org = OrgStore(data_dir / "org.sqlite3")
    try:
        unknown = [r for r in recipient_ids if r not in org.recipients]
        if unknown:
            raise ErasureRefused(f"no such recipient: {', '.join(unknown)}")
        busy = sorted({a.recipient_id for a in alarms
                       if a.recipient_id in recipient_ids and a.state != "closed"
                       and a.recipient_id is not None})
        if busy:
            raise ErasureRefused(f"open alarms, close them first: {', '.join(busy)}")
        from gateway.provisioning import BrokerAccount, DeviceRegistry

        # No broker files: unbinding changes no device credentials.
        registry = DeviceRegistry(data_dir, org, BrokerAccount(None))
        done: list[Erased] = []
        with AuditLog.open(data_dir / AUDIT_FILENAME) as audit:
            for recipient_id in recipient_ids:
                tracker.describe(f"erasing {recipient_id}")
                result = erase_recipient(recipient_id, org=org, alarms=alarms,
                                         data_dir=data_dir, registry=registry, actor=actor)
                audit.append(AUDIT_KIND, actor=actor, subject=recipient_id,
                             detail={"recipient_id": recipient_id})
                done.append(Erased(recipient_id, tuple(result["devices_unbound"]),
                                   int(result["telemetry_rows_deleted"]),
                                   int(result["alarms_kept"])))
                tracker.advance()
        return done
    finally:
        org.close()


def main(data_dir: Path, recipient_ids: list[str], actor: str) -> int:
    """``trygg org erase``: JSON of what was done on stdout, a refusal on stderr."""
    try:
        with progress("erasure", len(recipient_ids)) as tracker:
            done = erase(data_dir, recipient_ids, actor=actor, tracker=tracker)
    except ErasureRefused as exc:
        print(f"erasure refused, nothing erased: {exc}", file=sys.stderr)
        return 1
    out: list[dict[str, Any]] = [
        {"recipient_id": e.recipient_id, "devices_unbound": list(e.devices_unbound),
         "telemetry_rows_deleted": e.telemetry_rows_deleted, "alarms_kept": e.alarms_kept}
        for e in done]
    print(json.dumps(out, ensure_ascii=False))
    return 0
