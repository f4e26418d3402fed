"""DC-09 in and SCAIP out, in one process on loopback (no broker, no journal).

- codec: ``parse_frame`` per second for clear and AES-128 frames, next to pysiaalarm's bare
  ``SIAEvent.from_line`` on the same frames (the ceiling: what the checks around it cost);
- receiver: frame -> ACK round trips over TCP from N simulated transmitters against a
  ``Dc09Receiver`` whose store returns at once (the transport's own cost; the journal's
  group commit is measured by the other benchmarks), p50/p99 and events/s;
- SCAIP out: ``ScaipCentre.deliver`` against trygg's own ``ScaipListener`` (handler answers
  snu 0 at once), UDP, <mrs> in a MESSAGE after the 200: p50/p99 per delivery.

    .venv/bin/python bench/dc09_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

from pysiaalarm.account import SIAAccount
from pysiaalarm.event import SIAEvent

from devices.contract import DeviceMessage
from devices.dc09 import Dc09Account, Dc09Kind, accounts_by_id, encode_event, parse_frame
from devices.scaip import ScaipRequest, Snu
from devices.scaip_out import parse_sip_uri
from devices.sip import SipRequest
from firmware_sim.dc09_device import Dc09Transmitter
from gateway.centre_scaip import ScaipCentre
from gateway.dc09 import Dc09Receiver
from gateway.sip import ScaipListener

KEY = "00112233445566778899AABBCCDDEEFF"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def codec(n: int) -> dict[str, float]:
    accounts = accounts_by_id([Dc09Account("1234", "dev-a"), Dc09Account("ABCD", "dev-b", KEY)])
    now = time.time()
    out: dict[str, float] = {}
    for name, account, key in (("clear", "1234", None), ("aes128", "ABCD", KEY)):
        frames = [encode_event(account=account, sequence=i, kind=Dc09Kind.SIA,
                               data="Nri1/MA001", key=key, now=now) for i in range(n)]
        started = time.perf_counter()
        for frame in frames:
            parse_frame(frame, accounts, now)
        out[f"parse_frame_{name}_per_s"] = n / (time.perf_counter() - started)
        sia = {account: SIAAccount(account, key, allowed_timeband=None)}
        lines = [f.decode().strip() for f in frames]
        started = time.perf_counter()
        for line in lines:
            SIAEvent.from_line(line, sia)
        out[f"pysiaalarm_from_line_{name}_per_s"] = n / (time.perf_counter() - started)
    return out


async def receiver(transmitters: int, events: int) -> dict[str, float]:
    async def store(message: DeviceMessage) -> None:
        return None

    accounts = [Dc09Account(f"{1000 + i}", f"dev-{i}", KEY) for i in range(transmitters)]
    rtts: list[float] = []
    async with Dc09Receiver(store, accounts=accounts, port=0, udp=False) as rx:
        assert rx.tcp_port is not None

        async def one(account: str) -> None:
            async with Dc09Transmitter("127.0.0.1", rx.tcp_port or 0, account=account,
                                       key=KEY) as tx:
                for _ in range(events):
                    started = time.perf_counter()
                    answer = await tx.alarm("MA")
                    rtts.append(time.perf_counter() - started)
                    assert answer is not None

        started = time.perf_counter()
        await asyncio.gather(*(one(a.account) for a in accounts))
        elapsed = time.perf_counter() - started
    return {"transmitters": transmitters, "events": len(rtts),
            "events_per_s": len(rtts) / elapsed, "ack_p50_ms": _pct(rtts, 0.5) * 1000,
            "ack_p99_ms": _pct(rtts, 0.99) * 1000, "ack_max_ms": max(rtts) * 1000}


async def scaip_out(deliveries: int) -> dict[str, float]:
    async def handler(request: ScaipRequest, sip: SipRequest) -> int:
        return Snu.OK

    async def confirm(alarm_id: str, attempt: int, reference: str | None) -> None:
        return None

    times: list[float] = []
    async with ScaipListener(handler, port=0, tcp=False) as rx:
        sender = ScaipCentre(target=parse_sip_uri(f"sip:trygg@127.0.0.1:{rx.udp_port}"),
                             transport="udp", confirm=confirm, keepalive="none")
        async with sender:
            for n in range(deliveries):
                alarm = {"id": f"bench-{n}", "device_id": "dev-a", "type": "manual"}
                started = time.perf_counter()
                outcome = await sender.deliver(alarm, 1)
                times.append(time.perf_counter() - started)
                assert outcome.verdict.value == "confirmed"
    return {"deliveries": deliveries, "p50_ms": statistics.median(times) * 1000,
            "p99_ms": _pct(times, 0.99) * 1000, "max_ms": max(times) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    result = {
        "load_1min": os.getloadavg()[0],
        "codec": codec(20000 // scale),
        "receiver_1": asyncio.run(receiver(1, 2000 // scale)),
        "receiver_50": asyncio.run(receiver(50, 100 // scale)),
        "scaip_out": asyncio.run(scaip_out(500 // scale)),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
