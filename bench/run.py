"""The benchmark suite: ONE command, every figure next to its ceiling from the same run.

    .venv/bin/python bench/run.py [--quick] [--profile DIR] [--only ingest,latency,...]

Sections (each its own module, reused here; every network figure on a private Mosquitto
with ``set_tcp_nodelay true`` and a deep ``max_queued_messages``):

* ``ingest`` (ingest_bench): telemetry through the whole gateway vs bare subscribers, live
  and as a backlog drain; the publishers' achieved rate is reported too;
* ``latency`` (alarm_bench's clients): alarm device -> ack and device -> staff WebSocket,
  p50/p99/max, under 2,000 telemetry msg/s, vs alarm_bench's bare echo subscriber;
* ``recovery`` (recovery_bench): SIGKILL under load: time until alarms are acked again,
  lost and duplicate alarms;
* ``supervision`` (supervision_bench): 100,000 devices: memory, ``seen()`` rate (vs a plain
  dict store), offline detection delay (vs a coarse 30 s tick);
* ``core`` (core_bench): ``AlarmCore`` decide + apply per second, in-process;
* ``shell`` (shell_bench): SIGKILL → first ack next to ``python -c pass``; ``/healthz`` during a
  backlog drain;
* ``storm`` (storm_bench): an alarm storm (every device with an alarm and a status at once)
  on SQLite and PostgreSQL vs a bare paho echo, CPU per alarm;
* ``cluster`` (cluster_bench): 1, 2 and 3 gateways on one PostgreSQL journal: burst
  throughput, paced latency to ack and to a staff client, takeover after SIGKILL, vs
  alarm_bench's bare echo subscriber.

Prints the JSON of every section, then one markdown table. The machine's load average is
recorded before and after each section: other work on a shared machine moves every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiomqtt

from bench import (
    alarm_bench,
    cluster_bench,
    core_bench,
    ingest_bench,
    recovery_bench,
    shell_bench,
    storm_bench,
    supervision_bench,
)

SECTIONS = ("ingest", "latency", "shell", "storm", "recovery", "supervision", "core",
            "cluster")


def ingest(args: argparse.Namespace) -> dict[str, Any]:
    """Ingest throughput, live and backlog, vs bare subscribers."""
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        ingest_bench.PROFILE_DIR.append(args.profile.resolve())
    messages = 20_000 if args.quick else 60_000
    result: dict[str, Any] = ingest_bench.bench(messages, publishers=1, backlog=messages)
    # The same with QoS 0 telemetry (devices that may lose a sample for less overhead).
    os.environ["INGEST_QOS"] = "0"
    try:
        result["qos0"] = ingest_bench.bench(messages, publishers=1, backlog=messages)
    finally:
        os.environ.pop("INGEST_QOS", None)
    return result


def latency(args: argparse.Namespace) -> dict[str, Any]:
    """Alarm latency at 2,000 telemetry msg/s: alarm_bench's clients, a bounded load.

    alarm_bench's echo ceiling, staff client, seeding and percentiles are reused as they are.
    Its telemetry load is not: the aiomqtt publisher (20 messages in flight) cannot keep up
    with 2,000 QoS 1 msg/s on this machine, queues the rest inside the client and, after its
    35 s, spends minutes draining that queue (seen: still publishing 5 minutes in), so
    ``main()`` never returns in time. The paced raw writer of ingest_bench replaces it and
    reports the rate it achieved.
    """
    alarms = 100 if args.quick else 400
    rate = 2000
    result: dict[str, Any] = {"alarms": alarms, "telemetry_rate": rate}
    with ingest_bench.broker() as port, tempfile.TemporaryDirectory() as tmp:
        result["broker"] = f"private mosquitto 127.0.0.1:{port}, set_tcp_nodelay true"
        prefix = f"bench/echo-{os.getpid()}/trygg/v1"
        echo = subprocess.Popen([sys.executable, alarm_bench.__file__, "--echo", prefix,
                                 str(port)], stdout=subprocess.PIPE)
        assert echo.stdout is not None
        echo.stdout.readline()
        try:
            result["ceiling_echo"] = asyncio.run(_alarm_latency(port, prefix, alarms, rate, None))
        finally:
            ingest_bench.stop(echo)
        data_dir = Path(tmp)
        alarm_bench.seed(data_dir)
        ingest_bench.seed_org(data_dir, ingest_bench.device_ids())
        http_port = ingest_bench.free_port()
        prefix = f"bench/latency-{os.getpid()}/trygg/v1"
        config = ingest_bench.write_config(data_dir, port, prefix, http_port, "bench-latency")
        gateway = ingest_bench.start_gateway(config, data_dir / "gateway.log")
        try:
            ingest_bench.wait_healthy(http_port, gateway)
            result["gateway"] = asyncio.run(_alarm_latency(port, prefix, alarms, rate, http_port))
            values = ingest_bench.metrics(http_port)
            result["gateway"]["telemetry_ingested"] = ingest_bench.ingested(values)
        finally:
            ingest_bench.stop(gateway)
    return result


async def _alarm_latency(port: int, prefix: str, alarms: int, rate: int,
                         staff_port: int | None) -> dict[str, Any]:
    """alarm_bench.measure with the bounded load: alarms one by one (~20/s) under load."""
    ack_lat: list[float] = []
    staff_lat: list[float] = []
    sent_at: dict[str, float] = {}
    acked: dict[str, asyncio.Future[None]] = {}
    duration = 3.0 + alarms * 0.08
    load = ingest_bench.spawn_publisher(port, prefix, int(rate * duration), 0, rate)
    staff_task = None
    if staff_port is not None:
        staff_task = asyncio.create_task(
            alarm_bench.staff_client(staff_port, sent_at, staff_lat), name="staff client")
        await asyncio.sleep(1.0)
    # Each alarm from another device of its own recipient: alarms of one recipient attach to
    # the open one (RECOMMENDED_POLICY), and staff would only ever see the first as new.
    devices = ingest_bench.device_ids()
    async with aiomqtt.Client("127.0.0.1", port, socket_options=alarm_bench.NODELAY) as device:
        await device.subscribe(f"{prefix}/+/ack", qos=1)

        async def listen() -> None:
            async for message in device.messages:
                assert isinstance(message.payload, bytes)
                ref = json.loads(message.payload)["ref"]
                if ref in acked and not acked[ref].done():
                    ack_lat.append(time.perf_counter() - sent_at[ref])
                    acked[ref].set_result(None)

        listener = asyncio.create_task(listen(), name="ack listener")
        await asyncio.sleep(1.0)
        for n in range(alarms):
            ref = f"bench-{os.getpid()}-{n}"
            acked[ref] = asyncio.get_running_loop().create_future()
            body = json.dumps({"ref": ref, "ts": int(time.time() * 1000), "type": "manual"})
            sent_at[ref] = time.perf_counter()
            await device.publish(f"{prefix}/{devices[n % len(devices)]}/alarm", body, qos=1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(acked[ref], 10)
            await asyncio.sleep(0.05)
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    out, _ = await asyncio.to_thread(load.communicate, None, duration + 60)
    report = json.loads(out)
    if staff_task is not None:
        staff_task.cancel()
        await asyncio.gather(staff_task, return_exceptions=True)
    result: dict[str, Any] = {
        "device_to_ack": alarm_bench.percentiles(ack_lat),
        "lost_acks": alarms - len(ack_lat),
        "telemetry_sent": report["acked"],
        "telemetry_per_s": round(report["acked"] / max(1e-9, report["t1"] - report["t0"])),
    }
    if staff_port is not None:
        result["device_to_staff"] = alarm_bench.percentiles(staff_lat)
    return result


def recovery(args: argparse.Namespace) -> dict[str, Any]:
    """SIGKILL under load."""
    options = recovery_bench.parser().parse_args(["--after", "5"] if args.quick else [])
    result: dict[str, Any] = recovery_bench.bench(options)
    return result


def supervision(args: argparse.Namespace) -> dict[str, Any]:
    """Supervision of 100,000 devices (supervision_bench's measurements)."""
    sb = supervision_bench
    n = 100_000
    beats = 200_000 if args.quick else 1_000_000
    devices = sb.fleet(n, random.Random(1))
    rss = sb.measure_rss(devices)
    memory = sb.measure_memory(devices)
    throughput = sb.measure_throughput(devices, beats)
    timeline = sb.make_timeline(devices, 20.0, dead_share=0.01)
    exact = sb.simulate(devices, timeline, 20.0, tick=None)
    coarse = sb.simulate(devices, timeline, 20.0, tick=sb.COARSE_TICK_S)
    live = asyncio.run(sb.live(2000, 4.0))
    return {"devices": n, "memory": memory, "rss": rss, "throughput": throughput,
            "ceiling_dict_store_per_s": dict_store_rate(devices, beats),
            "simulated_exact_timer": exact, "simulated_coarse_tick_30s": coarse,
            "live_asyncio": live}


def dict_store_rate(devices: list[tuple[str, str]], beats: int) -> float:
    """The ceiling for ``seen()``: storing the time in a plain dict, same stream shape."""
    rng = random.Random(2)
    ids = [d for d, _ in devices]
    stream = [rng.choice(ids) for _ in range(beats)]
    last: dict[str, float] = dict.fromkeys(ids, 0.0)
    now = supervision_bench.T0
    step = 60.0 / len(devices)
    began = time.perf_counter()
    for device_id in stream:
        now += step
        last[device_id] = now
    return beats / (time.perf_counter() - began)


def core(args: argparse.Namespace) -> dict[str, Any]:
    """AlarmCore decisions per second."""
    result: dict[str, Any] = core_bench.bench(5_000 if args.quick else 20_000,
                                              1_000 if args.quick else 3_000, 20, 5)
    return result


def cluster(args: argparse.Namespace) -> dict[str, Any]:
    """Scale-out: 1, 2 and 3 gateways on one PostgreSQL journal (cluster_bench)."""
    quick = ["--paced", "60", "--per-device", "5"] if args.quick else []
    result: dict[str, Any] = cluster_bench.bench(cluster_bench.parser().parse_args(quick))
    return result


def shell(args: argparse.Namespace) -> dict[str, Any]:
    """Restart to first ack; /healthz during a backlog drain (shell_bench)."""
    if args.quick:
        return shell_bench.bench(backlog=10_000, restarts=3)
    return shell_bench.bench()


def storm(args: argparse.Namespace) -> dict[str, Any]:
    """An alarm storm on SQLite and PostgreSQL (storm_bench)."""
    return storm_bench.bench(devices=2_000 if args.quick else 10_000)


RUNNERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "ingest": ingest, "latency": latency, "shell": shell, "storm": storm, "recovery": recovery,
    "supervision": supervision, "core": core, "cluster": cluster,
}


