"""Recovery after SIGKILL under load: time until alarms are acked again; lost and duplicates.

    .venv/bin/python bench/recovery_bench.py [--alarm-rate 20] [--telemetry-rate 1000]

On a private Mosquitto, ``trygg run`` serves 100 simulated alarm units (``firmware_sim``
Fleet: resend with back-off until acked) that raise ``--alarm-rate`` alarms/s between them,
while a publisher process adds ``--telemetry-rate`` telemetry msg/s from 1,000 devices. After
``--warm`` seconds the gateway gets SIGKILL and is restarted at once (same data dir, same
persistent MQTT session). Alarms keep coming through the outage and for ``--after`` s.

Reported:
* ``recovery_s``: SIGKILL until the first ack of an alarm raised after the kill (that ack can
  only come from the new process), and its parts: process start to /healthz 200;
* ``outage_ack_latency``: raise -> ack for the alarms raised while the gateway was down;
* ``lost``: alarms never acked ``stored``, or acked but missing from the journal;
* ``duplicates``: (device, ref) pairs stored more than once (opened + attached records).

Prints JSON, then a markdown table. Importable: ``run.py`` calls ``bench()``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest_bench import (
    GatewayUnderTest,
    broker,
    load_avg,
    spawn_publisher,
    stop,
    wait_healthy,
)
from firmware_sim import Backoff, DeviceKind, DeviceSpec, Fleet, percentile

ALARM_DEVICES = 100
DRAIN_LIMIT_S = 60.0


def journal_keys(path: Path) -> Counter[tuple[str, str]]:
    """(device, ref) of every stored care alarm: opened and attached records."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT body FROM journal ORDER BY seq").fetchall()
    finally:
        conn.close()
    keys: Counter[tuple[str, str]] = Counter()
    for (raw,) in rows:
        body = json.loads(raw)
        if body["kind"] in ("opened", "attached") and body.get("type") != "technical":
            keys[body["device_id"], body["ref"]] += 1
    return keys


async def _raise(fleet: Fleet, ids: list[str], rate: float, seconds: float, start: int) -> int:
    """Raise alarms round-robin at ``rate``/s for ``seconds``; returns the next index."""
    n = start
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        due = start + int((time.monotonic() - began) * rate)
        while n < due:
            fleet.raise_alarm(ids[n % len(ids)], "manual")
            n += 1
        await asyncio.sleep(0.01)
    return n


async def _measure(port: int, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    gw = GatewayUnderTest(directory, port, "recovery")
    proc = gw.start()
    wait_healthy(gw.http_port, proc)
    duration = args.warm + args.after + 5
    load = spawn_publisher(port, gw.prefix, int(args.telemetry_rate * duration), 0,
                           args.telemetry_rate)
    ids = [f"ing-{i:04d}" for i in range(ALARM_DEVICES)]
    fleet = Fleet([DeviceSpec(d, DeviceKind.ALARM_UNIT) for d in ids], port=port,
                  prefix=gw.prefix, seed=1, devices_per_connection=10, heartbeat_s=3600.0,
                  telemetry=False, resend=Backoff(0.5, 2.0), client_id_prefix="recovery")
    try:
        async with fleet:
            n = await _raise(fleet, ids, args.alarm_rate, args.warm, 0)
            killed = time.monotonic()
            stop(proc, signal.SIGKILL)
            proc = gw.start()
            restarted = time.monotonic()
            raising = asyncio.create_task(_raise(fleet, ids, args.alarm_rate, args.after, n),
                                          name="alarms after kill")
            healthy_s = await asyncio.to_thread(wait_healthy, gw.http_port, proc)
            await raising
            settled = await fleet.wait_all_acked(DRAIN_LIMIT_S)
            alarms = fleet.alarms()
            stats = fleet.stats()
    finally:
        load.wait(duration + 60)
        gw.stop()
    stored = journal_keys(gw.data_dir / "journal.sqlite3")
    after = [a for a in alarms if a.raised_at >= killed and a.acked_at is not None]
    first_ack = min((a.acked_at for a in after if a.acked_at is not None), default=None)
    recovered = None if first_ack is None else first_ack - killed
    outage = [a.acked_at - a.raised_at for a in after
              if a.acked_at is not None and first_ack is not None and a.raised_at <= first_ack]
    acked = {(a.device_id, a.ref) for a in alarms if a.status == "stored"}
    lost = [a for a in alarms
            if a.status != "stored" or stored.get((a.device_id, a.ref), 0) == 0]
    duplicates = {k: c for k, c in stored.items() if c > 1}
    return {
        "alarms": len(alarms),
        "acked": len(acked),
        "settled": settled,
        "alarm_rate": args.alarm_rate,
        "telemetry_rate": args.telemetry_rate,
        "recovery_s": None if recovered is None else round(recovered, 3),
        "restart_to_healthy_s": round(healthy_s, 3),
        "kill_to_restart_s": round(restarted - killed, 3),
        "outage_ack_latency": {
            "n": len(outage),
            "p50_s": round(percentile(outage, 50) or 0.0, 3),
            "max_s": round(max(outage, default=0.0), 3),
        },
        "lost": len(lost),
        "duplicates": len(duplicates),
        "journal_alarms": len(stored),
        "resends": stats.resends,
        "duplicate_acks": stats.duplicate_acks,
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """One SIGKILL-under-load run on a private broker."""
    result: dict[str, Any] = {"load_before": load_avg()}
    with broker() as port, tempfile.TemporaryDirectory() as tmp:
        result.update(asyncio.run(_measure(port, Path(tmp), args)))
    result["load_after"] = load_avg()
    return result


def parser() -> argparse.ArgumentParser:
    """The command line (``run.py`` reuses the defaults)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alarm-rate", type=float, default=20.0, help="alarms per second")
    p.add_argument("--telemetry-rate", type=float, default=1000.0, help="telemetry msg/s")
    p.add_argument("--warm", type=float, default=5.0, help="seconds of load before SIGKILL")
    p.add_argument("--after", type=float, default=8.0, help="seconds of alarms after it")
    return p


def table(result: dict[str, Any]) -> str:
    """A markdown table of the recovery figures."""
    lat = result["outage_ack_latency"]
    return "\n".join([
        "| recovery after SIGKILL | value | goal |",
        "| --- | --- | --- |",
        f"| SIGKILL -> first ack of a new alarm | {result['recovery_s']} s | < 2 s |",
        f"| of which process start -> /healthz | {result['restart_to_healthy_s']} s | |",
        f"| raise -> ack of alarms raised in the outage (n={lat['n']}) | p50 {lat['p50_s']} s, "
        f"max {lat['max_s']} s | |",
        f"| alarms lost (of {result['alarms']}) | {result['lost']} | 0 |",
        f"| alarms stored twice | {result['duplicates']} | 0 |",
    ])


def main() -> None:
    """Parse arguments, run, print JSON and the table."""
    result = bench(parser().parse_args())
    print(json.dumps(result, indent=2))
    print()
    print(table(result))


if __name__ == "__main__":
    main()
