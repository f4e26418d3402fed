"""Scale-out: 1, 2 and 3 gateways sharing one PostgreSQL journal and one Mosquitto.

    .venv/bin/python bench/cluster_bench.py [--burst-devices 100] [--per-device 10]

On a private Mosquitto (``set_tcp_nodelay true``, ingest_bench's broker) and a throw-away
PostgreSQL database per configuration (127.0.0.1:5432, or ``TRYGG_TEST_PG``), for 1, 2 and
3 ``trygg run`` processes with ``[cluster]`` settings (``$share`` group, lease TTL 2 s):

* paced alarms: ``--paced`` devices raise one alarm each at ``--rate``/s. Device -> ack
  p50/p99 (first send to ack, ``firmware_sim`` timing) and device -> staff WebSocket
  (first send to the first push of that alarm to ``cleo``, connected to the last gateway),
  split by whether the gateway that stored the alarm is the staff client's own or another
  (the cross-gateway path: journal commit -> NOTIFY -> follower -> push);
* burst: ``--burst-devices`` devices raise ``--per-device`` alarms each at once and resend
  (``firmware_sim`` back-off, 1 s doubling to 4 s) until acked. Throughput = alarms /
  (first send .. last ack); also ack p50/p99, resends, lost and stored-twice counts;
* takeover (2 and 3 gateways): SIGKILL of the ``escalation`` lease holder, then the
  survivors' ``/healthz`` is polled every 50 ms until one of them holds the lease.

The ceiling, in the same run and on the same broker: alarm_bench's bare aiomqtt echo
subscriber (acks every alarm at once, stores nothing) under the same paced and burst loads.
All processes share the machine's cores with PostgreSQL and Mosquitto: on a 2-core machine
more gateways mean more competition, not more capacity. Prints JSON, then a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psycopg
import websockets

from bench import alarm_bench, ingest_bench
from firmware_sim import Backoff, DeviceKind, DeviceSpec, Fleet

PG_ADMIN_DSN = os.environ.get("TRYGG_TEST_PG", "host=127.0.0.1 port=5432 dbname=postgres")
LEASE_TTL_S = 2.0
PASSWORD = "bench-password"  # ingest_bench.seed_org's staff password
# Resends of the burst: first after 0.5-1 s, doubling to at most 4 s (firmware_sim Backoff).
RESEND = Backoff(1.0, 4.0)
SETTLE_LIMIT_S = 120.0
TAKEOVER_LIMIT_S = 30.0


@contextlib.contextmanager
def database() -> Iterator[str]:
    """A fresh PostgreSQL database for one configuration; dropped afterwards."""
    name = f"trygg_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield psycopg.conninfo.make_conninfo(PG_ADMIN_DSN, dbname=name)
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def process_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of processes so far (0 for any that is gone)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine so far."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


@dataclass
class Instance:
    """One ``trygg run`` of the cluster."""

    gateway_id: str
    http_port: int
    proc: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def write_config(data_dir: Path, *, gateway_id: str, mqtt_port: int, prefix: str,
                 http_port: int, dsn: str, group: str) -> Path:
    """ingest_bench's TOML plus the shared journal and the ``[cluster]`` table."""
    path = ingest_bench.write_config(data_dir, mqtt_port, prefix, http_port, gateway_id)
    path.write_text(
        f'journal_dsn = "{dsn}"\n' + path.read_text()
        + f'[cluster]\nshared_group = "{group}"\nlease_ttl_s = {LEASE_TTL_S}\n'
    )
    return path


def start_cluster(n: int, directory: Path, mqtt_port: int, prefix: str, dsn: str,
                  devices: list[str]) -> tuple[list[Instance], float]:
    """Start ``n`` seeded gateways side by side; returns them and the start-up seconds."""
    group = f"bench{uuid.uuid4().hex[:6]}"
    instances = []
    for i in range(1, n + 1):
        data_dir = directory / f"gw{i}"
        data_dir.mkdir()
        ingest_bench.seed_org(data_dir, devices, password=PASSWORD)
        http_port = ingest_bench.free_port()
        gateway_id = f"bench-gw{i}-{group}"
        config = write_config(data_dir, gateway_id=gateway_id, mqtt_port=mqtt_port,
                              prefix=prefix, http_port=http_port, dsn=dsn, group=group)
        proc = ingest_bench.start_gateway(config, data_dir / "gateway.log")
        instances.append(Instance(gateway_id, http_port, proc))
    began = time.monotonic()
    for instance in instances:
        ingest_bench.wait_healthy(instance.http_port, instance.proc)
    return instances, time.monotonic() - began


