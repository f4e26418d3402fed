"""Telemetry sink throughput: points/s into SQLite and into InfluxDB (a private VictoriaMetrics).

    .venv/bin/python bench/tsdb_bench.py [--points N] [--vector-len K]

Offers N samples from 500 simulated devices as fast as the sink accepts them (waiting on
flush() whenever the buffer is full, so nothing is shed), then flushes; points/s is N over
the wall time from first offer to flush complete. Prints JSON, then a markdown table.
The InfluxDB run is skipped (reported as such) when victoria-metrics is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.tsdb import BufferedSink, Sample, SqliteSink
from gateway.tsdb.influx import InfluxSink

DEVICES = 500


def _samples(n: int, vector_len: int) -> list[Sample]:
    t0 = time.time_ns() // 1_000_000 - n
    out = []
    for i in range(n):
        value: float | tuple[float, ...] = (
            tuple(float(i + k) for k in range(vector_len)) if vector_len else float(i % 40)
        )
        out.append(
            Sample(
                f"dev-{i % DEVICES}",
                "accel" if vector_len else "temperature",
                value,
                "C",
                t0 + i,
                t0 + i,
            )
        )
    return out


async def _run(sink: BufferedSink, samples: list[Sample]) -> dict[str, float | int]:
    async with sink:
        start = time.perf_counter()
        for s in samples:
            while not sink.offer(s):
                await sink.flush()  # the bench measures the store, not the shed policy
        await sink.flush()
        elapsed = time.perf_counter() - start
        stats = sink.stats
    return {
        "points": len(samples),
        "seconds": round(elapsed, 3),
        "points_per_s": round(len(samples) / elapsed),
        "written": stats.written,
        "shed_by_sink": stats.shed,
        "failed_writes": stats.failed_writes,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_vm(binary: str, data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"-httpListenAddr=127.0.0.1:{port}",
            f"-storageDataPath={data_dir}",
            "-retentionPeriod=100y",
            "-loggerLevel=ERROR",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("victoria-metrics did not start")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--vector-len", type=int, default=0, help="0 = scalar samples")
    args = parser.parse_args()
    samples = _samples(args.points, args.vector_len)
    results: dict[str, object] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "vector_len": args.vector_len,
    }
    with tempfile.TemporaryDirectory(prefix="tsdb-bench-") as tmp:
        results["sqlite"] = await _run(SqliteSink(Path(tmp) / "telemetry.sqlite"), samples)
        binary = shutil.which("victoria-metrics")
        if binary is None:
            results["influx"] = {"skipped": "victoria-metrics not installed"}
        else:
            proc, url = _start_vm(binary, Path(tmp) / "vm")
            try:
                sink = InfluxSink(url=url, token="bench", org="trygg", bucket="telemetry")
                results["influx"] = await _run(sink, samples)
                results["influx_server"] = "victoria-metrics (InfluxDB v2 write API)"
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    print(json.dumps(results, indent=2))
    print()
    print("| sink | points | seconds | points/s |")
    print("| --- | ---: | ---: | ---: |")
    for name in ("sqlite", "influx"):
        r = results[name]
        assert isinstance(r, dict)
        if "skipped" in r:
            print(f"| {name} | - | - | skipped: {r['skipped']} |")
        else:
            print(f"| {name} | {r['points']} | {r['seconds']} | {r['points_per_s']} |")


if __name__ == "__main__":
    asyncio.run(main())
