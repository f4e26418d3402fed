"""What the MQTT client library costs: bare subscribers that only count, side by side.

    .venv/bin/python bench/client_ceiling.py [--messages 60000] [--runs 2]

Issue #20 measures the gateway against a bare paho subscriber. The gateway's profile puts
most of its ingest CPU in paho's receive path (``bench/README.md``), so the question behind
the goals it misses is what another client would leave for the gateway's own work. On the
private Mosquitto of ``ingest_bench`` (same publishers, same 1,000 devices), in turn:

* ``paho``: ``ingest_bench``'s bare paho subscriber (the issue's ceiling);
* ``gmqtt``: the asyncio-native client ``gmqtt``, when it is installed (it is not a
  dependency of trygg; ``pip install gmqtt`` to include it);
* ``raw``: about forty lines of ``asyncio.Protocol`` that frame MQTT 3.1.1 packets, take
  PUBLISH topic and payload out and answer PUBACKs once per read: roughly the least any
  Python client can cost.

Each counts ``--messages`` telemetry messages published at the telemetry QoS of
``INGEST_QOS`` (default 1) while the publishers run. Rate = messages / (first publish ..
last message received). Prints JSON, then a markdown table. Not a gateway figure: no
decoding, no storage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import ingest_bench

RUN_LIMIT_S = ingest_bench.RUN_LIMIT_S


def _report(count: int, first: float, last: float, cpu_at_first: float) -> None:
    # ingest_bench's report (its connect time is not used here).
    ingest_bench._report(count, first, last, 0.0, cpu_at_first)


# -- gmqtt ---------------------------------------------------------------------------------


async def gmqtt_sink(port: int, prefix: str, expected: int, client_id: str) -> None:
    """Count with gmqtt's ``on_message`` callback (its automatic PUBACK after it returns)."""
    from gmqtt import Client  # type: ignore[import-not-found, import-untyped, unused-ignore]

    state = {"count": 0, "first": 0.0, "last": 0.0, "cpu": 0.0}
    done = asyncio.Event()
    subscribed = asyncio.Event()

    def on_message(client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        now = time.time()
        if state["count"] == 0:
            state["first"], state["cpu"] = now, time.process_time()
        state["last"] = now
        state["count"] += 1
        if state["count"] >= expected:
            done.set()
        return 0  # PUBACK reason: success

    client = Client(client_id)
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    await client.connect("127.0.0.1", port, version=4)
    client.subscribe(f"{prefix}/+/telemetry", qos=1)
    await asyncio.wait_for(subscribed.wait(), 10)
    print("ready", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), RUN_LIMIT_S)
    await client.disconnect()
    _report(int(state["count"]), state["first"], state["last"], state["cpu"])


# -- raw asyncio protocol ------------------------------------------------------------------


# The packet helpers of ingest_bench's raw publisher.
_varint = ingest_bench._varint
_string = ingest_bench._string


class RawSubscriber(asyncio.Protocol):
    """Frames packets out of each read; PUBLISH → (topic, payload); PUBACKs in one write."""

    def __init__(self, expected: int, done: asyncio.Event) -> None:
        self.buffer = bytearray()
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.cpu = 0.0
        self.expected = expected
        self.done = done
        self.subscribed = asyncio.Event()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        pos, end, acks = 0, len(buf), []
        while end - pos >= 2:
            length, shift, i = 0, 0, pos + 1
            while i < end:
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                shift += 7
                i += 1
                if not byte & 0x80:
                    break
            else:
                break  # the length itself is not complete yet
            if end - i < length:
                break
            kind = buf[pos] >> 4
            if kind == 3:  # PUBLISH
                topic_end = i + 2 + ((buf[i] << 8) | buf[i + 1])
                start = topic_end
                if (buf[pos] >> 1) & 3:
                    acks.append(b"\x40\x02" + bytes(buf[topic_end:topic_end + 2]))
                    start += 2
                _topic, _payload = bytes(buf[i + 2:topic_end]), bytes(buf[start:i + length])
                self.last = time.time()
                if self.count == 0:
                    self.first, self.cpu = self.last, time.process_time()
                self.count += 1
                if self.count >= self.expected:
                    self.done.set()
            elif kind == 9:  # SUBACK
                self.subscribed.set()
            pos = i + length
        del buf[:pos]
        if acks and self.transport is not None:
            self.transport.write(b"".join(acks))


