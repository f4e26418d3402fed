"""SMS fallback latency through a real Kannel (bearerbox + smsbox + fakesmsc), one alarm at a time.

For each alarm: the SMS step falls due ``--after`` s after it is stored; measured are
  due → queued       (how late the escalation timer decided the SMS step),
  queued → phone     (sender → smsbox sendsms → bearerbox → fake SMSC → fakesmsc's log; fakesmsc
                      reads its socket about once a second in interactive mode),
  queued → delivered (Kannel's 202 and the DLR callback, journaled),
  reply → accepted   (written to fakesmsc → bearerbox → smsbox get-url → Gateway.act → journal;
                      includes fakesmsc picking the line up from stdin).
Times are the core's record times (when each was decided, before its commit) against the
wall clock. Starts its own Mosquitto and Kannel on free loopback ports; nothing touches
shared services.

    .venv/bin/python bench/sms_bench.py --alarms 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alarms.events import CloseRequested
from alarms.model import Alarm, NotificationStatus
from firmware_sim.smsphone import FakeSmsc, MtMessage, reply_code
from gateway.config import load
from gateway.org import OrgStore
from gateway.runtime import Gateway
from tests.conftest import free_port, seed_small
from tests.helpers import device
from tests.kannel import SENDER, Kannel

SECRET = "bench-callback-secret-" + "b" * 16
PHONE = "+46700000001"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"p50_ms": round(statistics.median(ms), 1), "p90_ms": round(pct(ms, 0.9), 1),
            "max_ms": round(max(ms), 1)}


async def until(predicate: Any, timeout: float = 20.0) -> Any:
    async with asyncio.timeout(timeout):
        while not (found := predicate()):
            await asyncio.sleep(0.005)
    return found


async def run(alarms: int, after_s: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="sms-bench-"))
    mqtt_port, http_port = free_port(), free_port()
    broker = await asyncio.create_subprocess_exec(
        "mosquitto", "-p", str(mqtt_port), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    kannel = Kannel(work / "kannel", gateway_url=f"http://127.0.0.1:{http_port}", secret=SECRET)
    await kannel.start()
    prefix = f"bench/{uuid.uuid4().hex[:8]}"
    org = OrgStore(work / "gw" / "org.sqlite3")
    seed_small(org)
    for member in list(org.staff.values()):
        if member.id == "anna":
            org.put_staff(dataclasses.replace(member, phone=PHONE))
    settings = load(None, demo=True, data_dir=work / "gw", secret_key="bench-" + "x" * 40,
                    mqtt={"host": "127.0.0.1", "port": mqtt_port, "prefix": prefix},
                    http={"host": "127.0.0.1", "port": http_port},
                    sms=kannel.settings(SECRET, check_interval_s=5),
                    escalation={"team_s": 600, "next_level_s": 1200, "centre_s": 1800,
                                "sms": [{"after_s": after_s, "max_priority": 2}]})
    arrived: dict[str, float] = {}

    def on_mt(message: MtMessage) -> None:
        code = reply_code(message.text)
        if code is not None:
            arrived.setdefault(code, time.time())

    timer_late, queued_to_phone, queued_to_delivered, reply_to_accepted = [], [], [], []
    try:
        async with Gateway(settings, org=org) as gw, FakeSmsc(kannel.fake_port) as phones, \
                device(("127.0.0.1", mqtt_port), prefix, "dev-a") as dev:
            await gw.wait_connected()
            await kannel.wait_smsc_online()
            phones.subscribe(on_mt)
            for n in range(alarms):
                ref = f"bench-{n}"
                await dev.alarm(ref)
                await dev.wait_ack(ref)

                def alarm(ref: str = ref) -> Alarm:
                    return next(a for a in gw.core.alarms.values() if a.ref == ref)

                code = await until(lambda: alarm().reply_code)
                await until(lambda code=code: code in arrived)
                first = alarm()
                stored = first.hops[1].at
                queued = next(m.at for m in first.notifications
                              if m.status is NotificationStatus.QUEUED)
                timer_late.append(queued - (stored + after_s))
                queued_to_phone.append(arrived[code] - queued)
                delivered = await until(lambda: next(
                    (m.at for m in alarm().notifications
                     if m.status is NotificationStatus.DELIVERED), None))
                queued_to_delivered.append(delivered - queued)
                sent_at = time.time()  # includes fakesmsc picking the line up (≤ 1 s poll)
                await phones.send(PHONE, SENDER, f"JA {code}")
                accepted = await until(lambda: next(
                    (h.at for h in alarm().hops if h.hop.value == "accepted"), None))
                reply_to_accepted.append(accepted - sent_at)
                # Close it so the next alarm from the same recipient is not attached.
                await gw.act(CloseRequested(first.id, "anna", "hjälp given"))
    finally:
        await kannel.stop()
        broker.terminate()
        await broker.wait()
        org.close()
    return {
        "alarms": alarms, "after_s": after_s, "load1": round(os.getloadavg()[0], 2),
        "timer_late": summary(timer_late),
        "queued_to_phone": summary(queued_to_phone),
        "queued_to_delivered": summary(queued_to_delivered),
        "reply_to_accepted": summary(reply_to_accepted),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alarms", type=int, default=20)
    parser.add_argument("--after", type=float, default=0.2, help="SMS delay (s)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        print(json.dumps(asyncio.run(run(args.alarms, args.after)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
