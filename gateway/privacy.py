"""Data protection for care recipients: export everything held about one, erase when care ends,
and retention of what the gateway keeps (docs/security.md, "Data protection").

Export (GDPR art. 15): the recipient record, their devices (registry rows and history), every
alarm with its hops, a summary of each telemetry series of their devices, and the audit
entries that concern them or their alarms.

Erasure (art. 17) is pseudonymisation: the recipient keeps an id and a team (so response-time
statistics stay whole) and loses name, address, entry information and action plan; devices
are unbound; the telemetry of their devices is deleted. The audit log is hash-chained and is
never rewritten: its entries carry ids only (never names or addresses), so after erasure the
ids no longer lead to a person and ``gateway.audit.verify`` still passes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from alarms.model import Alarm
from gateway.audit import AUDIT_FILENAME
from gateway.audit_target import AuditTarget, PostgresAudit, open_audit
from gateway.org import OrgStore, RecipientInfo
from gateway.views import alarm_json

if TYPE_CHECKING:
    from gateway.provisioning import DeviceRegistry

TELEMETRY_FILENAME = "telemetry.sqlite3"
ERASED_NAME = "[raderad / erased]"
DAY_S = 86_400.0


class RetentionSettings(BaseModel):
    """How long things are kept (proposed ``Settings.retention``); 0 = forever."""

    model_config = ConfigDict(extra="forbid")

    closed_alarms_days: float = Field(default=0, ge=0)
    telemetry_raw_days: float = Field(default=7, ge=0)
    telemetry_rollup_days: float = Field(default=90, ge=0)
    audit_days: float = Field(default=0, ge=0)
    provisioning_days: float = Field(default=365, ge=0)


def _readonly(path: Path) -> sqlite3.Connection | None:
    if not path.exists():
        return None
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def devices_of(recipient_id: str, org: OrgStore, alarms: Iterable[Alarm],
               registry: DeviceRegistry | None) -> set[str]:
    """Every device that is or ever was the recipient's (binding, alarms, registry history)."""
    found = {d.id for d in org.devices.values() if d.recipient_id == recipient_id}
    found |= {a.device_id for a in alarms if a.recipient_id == recipient_id}
    if registry is not None:
        for device in registry.all():
            for event in registry.history(device.device_id):
                if event["detail"].get("recipient_id") == recipient_id:
                    found.add(device.device_id)
    return found


def telemetry_summary(data_dir: Path, device_ids: Iterable[str]) -> list[dict[str, Any]]:
    """Per device and metric: sample count, time span, min, max and mean."""
    conn = _readonly(data_dir / TELEMETRY_FILENAME)
    if conn is None:
        return []
    out: list[dict[str, Any]] = []
    with closing(conn):
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        for device_id in sorted(device_ids):
            metrics: dict[str, dict[str, Any]] = {}
            if "rollup_1m" in tables:
                for metric, n, first, last, lo, hi, total in conn.execute(
                    "SELECT metric, sum(count), min(minute_ms), max(minute_ms), min(min),"
                    " max(max), sum(avg * count) FROM rollup_1m WHERE device_id = ?"
                    " GROUP BY metric", (device_id,)
                ):
                    metrics[metric] = {"samples": n, "first_ms": first, "last_ms": last,
                                       "min": lo, "max": hi, "sum": total}
            if "raw" in tables:
                for metric, n, first, last, lo, hi, total in conn.execute(
                    "SELECT metric, count(*), min(ts_ms), max(ts_ms), min(num), max(num),"
                    " sum(num) FROM raw WHERE device_id = ? GROUP BY metric", (device_id,)
                ):
                    # Raw rows not yet rolled up and rollups overlap; report the larger view.
                    if metric not in metrics or n > metrics[metric]["samples"]:
                        metrics[metric] = {"samples": n, "first_ms": first, "last_ms": last,
                                           "min": lo, "max": hi, "sum": total}
            for metric, row in sorted(metrics.items()):
                samples = row.pop("sum")
                row["mean"] = samples / row["samples"] if row["samples"] else None
                out.append({"device_id": device_id, "metric": metric, **row})
    return out


