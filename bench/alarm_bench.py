"""Alarm latency benchmark: device -> ack and device -> staff phone, under telemetry load.

One command, against the machine's Mosquitto (127.0.0.1:1883):

    .venv/bin/python bench/alarm_bench.py [--alarms 400] [--telemetry-rate 2000]

Runs twice on the same broker, in the same run:
1. the ceiling: a bare "echo" subscriber process that answers every alarm with an ack at
   once (no parsing, no storage) — what the broker and loopback allow;
2. the gateway (``trygg run`` as its own process, fsync included), with a staff WebSocket
   client confirming receipt.
In both, a background publisher sends telemetry at ``--telemetry-rate`` msg/s. Prints JSON,
then a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BROKER = ("127.0.0.1", 0)  # set in main(): a private Mosquitto on a free port
NODELAY = ((6, 1, 1),)  # IPPROTO_TCP, TCP_NODELAY, 1


_LOAD_SENT = [0]


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds."""
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)
    return {
        "n": len(ordered),
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "max_ms": round(ordered[-1] * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


async def echo_main(prefix: str) -> None:
    """The ceiling: ack every alarm immediately, with no work at all."""
    async with aiomqtt.Client(*BROKER, socket_options=NODELAY) as client:
        await client.subscribe(f"{prefix}/+/alarm", qos=1)
        await client.subscribe(f"{prefix}/+/telemetry", qos=1)
        print("ready", flush=True)
        async for message in client.messages:
            parts = message.topic.value.split("/")
            if parts[-1] != "alarm":
                continue
            body = json.loads(message.payload)
            ack = json.dumps({"ref": body["ref"], "status": "stored"}).encode()
            await client.publish(f"{prefix}/{parts[-2]}/ack", ack, qos=1)


async def telemetry_load(prefix: str, rate: int) -> int:
    """Publish telemetry at ``rate`` msg/s from 20 devices until cancelled (own process)."""
    sent = 0
    async with aiomqtt.Client(*BROKER, socket_options=NODELAY,
                              max_queued_outgoing_messages=100_000) as client:
        started = time.perf_counter()
        while True:
            due = int((time.perf_counter() - started) * rate)
            while sent < due:
                device = f"sim-{sent % 20:03d}"
                body = {"ref": f"t{sent}", "ts": int(time.time() * 1000),
                        "metric": "temperature", "value": 21.5}
                await client.publish(f"{prefix}/{device}/telemetry", json.dumps(body), qos=1)
                sent += 1
                _LOAD_SENT[0] = sent
            await asyncio.sleep(0.005)
    return sent


async def measure(prefix: str, alarms: int, rate: int, staff_port: int | None) -> dict[str, Any]:
    """Send alarms one by one (20/s) under telemetry load; time acks and staff receipts."""
    ack_lat: list[float] = []
    staff_lat: list[float] = []
    sent_at: dict[str, float] = {}
    acked: dict[str, asyncio.Future[None]] = {}
    # The load runs in its own process so that it does not compete with the measuring
    # clients for this event loop.
    duration = 3.0 + alarms * 0.08
    load = subprocess.Popen(
        [sys.executable, __file__, "--load", prefix, str(BROKER[1]), str(rate), str(duration)],
        stdout=subprocess.PIPE,
    )
    staff_task = None
    if staff_port is not None:
        staff_task = asyncio.create_task(staff_client(staff_port, sent_at, staff_lat),
                                         name="staff client")
        await asyncio.sleep(1.0)
    device_id = "sim-099"
    async with aiomqtt.Client(*BROKER, socket_options=NODELAY) as device:
        await device.subscribe(f"{prefix}/{device_id}/ack", qos=1)

        async def listen() -> None:
            async for message in device.messages:
                ref = json.loads(message.payload)["ref"]
                if ref in acked and not acked[ref].done():
                    ack_lat.append(time.perf_counter() - sent_at[ref])
                    acked[ref].set_result(None)

        listener = asyncio.create_task(listen(), name="ack listener")
        await asyncio.sleep(1.0)  # let the load settle
        for n in range(alarms):  # ~0.06 s each: inside the load's duration
            ref = f"bench-{uuid.uuid4().hex[:8]}-{n}"
            acked[ref] = asyncio.get_running_loop().create_future()
            body = json.dumps({"ref": ref, "ts": int(time.time() * 1000), "type": "manual"})
            sent_at[ref] = time.perf_counter()
            await device.publish(f"{prefix}/{device_id}/alarm", body, qos=1)
            try:
                await asyncio.wait_for(acked[ref], 10)
            except TimeoutError:
                pass
            await asyncio.sleep(0.05)
        listener.cancel()
    out, _ = await asyncio.to_thread(load.communicate)
    telemetry_sent = int(out.strip() or 0)
    if staff_task is not None:
        staff_task.cancel()
        await asyncio.gather(staff_task, return_exceptions=True)
    result: dict[str, Any] = {"device_to_ack": percentiles(ack_lat), "telemetry_sent": telemetry_sent,
                              "lost_acks": alarms - len(ack_lat)}
    if staff_port is not None:
        result["device_to_staff"] = percentiles(staff_lat)
    return result


async def staff_client(port: int, sent_at: dict[str, float], latencies: list[float]) -> None:
    """A staff phone of team-b (owner of sim-099) that confirms every alarm."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        token = (await http.post("/api/v1/auth/token",
                                 data={"username": "cleo", "password": "bench-password"}
                                 )).json()["access_token"]
    async with websockets.connect(f"ws://127.0.0.1:{port}/api/v1/ws?token={token}") as ws:
        async for raw in ws:
            message = json.loads(raw)
            if message["type"] != "alarm":
                continue
            alarm = message["alarm"]
            if alarm["ref"] in sent_at and len(alarm["hops"]) == 3:
                latencies.append(time.perf_counter() - sent_at[alarm["ref"]])
                await ws.send(json.dumps({"type": "receipt", "alarm_id": alarm["id"]}))


def seed(data_dir: Path) -> None:
    from gateway.auth import hash_password
    from gateway.org import DeviceInfo, OrgStore, RecipientInfo, StaffMember, Team

    org = OrgStore(data_dir / "org.sqlite3")
    org.put_team(Team("team-b", "Lag B"))
    org.put_staff(StaffMember("cleo", "cleo", "Cleo", "staff", ("team-b",),
                              hash_password("bench-password")))
    org.put_recipient(RecipientInfo("r-b", "Bengt B", "Kyrkvägen 2", "team-b"))
    for n in range(100):
        org.put_device(DeviceInfo(f"sim-{n:03d}", "alarm_unit", "r-b"))
    org.close()


async def wait_healthy(port: int, proc: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError("gateway exited")
            try:
                if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("gateway not healthy")


def start_mosquitto(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A private Mosquitto with Nagle off on its sockets (``set_tcp_nodelay``).

    Stock Mosquitto leaves Nagle on, which adds ~40 ms to every broker -> client message
    (seen here: the bare echo ceiling was 41 ms p50 on the machine's default broker).
    Deployments should set the same option; docs/deployment notes it.
    """
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
                    "max_queued_messages 100000\npersistence false\nlog_type error\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    global BROKER
    broker_dir = Path(tempfile.mkdtemp())
    mosquitto, port = start_mosquitto(broker_dir)
    BROKER = ("127.0.0.1", port)
    try:
        return await _main(args)
    finally:
        mosquitto.terminate()
        mosquitto.wait()


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"alarms": args.alarms, "telemetry_rate": args.telemetry_rate,
                               "broker": f"private mosquitto {BROKER[0]}:{BROKER[1]}, "
                                         "set_tcp_nodelay true"}
    # 1. the ceiling
    prefix = f"bench/{uuid.uuid4().hex[:8]}/trygg/v1"
    echo = subprocess.Popen([sys.executable, __file__, "--echo", prefix, str(BROKER[1])],
                            stdout=subprocess.PIPE)
    assert echo.stdout is not None
    echo.stdout.readline()
    try:
        results["ceiling_echo"] = await measure(prefix, args.alarms, args.telemetry_rate, None)
    finally:
        echo.send_signal(signal.SIGTERM)
        echo.wait()
    # 2. the gateway
    prefix = f"bench/{uuid.uuid4().hex[:8]}/trygg/v1"
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        seed(data_dir)
        port = 18_000 + os.getpid() % 1000
        config = data_dir / "trygg.toml"
        config.write_text(
            f'gateway_id = "bench"\ndata_dir = "{data_dir}"\nsecret_key = "{secrets.token_urlsafe(48)}"\n'
            f'[mqtt]\nport = {BROKER[1]}\nprefix = "{prefix}"\n[http]\nport = {port}\n'
        )
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "--log-level", "WARNING", "run",
             "--config", str(config)], cwd=ROOT)
        try:
            await wait_healthy(port, gateway)
            results["gateway"] = await measure(prefix, args.alarms, args.telemetry_rate, port)
            async with httpx.AsyncClient() as client:
                metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            results["gateway"]["telemetry_written_or_pending"] = next(
                (line.split()[-1] for line in metrics.splitlines()
                 if line.startswith("trygg_ingest_messages_total{channel=\"telemetry\"}")), None)
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(20)
    return results


