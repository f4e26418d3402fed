"""Sensor rules throughput and fall-detector quality.

Run: ``.venv/bin/python bench/rules_bench.py [--devices N] [--batch N] [--batches N]``.
Prints one JSON object, then a markdown table.

Throughput is for the threshold/duration rules (temperature, bed, door, smoke, water) fed as
columns (``SensorRuleEngine.feed_columns``), the way a gateway would pass a buffer of parsed
telemetry: many devices interleaved per batch, batches following each other in time. The
object path (``feed`` with ``Sample``s) is measured too, since that is the convenient API.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alarms.fall import generate, score
from alarms.sensors import Sample, SensorRuleEngine

METRICS = ("temperature", "bed_occupied", "door_open", "smoke", "water")
T0 = 1_704_841_200_000  # 2024-01-10 00:00 Stockholm: the batches cross night and day


def _values(rng: np.random.Generator, metric: np.ndarray, n: int) -> np.ndarray:
    """Calm readings with rare breaches, so episodes do open and fire, at a plausible rate.

    Alarms are rare in real homes (a few per recipient per month); a bench that fires on
    every tenth sample would measure text formatting, not rule evaluation.
    """
    out = np.empty(n)
    temp = metric == 0
    out[temp] = 21.0 + rng.normal(0, 1.0, int(temp.sum()))
    out[temp & (rng.random(n) < 0.0005)] = 12.0
    binary = ~temp
    out[binary] = (rng.random(int(binary.sum())) < 0.0002).astype(float)
    bed = metric == 1
    out[bed] = (rng.random(int(bed.sum())) > 0.0005).astype(float)
    return out


def bench_columns(devices: int, batch: int, batches: int, seed: int = 1) -> dict[str, float]:
    """Samples per second through ``feed_columns``."""
    rng = np.random.default_rng(seed)
    eng = SensorRuleEngine()
    streams = []
    for d in range(devices):
        eng.assign_device(f"dev{d}", f"rec{d // 5}")
        streams.append(eng.stream_id(f"dev{d}", METRICS[d % len(METRICS)]))
    stream_ids = np.array(streams, dtype=np.intp)
    metric_of = np.arange(devices) % len(METRICS)
    per_stream = max(batch // devices, 1)
    step_ms = 1000  # each stream reports once a second within a batch
    firings = 0
    elapsed = 0.0
    total = 0
    for b in range(batches):
        pick = rng.integers(0, devices, batch)
        ts = T0 + (b * per_stream + rng.integers(0, per_stream, batch)) * step_ms
        vals = _values(rng, metric_of[pick], batch)
        col_stream = stream_ids[pick]
        now = int(ts.max())
        start = time.perf_counter()
        firings += len(eng.feed_columns(col_stream, vals, ts.astype(np.int64), now))
        elapsed += time.perf_counter() - start
        total += batch
    return {
        "samples": total,
        "seconds": round(elapsed, 4),
        "samples_per_s": round(total / elapsed),
        "firings": firings,
    }


def bench_objects(devices: int, batch: int, batches: int, seed: int = 2) -> dict[str, float]:
    """Samples per second through ``feed`` with ``Sample`` objects (includes interning)."""
    rng = np.random.default_rng(seed)
    eng = SensorRuleEngine()
    names = [f"dev{d}" for d in range(devices)]
    for d, name in enumerate(names):
        eng.assign_device(name, f"rec{d // 5}")
    metric_of = np.arange(devices) % len(METRICS)
    elapsed = 0.0
    total = 0
    for b in range(batches):
        pick = rng.integers(0, devices, batch)
        ts = T0 + b * 60_000 + rng.integers(0, 60_000, batch)
        vals = _values(rng, metric_of[pick], batch)
        samples = [
            Sample(names[p], METRICS[metric_of[p]], float(v), int(t))
            for p, v, t in zip(pick.tolist(), vals.tolist(), ts.tolist(), strict=True)
        ]
        start = time.perf_counter()
        eng.feed(samples, int(ts.max()))
        elapsed += time.perf_counter() - start
        total += batch
    return {"samples": total, "seconds": round(elapsed, 4), "samples_per_s": round(total / elapsed)}


def bench_fall(n: int, seed: int) -> dict[str, object]:
    """Precision and recall of the fall detector on the generated set."""
    data = generate(n, seed=seed)
    start = time.perf_counter()
    result = score(data)
    elapsed = time.perf_counter() - start
    return {
        "windows": n,
        "seed": seed,
        "precision": round(result.precision, 4),
        "recall": round(result.recall, 4),
        "confusion": {
            "tp": result.true_pos,
            "fp": result.false_pos,
            "fn": result.false_neg,
            "tn": result.true_neg,
        },
        "flagged_by_activity": {k: list(v) for k, v in result.flagged.items()},
        "windows_per_s": round(n / elapsed),
    }


def main() -> None:
    """Run all benchmarks, print JSON and a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--fall-windows", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=20240611)
    args = parser.parse_args()

    report = {
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "columns": bench_columns(args.devices, args.batch, args.batches),
        "objects": bench_objects(args.devices, 100_000, 3),
        "fall": bench_fall(args.fall_windows, args.seed),
    }
    print(json.dumps(report, indent=2))
    cols, objs, fall = report["columns"], report["objects"], report["fall"]
    assert isinstance(cols, dict) and isinstance(objs, dict) and isinstance(fall, dict)
    print()
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| threshold/duration rules, columns (samples/s) | {cols['samples_per_s']:,} |")
    print(f"| same, `Sample` objects via `feed` (samples/s) | {objs['samples_per_s']:,} |")
    print(f"| fall detector precision ({fall['windows']} windows) | {fall['precision']} |")
    print(f"| fall detector recall | {fall['recall']} |")
    print(f"| fall detector speed (windows/s) | {fall['windows_per_s']:,} |")


if __name__ == "__main__":
    main()
