"""Throughput and alarm latency against offered telemetry load, with a plot.

    .venv/bin/python bench/load_sweep.py [--rates 1000,2000,5000,10000,15000,20000]
                                         [--alarms 60] [--plot bench/load_sweep.png]

On a private Mosquitto (ingest_bench's), one ``trygg run``; for each offered telemetry rate a
paced raw publisher sends QoS 1 telemetry while alarms go one by one (run.py's latency
client). Per rate: the telemetry the gateway ingested per second (its own counter over the
window), the rate the publisher achieved, and device → ack p50/p99 of the alarms. The same
alarms against the bare echo subscriber at each rate are the ceiling. Prints JSON and a
table, and draws both curves (matplotlib, from the test extra) into ``--plot``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import alarm_bench, ingest_bench
from bench.run import _alarm_latency

RATES = (1_000, 2_000, 5_000, 10_000, 15_000, 20_000)


def sweep(rates: tuple[int, ...], alarms: int) -> dict[str, Any]:
    """Every rate against the gateway and against the echo ceiling."""
    points: list[dict[str, Any]] = []
    with ingest_bench.broker() as port, tempfile.TemporaryDirectory() as tmp:
        prefix = f"bench/sweep-echo-{os.getpid()}/trygg/v1"
        echo = subprocess.Popen([sys.executable, alarm_bench.__file__, "--echo", prefix,
                                 str(port)], stdout=subprocess.PIPE)
        assert echo.stdout is not None
        echo.stdout.readline()
        try:
            ceilings = {rate: asyncio.run(_alarm_latency(port, prefix, alarms, rate, None))
                        for rate in rates}
        finally:
            ingest_bench.stop(echo)
        gw = ingest_bench.GatewayUnderTest(Path(tmp), port, "sweep")
        proc = gw.start()
        try:
            ingest_bench.wait_healthy(gw.http_port, proc)
            for rate in rates:
                before = ingest_bench.ingested(ingest_bench.metrics(gw.http_port))
                began = time.time()
                result = asyncio.run(_alarm_latency(port, gw.prefix, alarms, rate, None))
                ended = time.time()
                after = ingest_bench.ingested(ingest_bench.metrics(gw.http_port))
                points.append({
                    "offered_per_s": rate,
                    "publisher_per_s": result["telemetry_per_s"],
                    "ingested_per_s": round((after - before) / (ended - began)),
                    "ack": result["device_to_ack"],
                    "lost_acks": result["lost_acks"],
                    "ceiling_ack": ceilings[rate]["device_to_ack"],
                })
        finally:
            gw.stop()
    return {"alarms_per_point": alarms, "points": points, "load": ingest_bench.load_avg()}


def plot(result: dict[str, Any], path: Path) -> None:
    """Ingested telemetry and alarm latency against offered load (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = result["points"]
    offered = [p["offered_per_s"] for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(offered, [p["ingested_per_s"] for p in points], "o-", label="gateway ingested")
    left.plot(offered, [p["publisher_per_s"] for p in points], "s--", label="publisher achieved")
    left.plot(offered, offered, ":", color="grey", label="offered")
    left.set(xlabel="offered telemetry (msg/s)", ylabel="msg/s",
             title="Telemetry throughput vs offered load")
    left.legend()
    right.plot(offered, [p["ack"]["p50_ms"] for p in points], "o-", label="gateway p50")
    right.plot(offered, [p["ack"]["p99_ms"] for p in points], "o-", label="gateway p99")
    right.plot(offered, [p["ceiling_ack"]["p99_ms"] for p in points], "s--",
               label="bare echo p99 (ceiling)")
    right.set(xlabel="offered telemetry (msg/s)", ylabel="device → ack (ms)",
              title="Alarm latency under telemetry load")
    right.legend()
    fig.suptitle(f"trygg gateway (one process); load average {result['load']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(result: dict[str, Any]) -> str:
    """A markdown summary."""
    rows = ["| offered msg/s | publisher msg/s | ingested msg/s | ack p50 / p99 ms | "
            "echo p50 / p99 ms |", "| --- | --- | --- | --- | --- |"]
    for p in result["points"]:
        rows.append(f"| {p['offered_per_s']:,} | {p['publisher_per_s']:,} | "
                    f"{p['ingested_per_s']:,} | {p['ack']['p50_ms']} / {p['ack']['p99_ms']} | "
                    f"{p['ceiling_ack']['p50_ms']} / {p['ceiling_ack']['p99_ms']} |")
    return "\n".join(rows)


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rates", default=",".join(str(r) for r in RATES))
    parser.add_argument("--alarms", type=int, default=60)
    parser.add_argument("--plot", type=Path, default=Path("bench/load_sweep.png"))
    args = parser.parse_args()
    result = sweep(tuple(int(r) for r in args.rates.split(",")), args.alarms)
    print(json.dumps(result, indent=2))
    print()
    print(table(result))
    plot(result, args.plot)
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