def _get(data: dict[str, Any], *path: str) -> Any:
    node: Any = data
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _n(value: Any, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, float | int):
        text = f"{value:,.{digits}f}"
        return f"{text} {unit}".strip()
    return str(value)


def table(results: dict[str, Any]) -> str:
    """One markdown table: figure | value | ceiling (same run) | goal | load."""
    rows = ["| figure | value | ceiling, same run | goal | load (1-min) before/after |",
            "| --- | --- | --- | --- | --- |"]

    def add(figure: str, value: str, ceiling: str, goal: str, section: str) -> None:
        if section not in results:  # not run (--only): no row of dashes
            return
        data = results[section]
        load = f"{data.get('_load_before', '?')} / {data.get('_load_after', '?')}"
        rows.append(f"| {figure} | {value} | {ceiling} | {goal} | {load} |")

    ingest_results = results.get("ingest", {})
    for i, mode, label in (
        (ingest_results, "live", "QoS 1 live"),
        (ingest_results, "backlog_drain", "QoS 1 backlog drain"),
        # No QoS 0 backlog: a broker keeps no QoS 0 message for a subscriber that is away.
        (ingest_results.get("qos0", {}), "live", "QoS 0 live"),
    ):
        gw = _get(i, mode, "gateway") or {}
        add(f"ingest {label}: gateway msg/s (publishers achieved "
            f"{_n(_get(gw, 'publishers', 'per_s'))}/s)",
            _n(gw.get("per_s")) + (f" (shed {_n(gw.get('telemetry_shed'))})"
                                   if gw.get("telemetry_shed") else ""),
            f"aiomqtt {_n(_get(i, mode, 'ceiling_aiomqtt', 'per_s'))}, paho "
            f"{_n(_get(i, mode, 'ceiling_paho', 'per_s'))} "
            f"(gateway = {_n(_get(i, mode, 'gateway_vs_paho_ceiling'), '', 2)} of paho)",
            "≥ 90 % of paho" + ("; ≥ 20,000 msg/s" if mode == "backlog_drain" else ""),
            "ingest")
    lat = results.get("latency", {})
    for path, label in ((("gateway", "device_to_ack"), "alarm device → ack"),
                        (("gateway", "device_to_staff"), "alarm device → staff WebSocket")):
        p = _get(lat, *path) or {}
        c = _get(lat, "ceiling_echo", "device_to_ack") or {}
        add(f"{label} p50/p99/max ms (n={p.get('n')}, telemetry achieved "
            f"{_n(_get(lat, 'gateway', 'telemetry_per_s'))} msg/s)",
            f"{p.get('p50_ms')} / {p.get('p99_ms')} / {p.get('max_ms')}",
            f"echo {c.get('p50_ms')} / {c.get('p99_ms')} / {c.get('max_ms')}", "", "latency")
    r = results.get("recovery", {})
    add("recovery: SIGKILL → first ack of a new alarm",
        _n(r.get("recovery_s"), "s", 2),
        f"process start → /healthz {_n(r.get('restart_to_healthy_s'), 's', 2)}", "< 2 s",
        "recovery")
    add(f"recovery: alarms lost / stored twice (of {r.get('alarms')})",
        f"{r.get('lost')} / {r.get('duplicates')}", "", "0 / 0", "recovery")
    s = results.get("supervision", {})
    add("supervision: 100,000 devices, supervisor memory",
        _n((_get(s, "memory", "supervisor_bytes") or 0) / 2**20, "MiB", 1), "", "", "supervision")
    add("supervision: seen() per second", _n(_get(s, "throughput", "seen_per_s")),
        f"dict store {_n(s.get('ceiling_dict_store_per_s'))}/s", "", "supervision")
    add("supervision: offline detection delay p99 (simulated, exact timer)",
        _n(_get(s, "simulated_exact_timer", "delay_p99_s"), "s", 3),
        f"30 s tick: {_n(_get(s, 'simulated_coarse_tick_30s', 'delay_p99_s'), 's', 1)}", "",
        "supervision")
    add("supervision: offline detection delay p99 (live asyncio, 2,000 devices)",
        _n(_get(s, "live_asyncio", "delay_p99_ms"), "ms", 2), "", "", "supervision")
    c = results.get("core", {})
    for key, label in (("new_alarms", "core: new alarm (steady state) decide+apply /s"),
                       ("staff_actions", "core: staff action decide+apply /s"),
                       ("resends", "core: resend (dedup) decide /s"),
                       ("pileup_last_tenth", f"core: new alarm with ~{c.get('pile')} open /s")):
        add(label, _n(_get(c, key, "per_s")), "in-process, no I/O", "", "core")
    sh = results.get("shell", {})
    if "restart" in sh:
        r, h = sh["restart"], sh["healthz_drain"]
        add("SIGKILL → first ack of a new alarm (median)",
            _n(_get(r, "kill_to_first_ack_s", "median"), "s", 3),
            f"python -c pass {r.get('python_c_pass_s')} s", "≤ 0.7 s", "shell")
        add(f"/healthz p50/p99/max ms during a {h.get('backlog'):,}-message drain",
            " / ".join(str(_get(h, "during_drain", "healthz_ms", k)) for k in ("p50", "p99", "max")),
            "no backlog: " + " / ".join(str(_get(h, "no_backlog", "healthz_ms", k))
                                        for k in ("p50", "p99", "max")), "", "shell")
    st = results.get("storm", {})
    for journal, goal in (("sqlite", "≥ 5,000/s"), ("postgres", "≥ 2,000/s")):
        if journal in st:
            add(f"storm of {_n(st.get('devices'))} alarms + statuses, {journal}: stored+acked/s "
                "(CPU ms/alarm)", f"{_n(_get(st, journal, 'alarms_per_s'))} "
                f"({_get(st, journal, 'cpu_ms_per_alarm')})",
                f"paho echo {_n(_get(st, 'ceiling_paho_echo', 'alarms_per_s'))}/s", goal, "storm")
    cl = results.get("cluster", {})
    echo = _get(cl, "ceiling_echo", "burst", "per_s")
    for n in (1, 2, 3):
        g = cl.get(f"gateways_{n}") or {}
        add(f"cluster, {n} gateway(s): burst alarms stored+acked/s; paced device → staff "
            "p50/p99 ms", f"{_n(_get(g, 'burst', 'per_s'))}; "
            f"{_get(g, 'paced', 'device_to_staff', 'p50_ms')} / "
            f"{_get(g, 'paced', 'device_to_staff', 'p99_ms')}",
            f"echo {_n(echo)}/s", "", "cluster")
    add("cluster: SIGKILL of escalation lease holder → survivor holds it (2 / 3 gateways)",
        f"{_n(_get(cl, 'gateways_2', 'takeover', 'seconds'), 's', 2)} / "
        f"{_n(_get(cl, 'gateways_3', 'takeover', 'seconds'), 's', 2)}",
        f"bound TTL·4/3 = {_n(cluster_bench.LEASE_TTL_S * 4 / 3, 's', 2)}", "", "cluster")
    return "\n".join(rows)


def main() -> None:
    """Run the chosen sections, print JSON and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--profile", type=Path, help="py-spy the gateway under ingest load")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    for name in chosen:
        before = ingest_bench.load_avg().split()[0]
        began = time.monotonic()
        print(f"[run.py] {name} ...", file=sys.stderr, flush=True)
        try:
            section = RUNNERS[name](args)
        except Exception:  # one broken section must not lose the others' figures
            section = {"error": traceback.format_exc()}
            print(section["error"], file=sys.stderr)
        section["_load_before"] = before
        section["_load_after"] = ingest_bench.load_avg().split()[0]
        section["_seconds"] = round(time.monotonic() - began, 1)
        results[name] = section
    print(json.dumps(results, indent=2, default=str))
    print()
    print(table(results))


if __name__ == "__main__":
    main()