async def staff_client(port: int, first_seen: dict[str, float],
                       ids: dict[str, tuple[str, str]]) -> None:
    """``cleo`` (every device's team): notes when each alarm id is first pushed; confirms it."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        token = (await http.post("/api/v1/auth/token",
                                 data={"username": "cleo", "password": PASSWORD}
                                 )).json()["access_token"]
    async with websockets.connect(f"ws://127.0.0.1:{port}/api/v1/ws?token={token}",
                                  max_size=None) as ws:
        async for raw in ws:
            now = time.monotonic()
            message = json.loads(raw)
            if message["type"] != "alarm":
                continue
            alarm = message["alarm"]
            if alarm["id"] not in ids:
                ids[alarm["id"]] = (alarm["device_id"], alarm["ref"])
                first_seen[alarm["id"]] = now
            if not any(h["hop"] == "delivered" for h in alarm["hops"]):
                await ws.send(json.dumps({"type": "receipt", "alarm_id": alarm["id"]}))


async def load(port: int, prefix: str, args: argparse.Namespace, staff_port: int | None,
               tag: str, pids: list[int]) -> dict[str, Any]:
    """The paced and the burst phase against whatever consumes ``prefix`` on the broker."""
    paced_ids = ingest_bench.device_ids(args.paced, "pac")
    burst_ids = ingest_bench.device_ids(args.burst_devices, "bur")
    specs = [DeviceSpec(d, DeviceKind.ALARM_UNIT) for d in paced_ids + burst_ids]
    first_seen: dict[str, float] = {}
    ids: dict[str, tuple[str, str]] = {}
    staff = None
    if staff_port is not None:
        staff = asyncio.create_task(staff_client(staff_port, first_seen, ids), name="staff")
    fleet = Fleet(specs, port=port, prefix=prefix, seed=1, devices_per_connection=10,
                  heartbeat_s=3600.0, telemetry=False, resend=RESEND,
                  client_id_prefix=f"cluster-bench-{tag}")
    result: dict[str, Any] = {}
    try:
        async with fleet:
            await asyncio.sleep(1.0)  # the staff socket is up, the fleet's heartbeats are in
            paced: list[tuple[str, str]] = []
            for device_id in paced_ids:
                paced.append((device_id, fleet.raise_alarm(device_id)))
                await asyncio.sleep(1.0 / args.rate)
            paced_settled = await fleet.wait_all_acked(SETTLE_LIMIT_S)
            await asyncio.sleep(1.0)  # the last pushes
            paced_results = {(a.device_id, a.ref): a for a in fleet.alarms()}
            burst: list[tuple[str, str]] = []
            cpu_before, (busy_before, total_before) = process_cpu_s(pids), machine_jiffies()
            for _ in range(args.per_device):
                for device_id in burst_ids:
                    burst.append((device_id, fleet.raise_alarm(device_id)))
            burst_settled = await fleet.wait_all_acked(SETTLE_LIMIT_S)
            cpu_s = process_cpu_s(pids) - cpu_before
            busy, total = machine_jiffies()
            stats = fleet.stats()
            every = {(a.device_id, a.ref): a for a in fleet.alarms()}
    finally:
        if staff is not None:
            staff.cancel()
            await asyncio.gather(staff, return_exceptions=True)
    acks = [paced_results[k].latency_s for k in paced]
    result["paced"] = {
        "alarms": len(paced), "rate_per_s": args.rate, "settled": paced_settled,
        "device_to_ack": alarm_bench.percentiles([x for x in acks if x is not None]),
    }
    if staff_port is not None:
        sent = {k: paced_results[k].sent_at for k in paced}
        by_key = {key: first_seen[alarm_id] for alarm_id, key in ids.items()}
        pushes = {k: by_key[k] - s for k, s in sent.items() if k in by_key and s is not None}
        result["paced"]["pushes"] = pushes  # split by storing gateway by the caller
        result["paced"]["device_to_staff"] = alarm_bench.percentiles(list(pushes.values()))
        result["paced"]["not_pushed"] = len(paced) - len(pushes)
    done = [every[k] for k in burst]
    sends = [a.sent_at for a in done if a.sent_at is not None]
    acked = [a.acked_at for a in done if a.acked_at is not None]
    window = (max(acked) - min(sends)) if sends and acked else None
    stored = sum(1 for a in done if a.status == "stored")
    result["burst"] = {
        "alarms": len(burst), "devices": len(burst_ids), "settled": burst_settled,
        "acked_stored": stored,
        "seconds": None if window is None else round(window, 3),
        "per_s": None if window is None else round(stored / window, 1),
        "device_to_ack": alarm_bench.percentiles(
            [a.latency_s for a in done if a.latency_s is not None]),
        "sends": sum(a.sends for a in done),
        "fleet": {"resends": stats.resends, "duplicate_acks": stats.duplicate_acks},
        # CPU of the consumers (gateways or echo) during the burst, and of the whole machine
        # (every core: 1.0 = all of them busy), from the first raise to the last ack.
        "consumer_cpu_s": round(cpu_s, 2),
        "machine_busy": round((busy - busy_before) / max(1, total - total_before), 3),
    }
    result["keys"] = {k for k, a in every.items() if a.status == "stored"}
    result["not_acked_stored"] = sum(1 for a in every.values() if a.status != "stored")
    return result


def journal_check(dsn: str, keys: set[tuple[str, str]]) -> dict[str, Any]:
    """Claims per (device, ref) in the shared journal, and which gateway stored each."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT device_id, ref, gateway_id FROM trygg_alarm_refs").fetchall()
    claims: dict[tuple[str, str], list[str]] = {}
    for device_id, ref, gateway_id in rows:
        claims.setdefault((str(device_id), str(ref)), []).append(str(gateway_id))
    # Claims that are not the fleet's alarms: technical alarms the gateways raised, by kind
    # (``undelivered.<id>``: no phone confirmed an alarm within delivery_timeout_s).
    others = Counter(key[1].split(".", 1)[0] for key in claims if key not in keys)
    return {
        "lost": sum(1 for k in keys if k not in claims),
        "stored_twice": sum(1 for k in keys if len(claims.get(k, [])) > 1),
        "technical_claims": dict(others),
        "stored_by": {k: v[0] for k, v in claims.items()},
    }


