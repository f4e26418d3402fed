"""``trygg sim``: run a simulated fleet against a gateway's broker.

Progress goes to stderr (a live table when it is a terminal); the JSON summary is printed
to stdout as one line at the end, so scripts can pipe it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys

from rich.console import Console

from devices.contract import DEFAULT_PREFIX

from .connection import Backoff
from .faults import ALL_FAULTS, FaultKind, FaultPlan
from .fleet import Fleet
from .models import PROFILES, DeviceSpec, load_devices_file, make_specs
from .progress import show_progress

# Above this many devices, one TCP connection each costs more (file descriptors, broker
# memory, connect storms) than it buys; multiplex instead.
MUX_THRESHOLD = 1000
MUX_PER_CONNECTION = 100
# Fault plans for an open-ended run (--duration 0) cover this horizon.
OPEN_ENDED_HORIZON_S = 3600.0


def _faults(value: str) -> list[FaultKind]:
    if value.strip() in ("", "none"):
        return []
    if value.strip() == "all":
        return list(ALL_FAULTS)
    kinds = []
    for name in value.split(","):
        try:
            kinds.append(FaultKind(name.strip()))
        except ValueError:
            choices = ", ".join(k.value for k in ALL_FAULTS)
            msg = f"unknown fault {name.strip()!r} (choose from: {choices}, all)"
            raise argparse.ArgumentTypeError(msg) from None
    return kinds


def build_parser() -> argparse.ArgumentParser:
    """The ``trygg sim`` argument parser."""
    p = argparse.ArgumentParser(prog="trygg sim",
                                description="Simulated alarm units and sensors over MQTT "
                                            "(`trygg sim dc09 --help`: a DC-09 transmitter).")
    p.add_argument("--host", default="127.0.0.1", help="MQTT broker host")
    p.add_argument("--port", type=int, default=1883, help="MQTT broker port")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="topic prefix")
    p.add_argument("--devices", type=int, default=10, help="number of devices")
    p.add_argument("--profile", choices=sorted(PROFILES), default="mixed", help="device mix")
    p.add_argument("--devices-file", help="JSON with a 'devices' list of {id, type} (demo.json)")
    p.add_argument("--rate", type=float, default=1.0,
                   help="spontaneous alarms per device per hour (0: none)")
    p.add_argument("--duration", type=float, default=60.0,
                   help="seconds to run (0: until interrupted)")
    p.add_argument("--seed", type=int, default=0, help="seed for devices and faults")
    p.add_argument("--faults", type=_faults, default=[],
                   help="comma-separated: " + ",".join(k.value for k in ALL_FAULTS) + ", or all")
    p.add_argument("--intensity", type=float, default=1.0, help="fault frequency multiplier")
    p.add_argument("--per-connection", type=int, default=0,
                   help=f"devices per MQTT connection (0: 1, or {MUX_PER_CONNECTION} "
                        f"from {MUX_THRESHOLD} devices)")
    p.add_argument("--heartbeat", type=float, help="heartbeat interval override (s)")
    p.add_argument("--telemetry-interval", type=float, help="telemetry interval override (s)")
    p.add_argument("--no-telemetry", action="store_true", help="send no sensor telemetry")
    p.add_argument("--resend-initial", type=float, default=0.5, help="first resend after (s)")
    p.add_argument("--resend-cap", type=float, default=5.0, help="resend back-off cap (s)")
    p.add_argument("--drain", type=float, default=5.0,
                   help="at the end, wait this long for pending alarms to be acked (s)")
    p.add_argument("--day-length", type=float,
                   help="compress a simulated day into this many seconds (activity patterns)")
    p.add_argument("--no-progress", action="store_true", help="no live display")
    p.add_argument("--log-level", default="WARNING", help="logging level")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``trygg sim``; returns the exit status."""
    if argv and argv[0] == "sms-phone":
        from .smsphone import main as phone_main  # staff phones answering by SMS

        return phone_main(argv[1:])
    if argv and argv[0] == "dc09":
        # ``trygg sim dc09 ...``: a SIA DC-09 transmitter instead of an MQTT fleet.
        from .dc09_device import main as dc09_main

        return dc09_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        specs = (load_devices_file(args.devices_file, seed=args.seed) if args.devices_file
                 else make_specs(args.devices, args.profile, seed=args.seed))
    except (OSError, ValueError) as exc:
        print(f"trygg sim: {exc}", file=sys.stderr)
        return 2
    if not specs:
        print("trygg sim: no devices to simulate", file=sys.stderr)
        return 2
    return asyncio.run(_run(args, specs))


async def _run(args: argparse.Namespace, specs: list[DeviceSpec]) -> int:
    duration = args.duration if args.duration > 0 else None
    plan = FaultPlan.generate(args.seed, specs, duration or OPEN_ENDED_HORIZON_S, args.faults,
                              intensity=args.intensity)
    per_connection = args.per_connection or (
        MUX_PER_CONNECTION if len(specs) >= MUX_THRESHOLD else 1)
    fleet = Fleet(
        specs,
        host=args.host,
        port=args.port,
        prefix=args.prefix,
        seed=args.seed,
        devices_per_connection=per_connection,
        heartbeat_s=args.heartbeat,
        telemetry_s=args.telemetry_interval,
        telemetry=not args.no_telemetry,
        alarm_rate_per_hour=args.rate,
        resend=Backoff(args.resend_initial, args.resend_cap),
        faults=plan,
        day_length_s=args.day_length,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    console = Console(stderr=True)
    async with fleet, asyncio.TaskGroup() as tg:
        display = None
        if not args.no_progress and console.is_terminal:
            display = tg.create_task(show_progress(fleet, console, duration),
                                     name="firmware-sim progress")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                await stop.wait()
        if args.drain > 0 and not stop.is_set():
            await fleet.wait_all_acked(args.drain)
        if display is not None:
            display.cancel()
        stats = fleet.stats()  # before shutdown, so it shows what was connected
    summary = {
        "devices": len(specs),
        "profile": None if args.devices_file else args.profile,
        "seed": args.seed,
        "duration_s": args.duration,
        "faults": sorted(k.value for k in args.faults),
        "fault_events": len(plan.events),
        "stats": stats.as_dict(),
    }
    print(json.dumps(summary, separators=(",", ":")))
    return 0