def audit_entries(data_dir: Path, recipient_id: str, alarm_ids: set[str],
                  device_ids: set[str], audit: AuditTarget | None = None
                  ) -> list[dict[str, Any]]:
    """Audit records about the recipient, their alarms or their devices (from ``audit``:
    the cluster's chain, or by default this gateway's file)."""
    subjects = {recipient_id} | alarm_ids | device_ids
    out = []
    for seq, time_us, kind, actor, subject, detail in _audit_rows(data_dir, audit):
        parsed = json.loads(detail)
        if subject in subjects or parsed.get("recipient_id") == recipient_id:
            out.append({"seq": seq, "time": time_us / 1e6, "kind": kind, "actor": actor,
                        "subject": subject, "detail": parsed})
    return out


def _audit_rows(data_dir: Path, audit: AuditTarget | None
                ) -> Iterator[tuple[int, int, str, str, str, str]]:
    if isinstance(audit, PostgresAudit):
        with open_audit(audit) as log:
            for r in log.records():
                yield r.seq, r.time_us, r.kind, r.actor, r.subject, r.detail_json
        return
    conn = _readonly(audit.path if audit is not None else data_dir / AUDIT_FILENAME)
    if conn is None:
        return
    with closing(conn):
        yield from conn.execute(
            "SELECT seq, time_us, kind, actor, subject, detail FROM audit ORDER BY seq")


def export_recipient(
    recipient_id: str, *, org: OrgStore, alarms: Iterable[Alarm], data_dir: Path,
    registry: DeviceRegistry | None, audit: AuditTarget | None = None,
) -> dict[str, Any]:
    """Everything held about one recipient, as JSON-ready data. Blocking: run in a thread."""
    recipient = org.recipients.get(recipient_id)
    if recipient is None:
        raise KeyError(recipient_id)
    theirs = [a for a in alarms if a.recipient_id == recipient_id]
    device_ids = devices_of(recipient_id, org, theirs, registry)
    devices = []
    for device_id in sorted(device_ids):
        info = org.devices.get(device_id)
        row = registry.get(device_id) if registry is not None else None
        devices.append({
            "id": device_id,
            "type": info.type if info else (row.type if row else None),
            "model": info.model if info else (row.model if row else None),
            "serial": info.serial if info else (row.serial if row else None),
            "bound": info is not None and info.recipient_id == recipient_id,
            "state": row.state if row else None,
            "history": registry.history(device_id) if registry is not None else [],
        })
    return {
        "exported_at": time.time(),
        "recipient": {
            "id": recipient.id, "name": recipient.name, "address": recipient.address,
            "team_id": recipient.team_id, "entry_info": recipient.entry_info,
            "action_plan": recipient.action_plan, "phone": recipient.phone,
        },
        "devices": devices,
        "alarms": [alarm_json(a, org) for a in sorted(theirs, key=lambda a: a.hops[0].at)],
        "telemetry": telemetry_summary(data_dir, device_ids),
        "audit": audit_entries(data_dir, recipient_id, {a.id for a in theirs}, device_ids,
                               audit),
    }