def metric_sums(instances: list[Instance], names: list[str]) -> dict[str, float | None]:
    """Counters summed over the instances (None if one did not answer /metrics in 10 s)."""
    scraped = [ingest_bench.metrics(i.http_port, timeout=10.0) for i in instances]
    if not all(scraped):
        return dict.fromkeys(names)
    return {name: sum(values.get(name, 0.0) for values in scraped) for name in names}


def health(client: httpx.Client, instance: Instance) -> dict[str, Any]:
    try:
        body: dict[str, Any] = client.get(f"{instance.base}/healthz", timeout=5.0).json()
    except (httpx.HTTPError, ValueError):
        return {}
    return body


def takeover(instances: list[Instance], dsn: str) -> dict[str, Any]:
    """SIGKILL the escalation lease holder; poll the survivors' /healthz every 50 ms."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT owner FROM trygg_leases WHERE name = 'escalation'"
                           " AND expires_at > clock_timestamp()").fetchone()
    holder = next((i for i in instances if row is not None and i.gateway_id == row[0]), None)
    if holder is None:
        return {"error": f"no instance holds the escalation lease ({row})"}
    survivors = [i for i in instances if i is not holder]
    with httpx.Client() as client:
        killed = time.monotonic()
        holder.proc.send_signal(signal.SIGKILL)
        holder.proc.wait()
        polls = 0
        while time.monotonic() - killed < TAKEOVER_LIMIT_S:
            polls += 1
            for survivor in survivors:
                leases = health(client, survivor).get("cluster", {}).get("leases", [])
                if "escalation" in leases:
                    return {"seconds": round(time.monotonic() - killed, 3), "polls": polls,
                            "bound_s": round(LEASE_TTL_S * 4 / 3, 3)}
            time.sleep(0.05)
    return {"error": f"no takeover within {TAKEOVER_LIMIT_S} s"}


def run_cluster(n: int, mqtt_port: int, args: argparse.Namespace) -> dict[str, Any]:
    """One configuration: n gateways on a fresh database."""
    result: dict[str, Any] = {"instances": n, "load_before": ingest_bench.load_avg()}
    prefix = f"bench/cluster{n}-{uuid.uuid4().hex[:6]}/trygg/v1"
    devices = (ingest_bench.device_ids(args.paced, "pac")
               + ingest_bench.device_ids(args.burst_devices, "bur"))
    with database() as dsn, tempfile.TemporaryDirectory() as tmp:
        instances, started = start_cluster(n, Path(tmp), mqtt_port, prefix, dsn, devices)
        result["start_s"] = round(started, 2)
        try:
            staff_at = instances[-1]
            out = asyncio.run(load(mqtt_port, prefix, args, staff_at.http_port, f"c{n}",
                                   [i.proc.pid for i in instances]))
            sums = metric_sums(instances, [
                "trygg_journal_commit_seconds_count", "trygg_journal_commit_seconds_sum",
                "trygg_stale_decisions_total", "trygg_duplicate_alarms_total"])
            commits = sums["trygg_journal_commit_seconds_count"]
            seconds = sums["trygg_journal_commit_seconds_sum"]
            result["journal_commits"] = commits
            result["journal_commit_mean_ms"] = (
                None if commits is None or seconds is None
                else round(1000 * seconds / max(1.0, commits), 2))
            result["stale_decisions"] = sums["trygg_stale_decisions_total"]
            result["duplicate_alarms"] = sums["trygg_duplicate_alarms_total"]
            pushes: dict[tuple[str, str], float] = out["paced"].pop("pushes")
            check = journal_check(dsn, out.pop("keys"))
            stored_by: dict[tuple[str, str], str] = check.pop("stored_by")
            local = [v for k, v in pushes.items() if stored_by.get(k) == staff_at.gateway_id]
            remote = [v for k, v in pushes.items()
                      if k in stored_by and stored_by[k] != staff_at.gateway_id]
            out["paced"]["device_to_staff_same_gateway"] = alarm_bench.percentiles(local)
            out["paced"]["device_to_staff_other_gateway"] = alarm_bench.percentiles(remote)
            result.update(out)
            result["journal"] = check
            result["stored_per_gateway"] = {
                g.gateway_id: sum(1 for v in stored_by.values() if v == g.gateway_id)
                for g in instances}
            if n > 1:
                result["takeover"] = takeover(instances, dsn)
        finally:
            for instance in instances:
                ingest_bench.stop(instance.proc)
            if args.logs is not None:
                args.logs.mkdir(parents=True, exist_ok=True)
                for i, instance in enumerate(instances, 1):
                    log = Path(tmp) / f"gw{i}" / "gateway.log"
                    (args.logs / f"{n}-{instance.gateway_id}.log").write_bytes(log.read_bytes())
    result["load_after"] = ingest_bench.load_avg()
    return result


def run_ceiling(mqtt_port: int, args: argparse.Namespace) -> dict[str, Any]:
    """alarm_bench's bare echo subscriber under the same loads (no staff client)."""
    prefix = f"bench/echo-{uuid.uuid4().hex[:6]}/trygg/v1"
    echo = subprocess.Popen([sys.executable, alarm_bench.__file__, "--echo", prefix,
                             str(mqtt_port)], stdout=subprocess.PIPE)
    assert echo.stdout is not None
    echo.stdout.readline()
    try:
        result: dict[str, Any] = {"load_before": ingest_bench.load_avg()}
        result.update(asyncio.run(load(mqtt_port, prefix, args, None, "echo", [echo.pid])))
        del result["keys"]
        result["load_after"] = ingest_bench.load_avg()
        return result
    finally:
        ingest_bench.stop(echo)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """The ceiling and 1..3 gateways on one private broker."""
    results: dict[str, Any] = {
        "paced": args.paced, "rate": args.rate, "burst_devices": args.burst_devices,
        "per_device": args.per_device, "lease_ttl_s": LEASE_TTL_S, "cpus": os.cpu_count(),
    }
    with ingest_bench.broker() as port:
        results["broker"] = f"private mosquitto 127.0.0.1:{port}, set_tcp_nodelay true"
        results["ceiling_echo"] = run_ceiling(port, args)
        for n in args.instances:
            try:
                results[f"gateways_{n}"] = run_cluster(n, port, args)
            except Exception as exc:  # one broken configuration must not lose the others
                results[f"gateways_{n}"] = {"error": repr(exc)}
    return results


