"""The self-supervising shell under stress: restart to first ack, /healthz during a drain.

    .venv/bin/python bench/shell_bench.py [--backlog 40000] [--restarts 5]

On a private Mosquitto (ingest_bench's: no-delay, a deep queue per session):

* ``restart``: a running ``trygg run`` gets SIGKILL and is started again at once; a device
  publishes a new alarm (a new ref) every 10 ms from the kill on, and the figure is the time
  from the kill to the first ack of an alarm raised after it (only the new process can send
  that). Next to it, in the same run: ``python -c pass`` (the interpreter alone) and
  ``python -c "import gateway.runtime"`` (stage 1's imports), medians over the restarts;
* ``healthz_drain``: the gateway's telemetry session gets a backlog of ``--backlog``
  messages while the gateway is down; it is started and ``/healthz`` is asked every 50 ms
  until the backlog is drained. Reported: the time to the first 200, the latency of every
  ``/healthz`` answer during the drain (p50/p99/max), the drain's rate — against the same
  gateway started with no backlog.

Prints JSON, then a markdown table. Importable: ``run.py`` calls ``bench()``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiomqtt
import httpx

from bench.ingest_bench import (
    PYTHON,
    GatewayUnderTest,
    broker,
    device_ids,
    ingested,
    load_avg,
    metrics,
    publish,
    wait_healthy,
)
from firmware_sim import percentile

ROOT = Path(__file__).resolve().parent.parent


def _run_s(*argv: str) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - started


async def _first_ack_after(port: int, prefix: str, device: str, since: float,
                           limit_s: float = 30.0) -> float:
    """Publish new alarms every 10 ms; seconds from ``since`` to the first ack of one."""
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-prober-{time.time_ns()}"
                              ) as client:
        await client.subscribe(f"{prefix}/{device}/ack", qos=1)
        acked = asyncio.get_running_loop().create_future()

        async def listen() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                if json.loads(message.payload).get("status") == "stored" and not acked.done():
                    acked.set_result(time.perf_counter())

        listener = asyncio.create_task(listen())
        try:
            n = 0
            async with asyncio.timeout(limit_s):
                while not acked.done():
                    body = {"ref": f"probe{n}", "ts": int(time.time() * 1000), "type": "manual"}
                    await client.publish(f"{prefix}/{device}/alarm", json.dumps(body), qos=1)
                    n += 1
                    await asyncio.wait({acked}, timeout=0.01)
            return float(acked.result()) - since
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)


def restart(restarts: int) -> dict[str, Any]:
    """SIGKILL → first ack of a new alarm, next to the interpreter's own start-up."""
    python = [_run_s(PYTHON, "-c", "pass") for _ in range(restarts)]
    imports = [_run_s(PYTHON, "-c", "import gateway.runtime") for _ in range(restarts)]
    figures: list[float] = []
    with broker() as port, tempfile.TemporaryDirectory() as tmp:
        gw = GatewayUnderTest(Path(tmp), port, "restart")
        device = device_ids()[0]
        proc = gw.start()
        try:
            wait_healthy(gw.http_port, proc)
            for _ in range(restarts):
                assert gw.proc is not None
                killed = time.perf_counter()
                gw.proc.send_signal(signal.SIGKILL)
                gw.proc.wait()
                gw.start()
                figures.append(asyncio.run(_first_ack_after(port, gw.prefix, device, killed)))
                wait_healthy(gw.http_port, gw.proc)
        finally:
            gw.stop()
    return {
        "restarts": restarts,
        "kill_to_first_ack_s": {"median": round(statistics.median(figures), 3),
                                "min": round(min(figures), 3), "max": round(max(figures), 3),
                                "all": [round(f, 3) for f in figures]},
        "python_c_pass_s": round(statistics.median(python), 3),
        "import_gateway_runtime_s": round(statistics.median(imports), 3),
    }


