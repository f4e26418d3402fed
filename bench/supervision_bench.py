"""Benchmark of device supervision at national-city scale (100,000 devices).

Measures, for ``alarms.supervision.Supervisor``:

1. memory: bytes allocated by the supervisor for N watched devices (tracemalloc; device-id
   strings are allocated beforehand, since the gateway holds them anyway), and the process's
   peak resident set size;
2. heartbeat throughput: ``seen()`` calls per second on a time-ordered stream;
3. detection delay in a simulated timeline of ``--minutes`` minutes where 1% of devices die:
   the single timer fires ``due()`` at ``next_deadline()`` (delay must be 0) versus a coarse
   30 s tick (the lag deployed systems are known for);
4. detection delay on a real asyncio event loop (one timer task, wall clock), a few seconds.

Prints one JSON object, then a short table. Run: ``.venv/bin/python bench/supervision_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alarms.supervision import DEFAULT_TIMING, DeviceOffline, Supervisor

T0 = 1_700_000_000.0
# Device mix of a typical installation: every home has a base unit and a button, some have
# sensors, few have a night camera.
MIX = (("base_unit", 0.35), ("button", 0.35), ("sensor", 0.25), ("camera", 0.05))
COARSE_TICK_S = 30.0


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def fleet(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """(device id, device type) for n devices."""
    types = [t for t, _ in MIX]
    weights = [w for _, w in MIX]
    return [(f"dev-{i:06d}", rng.choices(types, weights)[0]) for i in range(n)]


def max_rss() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_rss(devices: list[tuple[str, str]]) -> dict[str, float]:
    """Growth of peak RSS from building the supervisor (no tracemalloc overhead)."""
    before = max_rss()
    sup = Supervisor()
    for device_id, device_type in devices:
        sup.watch(device_id, now=T0, device_type=device_type)
    for k, (device_id, _) in enumerate(devices):
        sup.seen(device_id, T0 + 1.0 + k * 1e-4)
    after = max_rss()
    return {
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "rss_growth_bytes": after - before,
    }


def measure_memory(devices: list[tuple[str, str]]) -> dict[str, float]:
    """Bytes the supervisor allocates for the whole fleet, after some heartbeats."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    sup = Supervisor()
    for device_id, device_type in devices:
        sup.watch(device_id, now=T0, device_type=device_type)
    # One heartbeat round and a timer pass, so stale entries exist as in steady state.
    for k, (device_id, _) in enumerate(devices):
        sup.seen(device_id, T0 + 1.0 + k * 1e-4)
    sup.due(T0 + 60.0)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    used = current - before
    return {
        "supervisor_bytes": used,
        "bytes_per_device": used / len(devices),
        "tracemalloc_peak_bytes": peak - before,
    }


def measure_throughput(devices: list[tuple[str, str]], beats: int) -> dict[str, float]:
    """seen() calls per second, heartbeats in time order from random devices."""
    rng = random.Random(2)
    sup = Supervisor()
    for device_id, device_type in devices:
        sup.watch(device_id, now=T0, device_type=device_type)
    ids = [device_id for device_id, _ in devices]
    stream = [rng.choice(ids) for _ in range(beats)]
    step = 60.0 / len(devices)  # the whole fleet's heartbeats in about a minute
    started = time.perf_counter()
    now = T0
    for device_id in stream:
        now += step
        sup.seen(device_id, now)
    elapsed = time.perf_counter() - started
    # The lazy-rescheduling cost is paid when stale entries reach the top: include it.
    started_due = time.perf_counter()
    sup.next_deadline()
    caught_up = sup.due(now)
    due_elapsed = time.perf_counter() - started_due
    return {
        "heartbeats": beats,
        "seen_per_s": beats / elapsed,
        "seen_us": elapsed / beats * 1e6,
        # One catch-up call over the whole fleet (random, not periodic, heartbeats leave
        # many devices silent): the worst single call, which ``due(limit=...)`` can chunk.
        "due_after_stream_ms": due_elapsed * 1000,
        "due_after_stream_offline": len(caught_up),
        "heap_entries": len(sup._heap),
    }