def _p(data: dict[str, Any], *path: str) -> str:
    node: Any = data
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return "—"
        node = node[key]
    if not isinstance(node, dict) or not node.get("n"):
        return "—"
    return f"{node['p50_ms']:.1f} / {node['p99_ms']:.1f}"


def table(results: dict[str, Any]) -> str:
    """Markdown: one column per configuration, the echo ceiling first."""
    columns = [("echo ceiling", results.get("ceiling_echo", {}))]
    columns += [(f"{k.split('_')[1]} gateway(s)", v) for k, v in results.items()
                if k.startswith("gateways_")]
    rows = ["| figure | " + " | ".join(c for c, _ in columns) + " |",
            "| --- |" + " --- |" * len(columns)]

    def add(label: str, values: list[str]) -> None:
        rows.append(f"| {label} | " + " | ".join(values) + " |")

    burst = f"{results['burst_devices'] * results['per_device']:,} alarms"
    add(f"burst throughput, alarms stored+acked/s ({burst}, "
        f"{results['burst_devices']} devices, resends)",
        [str(_get(d, "burst", "per_s")) for _, d in columns])
    add("burst: first send → last ack, s", [str(_get(d, "burst", "seconds")) for _, d in columns])
    add("burst: device → ack p50 / p99 ms", [_p(d, "burst", "device_to_ack") for _, d in columns])
    add("burst: sends per alarm (resends)", [
        "—" if not _get(d, "burst", "alarms") else
        f"{_get(d, 'burst', 'sends') / _get(d, 'burst', 'alarms'):.2f}" for _, d in columns])
    add(f"paced ({results['rate']:g}/s): device → ack p50 / p99 ms",
        [_p(d, "paced", "device_to_ack") for _, d in columns])
    add("paced: device → staff WebSocket p50 / p99 ms",
        [_p(d, "paced", "device_to_staff") for _, d in columns])
    add("… stored by the staff client's own gateway",
        [_p(d, "paced", "device_to_staff_same_gateway") for _, d in columns])
    add("… stored by another gateway (journal → NOTIFY → follower → push)",
        [_p(d, "paced", "device_to_staff_other_gateway") for _, d in columns])
    add("takeover: SIGKILL of escalation holder → survivor holds it, s",
        [str(_get(d, "takeover", "seconds")) for _, d in columns])
    add("lost / stored twice (journal claims)",
        [f"{_get(d, 'journal', 'lost')} / {_get(d, 'journal', 'stored_twice')}"
         if "journal" in d else "—" for _, d in columns])
    add("stale decisions redone / resends recognised",
        [f"{_n(d.get('stale_decisions'))} / {_n(d.get('duplicate_alarms'))}"
         if "stale_decisions" in d else "—" for _, d in columns])
    add("technical alarms raised meanwhile (by kind)",
        [", ".join(f"{k} {v}" for k, v in _get(d, "journal", "technical_claims").items()) or "0"
         if "journal" in d else "—" for _, d in columns])
    add("burst: CPU s of the consumer process(es) / machine busy (all cores)", [
        f"{_get(d, 'burst', 'consumer_cpu_s')} / {_get(d, 'burst', 'machine_busy')}"
        for _, d in columns])
    add("journal commits (whole run) / mean commit ms", [
        f"{_n(d.get('journal_commits'))} / {_n(d.get('journal_commit_mean_ms'), 1)}"
        if "journal_commits" in d else "—" for _, d in columns])
    add("start-up → all /healthz 200, s", [str(d.get("start_s", "—")) for _, d in columns])
    add("load (1-min) before / after", [
        f"{str(d.get('load_before', '?')).split()[0]} / {str(d.get('load_after', '?')).split()[0]}"
        for _, d in columns])
    return "\n".join(rows)


def _n(value: float | None, digits: int = 0) -> str:
    return "unreachable" if value is None else f"{value:,.{digits}f}"


def _get(data: dict[str, Any], *path: str) -> Any:
    node: Any = data
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return "—"
        node = node[key]
    return node


def parser() -> argparse.ArgumentParser:
    """The command line (``run.py`` reuses the defaults)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--paced", type=int, default=150, help="paced alarms (one per device)")
    p.add_argument("--rate", type=float, default=15.0, help="paced alarms per second")
    p.add_argument("--burst-devices", type=int, default=100, help="devices in the burst")
    p.add_argument("--per-device", type=int, default=10, help="burst alarms per device")
    p.add_argument("--instances", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 2, 3], help="comma-separated gateway counts")
    p.add_argument("--logs", type=Path, help="keep the gateways' logs in this directory")
    return p


def main() -> None:
    """Parse arguments, run, print JSON and the table."""
    result = bench(parser().parse_args())
    print(json.dumps(result, indent=2, default=str))
    print()
    print(table(result))


if __name__ == "__main__":
    main()