def _drain(gw: GatewayUnderTest, total: int) -> dict[str, Any]:
    """Start the gateway and ask /healthz every 50 ms until ``total`` are ingested."""
    started = time.perf_counter()
    proc = gw.start()
    latencies: list[float] = []
    first_ok: float | None = None
    drained_at: float | None = None
    limit = started + 300
    with httpx.Client(timeout=10) as client:
        while time.perf_counter() < limit and proc.poll() is None:
            asked = time.perf_counter()
            try:
                answer = client.get(f"http://127.0.0.1:{gw.http_port}/healthz")
            except httpx.HTTPError:
                time.sleep(0.05)
                continue
            now = time.perf_counter()
            latencies.append(now - asked)
            if answer.status_code == 200 and first_ok is None:
                first_ok = now - started
            if total == 0 or ingested(metrics(gw.http_port, timeout=5)) >= total:
                drained_at = now - started
                if first_ok is not None:
                    break
            time.sleep(0.05)
    gw.stop()
    ms = sorted(x * 1000 for x in latencies)
    return {
        "first_healthy_s": None if first_ok is None else round(first_ok, 3),
        "drained_s": None if drained_at is None else round(drained_at, 3),
        "healthz_answers": len(ms),
        "healthz_ms": {"p50": round(percentile(ms, 50) or 0.0, 2),
                       "p99": round(percentile(ms, 99) or 0.0, 2),
                       "max": round(ms[-1], 2)} if ms else None,
    }


def healthz_drain(backlog: int) -> dict[str, Any]:
    """/healthz while the gateway drains a telemetry backlog, vs no backlog."""
    with broker() as port, tempfile.TemporaryDirectory() as tmp:
        quiet = GatewayUnderTest(Path(tmp), port, "quiet")
        wait_healthy(quiet.http_port, quiet.start())
        quiet.stop()
        baseline = _drain(quiet, 0)
        busy = GatewayUnderTest(Path(tmp), port, "drain")
        wait_healthy(busy.http_port, busy.start())  # creates the persistent sessions
        busy.stop()
        published = publish(port, busy.prefix, backlog, 1)
        during = _drain(busy, backlog)
    rate = None
    if during["drained_s"]:
        rate = round(backlog / during["drained_s"])
    return {"backlog": backlog, "published": published, "no_backlog": baseline,
            "during_drain": during, "drain_per_s_incl_start": rate}


def bench(backlog: int = 40_000, restarts: int = 5) -> dict[str, Any]:
    """Both sections, with the machine's load before and after."""
    return {"load_before": load_avg(), "restart": restart(restarts),
            "healthz_drain": healthz_drain(backlog), "load_after": load_avg()}


def table(result: dict[str, Any]) -> str:
    """A markdown summary."""
    r, h = result["restart"], result["healthz_drain"]
    q, d = h["no_backlog"], h["during_drain"]
    rows = [
        "| figure | value | ceiling, same run |",
        "| --- | --- | --- |",
        f"| SIGKILL → first ack of a new alarm (median of {r['restarts']}) | "
        f"{r['kill_to_first_ack_s']['median']} s (min {r['kill_to_first_ack_s']['min']}, "
        f"max {r['kill_to_first_ack_s']['max']}) | `python -c pass` {r['python_c_pass_s']} s; "
        f"`import gateway.runtime` {r['import_gateway_runtime_s']} s |",
        f"| start → first /healthz 200 with {h['backlog']:,} telemetry queued | "
        f"{d['first_healthy_s']} s | no backlog: {q['first_healthy_s']} s |",
        f"| /healthz latency during the drain p50/p99/max ms | "
        f"{d['healthz_ms'] and d['healthz_ms']['p50']} / {d['healthz_ms'] and d['healthz_ms']['p99']}"
        f" / {d['healthz_ms'] and d['healthz_ms']['max']} | no backlog: "
        f"{q['healthz_ms'] and q['healthz_ms']['p50']} / {q['healthz_ms'] and q['healthz_ms']['p99']}"
        f" / {q['healthz_ms'] and q['healthz_ms']['max']} |",
        f"| backlog drained (incl. start) | {d['drained_s']} s, "
        f"{h['drain_per_s_incl_start']} msg/s | |",
    ]
    return "\n".join(rows)


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backlog", type=int, default=40_000)
    parser.add_argument("--restarts", type=int, default=5)
    args = parser.parse_args()
    result = bench(args.backlog, args.restarts)
    print(json.dumps(result, indent=2))
    print()
    print(table(result))


if __name__ == "__main__":
    main()