@dataclass(frozen=True, slots=True)
class Timeline:
    """Heartbeat events in time order, and when each dying device stopped."""

    events: list[tuple[float, str]]
    died_at: dict[str, float]


def make_timeline(devices: list[tuple[str, str]], minutes: float, dead_share: float) -> Timeline:
    """Every device heartbeats on its interval with ±10% jitter; some stop for good."""
    rng = random.Random(3)
    end = T0 + minutes * 60
    died_at: dict[str, float] = {}
    events: list[tuple[float, str]] = []
    for device_id, device_type in devices:
        interval = DEFAULT_TIMING[device_type].interval_s
        stop = end
        if rng.random() < dead_share:
            stop = T0 + rng.uniform(0.1, 0.6) * (end - T0)
            died_at[device_id] = stop
        t = T0 + rng.uniform(0, interval)
        while t < stop:
            events.append((t, device_id))
            t += interval * rng.uniform(0.9, 1.1)
    events.sort()
    return Timeline(events, died_at)


def simulate(
    devices: list[tuple[str, str]], timeline: Timeline, minutes: float, tick: float | None
) -> dict[str, float]:
    """Drive the supervisor as the gateway would; tick=None means the exact single timer."""
    sup = Supervisor()
    for device_id, device_type in devices:
        sup.watch(device_id, now=T0, device_type=device_type)
    delays: list[float] = []
    detected: set[str] = set()
    wakeups = 0
    empty_wakeups = 0

    def fire(at: float) -> None:
        nonlocal wakeups, empty_wakeups
        wakeups += 1
        got = sup.due(at)
        if not got:
            empty_wakeups += 1
        for action in got:
            if isinstance(action, DeviceOffline):
                delays.append(action.at - action.deadline)
                detected.add(action.device_id)

    def timer_at(last: float) -> float | None:
        return sup.next_deadline() if tick is None else last + tick

    started = time.perf_counter()
    wake = timer_at(T0)
    for t, device_id in timeline.events:
        while wake is not None and wake <= t:
            fire(wake)
            wake = timer_at(wake)
        came_back = sup.seen(device_id, t)
        if tick is None and came_back:
            # Like the gateway: re-arm only when a deadline may have come earlier (a device
            # back online, watch, restore); a plain heartbeat only moves deadlines later.
            wake = sup.next_deadline()
    end = T0 + minutes * 60
    while wake is not None and wake <= end:
        fire(wake)
        wake = timer_at(wake)
    elapsed = time.perf_counter() - started
    should = {
        d
        for d, died in timeline.died_at.items()
        if sup.status(d) is not None and died + _timeout(devices, d) <= end
    }
    return {
        "events": len(timeline.events),
        "wall_s": elapsed,
        "events_per_s": len(timeline.events) / elapsed,
        "offline_detected": len(detected),
        "offline_expected": len(should),
        "false_offline": len(detected - set(timeline.died_at)),
        "missed": len(should - detected),
        "timer_wakeups": wakeups,
        "empty_wakeups": empty_wakeups,
        "delay_p50_s": percentile(delays, 50),
        "delay_p99_s": percentile(delays, 99),
        "delay_max_s": max(delays, default=0.0),
    }


_TIMEOUTS: dict[str, float] = {}


def _timeout(devices: list[tuple[str, str]], device_id: str) -> float:
    if not _TIMEOUTS:
        _TIMEOUTS.update({d: DEFAULT_TIMING[t].timeout_s for d, t in devices})
    return _TIMEOUTS[device_id]