def table(results: dict[str, Any]) -> str:
    rows = ["| path | n | p50 ms | p99 ms | max ms |", "| --- | --- | --- | --- | --- |"]
    for label, section, key in (
        ("ceiling: bare echo subscriber, device -> ack", "ceiling_echo", "device_to_ack"),
        ("gateway, device -> ack (fsync included)", "gateway", "device_to_ack"),
        ("gateway, device -> staff WebSocket", "gateway", "device_to_staff"),
    ):
        p = results.get(section, {}).get(key, {})
        rows.append(f"| {label} | {p.get('n')} | {p.get('p50_ms')} | {p.get('p99_ms')} | "
                    f"{p.get('max_ms')} |")
    return "\n".join(rows)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--load":
        BROKER = ("127.0.0.1", int(sys.argv[3]))

        async def _load() -> int:
            # A fixed duration, then exit: no signal handling inside an MQTT client.
            try:
                async with asyncio.timeout(float(sys.argv[5])):
                    await telemetry_load(sys.argv[2], int(sys.argv[4]))
            except TimeoutError:
                pass
            return _LOAD_SENT[0]

        print(asyncio.run(_load()), flush=True)
        sys.exit(0)
    if len(sys.argv) == 4 and sys.argv[1] == "--echo":
        BROKER = ("127.0.0.1", int(sys.argv[3]))
        try:
            asyncio.run(echo_main(sys.argv[2]))
        except KeyboardInterrupt:
            pass
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alarms", type=int, default=400)
    parser.add_argument("--telemetry-rate", type=int, default=2000)
    out = asyncio.run(main(parser.parse_args()))
    print(json.dumps(out, indent=2))
    print()
    print(table(out))