async def raw_sink(port: int, prefix: str, expected: int, client_id: str) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    transport, protocol = await loop.create_connection(
        lambda: RawSubscriber(expected, done), "127.0.0.1", port)
    transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport.write(ingest_bench._connect_packet(client_id))
    subscribe = struct.pack("!H", 1) + _string(f"{prefix}/+/telemetry".encode()) + b"\x01"
    transport.write(b"\x82" + _varint(len(subscribe)) + subscribe)
    await asyncio.wait_for(protocol.subscribed.wait(), 10)
    print("ready", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), RUN_LIMIT_S)
    transport.write(b"\xe0\x00")  # DISCONNECT
    transport.close()
    _report(protocol.count, protocol.first, protocol.last, protocol.cpu)


# -- the runs ------------------------------------------------------------------------------


def one(kind: str, port: int, total: int, publishers: int) -> dict[str, Any]:
    """One bare subscriber counting ``total`` messages while the publishers run."""
    if kind == "paho":
        paho = ingest_bench.ceiling_live("paho", port, total, publishers)
        return {"client": kind, "received": paho["received"], "per_s": paho["per_s"],
                "cpu_us_per_msg": paho["cpu_us_per_msg"],
                "publishers_per_s": paho["publishers"]["per_s"]}
    prefix = f"bench/client-{kind}-{time.monotonic_ns()}"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--sink", kind, str(port), prefix, str(total),
         f"sink-{kind}-{time.monotonic_ns()}"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError(f"{kind} subscriber did not start")
    pub = ingest_bench.publish(port, prefix, total, publishers)
    out, _ = proc.communicate(timeout=RUN_LIMIT_S + 30)
    got = json.loads(out)
    seconds = got["last"] - pub["t0"]
    return {"client": kind, "received": got["received"],
            "per_s": round(got["received"] / seconds) if seconds > 0 else 0,
            "cpu_us_per_msg": ingest_bench.cpu_per_message(got),
            "publishers_per_s": pub["per_s"]}


def bench(messages: int, publishers: int, runs: int) -> dict[str, Any]:
    kinds = ["paho", "raw"]
    if importlib.util.find_spec("gmqtt") is not None:
        kinds.insert(1, "gmqtt")
    result: dict[str, Any] = {"messages": messages, "publishers": publishers,
                              "qos": ingest_bench._qos(), "load_before": ingest_bench.load_avg(),
                              "runs": []}
    with ingest_bench.broker() as port:
        for _ in range(runs):
            result["runs"].append([one(kind, port, messages, publishers) for kind in kinds])
    result["load_after"] = ingest_bench.load_avg()
    return result


def table(result: dict[str, Any]) -> str:
    rows = [f"QoS {result['qos']}, {result['messages']:,} messages per run",
            "| run | client | received | msg/s | vs paho | CPU µs/msg | publishers' msg/s |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for number, run in enumerate(result["runs"], start=1):
        paho = next(r["per_s"] for r in run if r["client"] == "paho") or 1
        rows += [f"| {number} | {r['client']} | {r['received']:,} | {r['per_s']:,} | "
                 f"{r['per_s'] / paho:.2f}x | {r['cpu_us_per_msg']} | {r['publishers_per_s']:,} |"
                 for r in run]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--publishers", type=int, default=1)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    result = bench(args.messages, args.publishers, args.runs)
    print(json.dumps(result, indent=2))
    print()
    print(table(result))


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--sink":
        sink = gmqtt_sink if sys.argv[2] == "gmqtt" else raw_sink
        asyncio.run(sink(int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6]))
    else:
        main()