async def live(n: int, seconds: float) -> dict[str, float]:
    """Real event loop: one timer task, heartbeat producers, some devices die mid-run."""
    loop = asyncio.get_running_loop()
    rng = random.Random(4)
    sup = Supervisor()
    start = loop.time()
    intervals = {f"live-{i}": rng.uniform(0.2, 1.0) for i in range(n)}
    dies = {d: start + rng.uniform(0.5, seconds - 1.5) for d in intervals if rng.random() < 0.2}
    for device_id, interval in intervals.items():
        sup.watch(device_id, now=start, interval_s=interval, grace_s=0.1)
    delays: list[float] = []
    rearm = asyncio.Event()

    async def timer() -> None:
        while True:
            deadline = sup.next_deadline()
            rearm.clear()
            delay = None if deadline is None else max(0.0, deadline - loop.time())
            # Woken early by ``rearm`` when a deadline came earlier (unused here: producers
            # only heartbeat, which moves deadlines later).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rearm.wait(), delay)
            for action in sup.due(loop.time()):
                if isinstance(action, DeviceOffline):
                    delays.append(action.at - action.deadline)

    async def device(device_id: str, interval: float) -> None:
        await asyncio.sleep(rng.uniform(0, interval))
        while loop.time() < dies.get(device_id, float("inf")):
            sup.seen(device_id, loop.time())
            await asyncio.sleep(interval * rng.uniform(0.8, 1.0))

    async with asyncio.TaskGroup() as tg:
        timer_task = tg.create_task(timer(), name="supervision timer")
        producers = [tg.create_task(device(d, i), name=f"device {d}") for d, i in intervals.items()]
        await asyncio.sleep(seconds)
        for task in [*producers, timer_task]:
            task.cancel()
    return {
        "devices": n,
        "seconds": seconds,
        "offline_detected": len(delays),
        "offline_expected": len(dies),
        "delay_p50_ms": percentile(delays, 50) * 1000,
        "delay_p99_ms": percentile(delays, 99) * 1000,
        "delay_max_ms": max(delays, default=0.0) * 1000,
    }


def main() -> None:
    """Run every measurement, print JSON and a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--heartbeats", type=int, default=1_000_000)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--live-devices", type=int, default=2000)
    parser.add_argument("--live-seconds", type=float, default=4.0)
    args = parser.parse_args()

    devices = fleet(args.devices, random.Random(1))
    rss = measure_rss(devices)
    memory = measure_memory(devices)
    throughput = measure_throughput(devices, args.heartbeats)
    timeline = make_timeline(devices, args.minutes, dead_share=0.01)
    exact = simulate(devices, timeline, args.minutes, tick=None)
    coarse = simulate(devices, timeline, args.minutes, tick=COARSE_TICK_S)
    realtime = asyncio.run(live(args.live_devices, args.live_seconds))
    result = {
        "devices": args.devices,
        "python": sys.version.split()[0],
        "memory": memory,
        "rss": rss,
        "max_rss_bytes_end": max_rss(),
        "throughput": throughput,
        "simulated_exact_timer": exact,
        "simulated_coarse_tick_30s": coarse,
        "live_asyncio": realtime,
    }
    print(json.dumps(result, indent=2))

    mb = 1024 * 1024
    rows = [
        ("devices", f"{args.devices:,}"),
        ("supervisor memory", f"{memory['supervisor_bytes'] / mb:.1f} MiB"),
        ("per device", f"{memory['bytes_per_device']:.0f} B"),
        (
            "process RSS (fleet built)",
            f"{rss['rss_after_bytes'] / mb:.0f} MiB (+{rss['rss_growth_bytes'] / mb:.0f} MiB)",
        ),
        ("seen() per second", f"{throughput['seen_per_s']:,.0f}"),
        ("sim events per second (incl. timer)", f"{exact['events_per_s']:,.0f}"),
        (
            "sim detection delay p50/p99/max",
            f"{exact['delay_p50_s']:.3f} / {exact['delay_p99_s']:.3f} / "
            f"{exact['delay_max_s']:.3f} s",
        ),
        (
            "sim detected/expected/false",
            f"{exact['offline_detected']}/{exact['offline_expected']}/{exact['false_offline']}",
        ),
        (
            "30 s tick delay p50/p99/max",
            f"{coarse['delay_p50_s']:.1f} / {coarse['delay_p99_s']:.1f} / "
            f"{coarse['delay_max_s']:.1f} s",
        ),
        (
            "live asyncio delay p50/p99/max",
            f"{realtime['delay_p50_ms']:.2f} / {realtime['delay_p99_ms']:.2f} / "
            f"{realtime['delay_max_ms']:.2f} ms",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