def erase_recipient(
    recipient_id: str, *, org: OrgStore, alarms: Iterable[Alarm], data_dir: Path,
    registry: DeviceRegistry | None, actor: str,
) -> dict[str, Any]:
    """Pseudonymise a recipient whose care ended. Blocking: run in a thread.

    Kept: the id, the team, alarms (type, times, hops: the statistics). Removed: name,
    address, entry information, action plan, phone, device bindings and telemetry.
    """
    recipient = org.recipients.get(recipient_id)
    if recipient is None:
        raise KeyError(recipient_id)
    theirs = [a for a in alarms if a.recipient_id == recipient_id]
    device_ids = devices_of(recipient_id, org, theirs, registry)
    for device in list(org.devices.values()):
        if device.recipient_id == recipient_id:
            if registry is not None:
                registry.unbind(device.id, actor=actor)
            else:
                org.put_device(type(device)(device.id, device.type, None, device.model,
                                            device.serial, device.heartbeat_s))
    org.put_recipient(RecipientInfo(recipient_id, ERASED_NAME, "", recipient.team_id))
    org.vacuum()
    deleted = delete_telemetry(data_dir, device_ids)
    return {"recipient_id": recipient_id, "devices_unbound": sorted(
        d for d in device_ids if d not in org.devices or org.devices[d].recipient_id is None),
        "telemetry_rows_deleted": deleted, "alarms_kept": len(theirs)}


def delete_telemetry(data_dir: Path, device_ids: Iterable[str], before_ms: int | None = None
                     ) -> int:
    """Delete telemetry of these devices (older than ``before_ms`` if given), for good."""
    path = data_dir / TELEMETRY_FILENAME
    ids = sorted(device_ids)
    if not path.exists() or not ids:
        return 0
    marks = ",".join("?" * len(ids))
    deleted = 0
    with closing(sqlite3.connect(path, timeout=30)) as conn:
        conn.execute("PRAGMA secure_delete=ON")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        with conn:
            for table, column in (("raw", "ts_ms"), ("rollup_1m", "minute_ms")):
                if table not in tables:
                    continue
                sql = f"DELETE FROM {table} WHERE device_id IN ({marks})"
                params: list[Any] = list(ids)
                if before_ms is not None:
                    sql += f" AND {column} < ?"
                    params.append(before_ms)
                deleted += conn.execute(sql, params).rowcount
        # Old page images may sit in the WAL until a checkpoint copies the new ones over.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return deleted


def run_retention(data_dir: Path, settings: RetentionSettings, *, now: float | None = None
                  ) -> dict[str, int]:
    """One retention pass over the stores this module can prune. Blocking: run in a thread.

    Telemetry (raw and minute rollups) and provisioning history of decommissioned devices are
    deleted here. Closed alarms live in the append-only journal and audit records in the hash
    chain: those periods are enforced by archiving whole journal/audit segments (see
    docs/security.md), not by deleting rows here.
    """
    now = time.time() if now is None else now
    done: dict[str, int] = {"telemetry_raw": 0, "telemetry_rollup": 0, "provisioning": 0}
    path = data_dir / TELEMETRY_FILENAME
    if path.exists():
        with closing(sqlite3.connect(path, timeout=30)) as conn:
            conn.execute("PRAGMA secure_delete=ON")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            with conn:
                for key, table, column, days in (
                    ("telemetry_raw", "raw", "ts_ms", settings.telemetry_raw_days),
                    ("telemetry_rollup", "rollup_1m", "minute_ms",
                     settings.telemetry_rollup_days),
                ):
                    if days and table in tables:
                        cutoff = int((now - days * DAY_S) * 1000)
                        done[key] = conn.execute(
                            f"DELETE FROM {table} WHERE {column} < ?", (cutoff,)).rowcount
    registry_path = data_dir / "provisioning.sqlite3"
    if settings.provisioning_days and registry_path.exists():
        cutoff_s = now - settings.provisioning_days * DAY_S
        with closing(sqlite3.connect(registry_path, timeout=30)) as conn, conn:
            # The registry may have created its file but not yet its tables (the first
            # pass runs as the gateway starts): nothing to prune then.
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if {"history", "registry"} <= tables:
                done["provisioning"] = conn.execute(
                    "DELETE FROM history WHERE at < ? AND device_id IN"
                    " (SELECT device_id FROM registry WHERE state = 'decommissioned')",
                    (cutoff_s,)).rowcount
            if "claims" in tables:
                conn.execute("DELETE FROM claims WHERE expires_at < ? OR consumed_at < ?",
                             (cutoff_s, cutoff_s))
    return done
