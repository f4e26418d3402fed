"""A long fuzz run of the MQTT contract and the serial line (issue 17, "Fuzzing"): 100,000+
inputs, figures printed as JSON and a short table.

Part 1, sans-I/O: generated MQTT messages (valid ones of every channel, valid JSON with one
hostile value, byte-mutated payloads, random JSON and bytes, deep nesting, oversize, bad
topics) through ``devices.contract.decode``; serial frames (valid records of every kind,
flipped bytes, correctly framed hostile content, random bytes, oversize and truncated
frames) as one stream, cut in random chunks, through ``devices.serial.SerialDecoder``.
Invariants: nothing raises; every accepted message has printable text and finite numbers
(what the stores and the JSON answers can carry); the serial decoder never holds more than
a frame and decodes every valid record of the stream exactly once, whatever came before it.

Part 2, live: a gateway in this process on a private Mosquitto, with a serial line on a
pty (the simulated receiver on the master end). Devices publish valid alarms among MQTT
garbage, the receiver raises valid alarms among garbage on the line; both resend what was
not acknowledged, as real ones do. Invariants: every valid alarm is acknowledged as stored
and stored exactly once; no exception is logged and no handler fails; ``/healthz`` answers
200 throughout (polled twice a second).

    .venv/bin/python bench/fuzz_edges.py --inputs 100000 --live-mqtt 20000 --live-serial 5000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import random
import secrets
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "firmware-sim"))

import aiomqtt  # noqa: E402
import httpx  # noqa: E402

from alarms.model import AlarmType  # noqa: E402
from bench.ingest_bench import broker, seed_org  # noqa: E402
from devices.contract import (  # noqa: E402
    AlarmMessage,
    HeartbeatMessage,
    Rejected,
    StatusMessage,
    TelemetryMessage,
    decode,
)
from devices.serial import (  # noqa: E402
    MAX_FRAME,
    FrameError,
    NakReason,
    Reply,
    SerialDecoder,
    crc16,
    encode_ack,
    encode_nak,
    encode_record,
)
from firmware_sim import Backoff  # noqa: E402
from firmware_sim.serial_device import SerialAlarm, SerialReceiverSim  # noqa: E402
from gateway.config import load  # noqa: E402
from gateway.org import OrgStore  # noqa: E402
from gateway.runtime import Gateway  # noqa: E402

PREFIX = "fuzz/trygg/v1"
CHANNELS = ["alarm", "telemetry", "heartbeat", "status"]
KINDS = ["manual", "fall", "smoke", "door", "bed_exit", "inactivity", "water", "test"]
FIELDS_OF = {"alarm": ["ref", "ts", "type", "battery", "position"],
             "telemetry": ["ref", "ts", "metric", "value", "unit"],
             "heartbeat": ["ref", "ts", "battery", "rssi"],
             "status": ["ref", "ts", "state", "firmware"]}
HOSTILE: list[Any] = [
    "\ud800", "a\udfffb", "x\x00y", "\x1b[31m", "\u202e", "\n", "\t", "", " " * 70, "x" * 65,
    "åäö", "😀", 10**400, -(10**400), 2**53, 2**63, -1, 0, 1.5, 1e308, -1e308, 5e-324,
    math.nan, math.inf, -math.inf, [], {}, None, True, False, [[[[[]]]]], "NaN", "1e3",
    {"lat": 91, "lon": 0}, {"lat": "x"}, {"lat": 59.3, "lon": 18.0, "accuracy": -1},
    [1.0] * 70, [math.nan], ["1"],
]
SERIAL_KEYS = ["type", "battery", "rssi", "metric", "value", "unit", "state", "firmware",
               "reason", "x", "TYPE", ""]
SERIAL_VALUES = ["manual", "alien", "", "1e3", "nan", "inf", "-0.1", "1.5", "0." + "9" * 30,
                 "9" * 13, "1,2,", "1," * 70, "1,,2", ",", "-", ".5", "5.", "m" * 40, "f" * 80,
                 "temperature", "online"]
TS = 1_712_345_678_901


# -- generation -------------------------------------------------------------------------------


def _body(channel: str, ref: str, rng: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = {"ref": ref, "ts": TS + rng.randrange(10**6)}
    if channel == "alarm":
        body["type"] = rng.choice(KINDS)
        if rng.random() < 0.3:
            body["battery"] = round(rng.random(), 3)
        if rng.random() < 0.2:
            body["position"] = {"lat": 59.3 + rng.random(), "lon": 18.0, "accuracy": 12.5}
    elif channel == "telemetry":
        body["metric"] = rng.choice(["temperature", "accel", "motion", "door_open"])
        body["value"] = ([rng.uniform(-2, 2) for _ in range(3)] if body["metric"] == "accel"
                         else rng.uniform(-10, 40))
        if rng.random() < 0.5:
            body["unit"] = rng.choice(["C", "g", "m/s²"])
    elif channel == "heartbeat":
        body["battery"] = round(rng.random(), 3)
        body["rssi"] = -rng.randrange(30, 110)
    else:
        body["state"] = rng.choice(["online", "offline", "camera_awake"])
        body["firmware"] = f"{rng.randrange(9)}.{rng.randrange(99)}"
    return body


def _json(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.random()
    if depth > 3 or pick < 0.5:
        return rng.choice([None, True, 1, -1, 1.5, "x", "", "ref", 10**20, math.nan])
    if pick < 0.75:
        return [_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = [*FIELDS_OF["alarm"], *FIELDS_OF["telemetry"], "x", ""]
    return {rng.choice(keys): _json(rng, depth + 1) for _ in range(rng.randrange(5))}


def _mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        if not out:
            break
        op, i = rng.random(), rng.randrange(len(out))
        if op < 0.5:
            out[i] = rng.randrange(256)
        elif op < 0.75:
            del out[i]
        else:
            out[i:i] = bytes([rng.randrange(256)])
    return bytes(out)


def mqtt_input(rng: random.Random, n: int, devices: list[str]) -> tuple[str, str, bytes]:
    """(kind, topic, payload) of one generated MQTT message."""
    channel = rng.choice(CHANNELS)
    device = rng.choice(devices)
    ref = f"g{n}"
    kind = rng.choices(
        ["valid", "hostile", "mutated", "json", "bytes", "deep", "oversize", "bad_topic"],
        weights=[20, 35, 15, 10, 8, 4, 3, 5])[0]
    topic = f"{PREFIX}/{device}/{channel}"
    if kind == "valid":
        payload = json.dumps(_body(channel, ref, rng)).encode()
    elif kind == "hostile":
        body = _body(channel, ref, rng)
        body[rng.choice(FIELDS_OF[channel])] = rng.choice(HOSTILE)
        payload = json.dumps(body, ensure_ascii=rng.random() < 0.5).encode(
            "utf-8", "surrogatepass")
    elif kind == "mutated":
        payload = _mutate(json.dumps(_body(channel, ref, rng)).encode(), rng)
    elif kind == "json":
        payload = json.dumps(_json(rng)).encode()
    elif kind == "bytes":
        payload = rng.randbytes(rng.randrange(300))
    elif kind == "deep":
        payload = b'{"ref": "' + ref.encode() + b'", "ts": 1, "type": ' + b"[" * rng.choice(
            [100, 1000, 100_000])
    elif kind == "oversize":
        body = _body(channel, ref, rng)
        body["pad"] = "x" * rng.choice([65_600, 200_000])
        payload = json.dumps(body).encode()
    else:
        topic = rng.choice([f"{PREFIX}/{device}/ack", f"{PREFIX}/{device}/alarms",
                            f"{PREFIX}/dev ice/alarm", f"{PREFIX}/{'d' * 70}/alarm",
                            f"{PREFIX}/{device}/alarm/x", f"{PREFIX}/ghost-{n}/alarm",
                            f"other/{device}/alarm"])
        payload = json.dumps(_body("alarm", ref, rng)).encode()
    return kind, topic, payload


def framed(body: bytes) -> bytes:
    """``body`` as a frame with a correct checksum: only its content can be refused."""
    return b"\x02" + body + b"*" + f"{crc16(body):04X}".encode() + b"\x03\r\n"


def serial_garbage(rng: random.Random, n: int, devices: list[str]) -> tuple[str, bytes]:
    """(kind, bytes) of one piece of generated garbage for the line."""
    device = rng.choice(devices)
    ref = f"g{n}"
    record = encode_record(AlarmMessage(device, ref, TS, AlarmType.MANUAL, None))
    kind = rng.choices(["bytes", "flipped", "hostile", "grammar", "oversize", "truncated",
                        "echo", "unknown_device", "non_ascii"],
                       weights=[10, 15, 35, 10, 5, 10, 5, 5, 5])[0]
    if kind == "bytes":
        data = rng.randbytes(rng.randrange(200))
    elif kind == "flipped":
        data = _mutate(record, rng)
    elif kind == "hostile":
        fields = ";".join(f"{rng.choice(SERIAL_KEYS)}={rng.choice(SERIAL_VALUES)}"
                          for _ in range(rng.randrange(5)))
        data = framed(f"1|{rng.choice('AAHHTTSSKNXa')}|{device}|{ref}|{TS}|{fields}".encode())
    elif kind == "grammar":
        data = framed(rng.choice([
            f"2|A|{device}|{ref}|1|type=manual", f"1|A|{device}|{ref}|1e3|type=manual",
            f"1|A||{ref}|1|type=manual", f"1|A|{device}||1|type=manual", "1|A", "", "|||||",
            f"1|A|{device}|{ref}|99999999999999999999|type=manual",
        ]).encode())
    elif kind == "oversize":
        data = b"\x02" + b"A" * rng.randint(MAX_FRAME, 3 * MAX_FRAME) + b"\x03"
    elif kind == "truncated":
        data = record[:rng.randrange(1, len(record))]
    elif kind == "echo":
        data = rng.choice([encode_ack(device, ref), encode_nak(None, None, NakReason.BAD_FRAME)])
    elif kind == "unknown_device":
        data = encode_record(AlarmMessage("rx-ghost", ref, TS, AlarmType.MANUAL, None))
    else:
        data = framed(f"1|A|{device}|{ref}|1|type=m\u00e4nual".encode("latin-1"))
    return kind, data


def serial_valid(rng: random.Random, n: int, devices: list[str]) -> bytes:
    """A valid record of any kind; its ref starts with ``v``."""
    device, ref = rng.choice(devices), f"v{n}"
    options: list[AlarmMessage | TelemetryMessage | HeartbeatMessage | StatusMessage] = [
        AlarmMessage(device, ref, TS, rng.choice(list(AlarmType)), round(rng.random(), 2)),
        TelemetryMessage(device, ref, TS, "temperature", 21.5, "C"),
        TelemetryMessage(device, ref, TS, "accel", (0.1, -0.2, 9.81), None),
        HeartbeatMessage(device, ref, TS, 0.5, -70.0),
        StatusMessage(device, ref, TS, "online", "2.1"),
    ]
    return encode_record(rng.choice(options))


# -- part 1: sans-I/O ------------------------------------------------------------------------


def _clean(value: object) -> bool:
    """Whether every string of a decoded message is printable and every number finite."""
    if dataclasses.is_dataclass(value):
        return all(_clean(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, tuple):
        return all(_clean(item) for item in value)
    if isinstance(value, str):
        return value.isprintable()
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def sans_io(count: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    devices = [f"dev-{i}" for i in range(20)]
    mqtt: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    started = time.perf_counter()
    for n in range(count):
        kind, topic, payload = mqtt_input(rng, n, devices)
        kinds[kind] += 1
        message = decode(topic, payload, PREFIX)
        if isinstance(message, Rejected):
            mqtt[f"rejected_{message.reason.value}"] += 1
        else:
            assert _clean(message), (topic, payload[:200], message)
            mqtt[f"accepted_{type(message).__name__}"] += 1
    mqtt_s = time.perf_counter() - started

    serial: Counter[str] = Counter()
    decoder = SerialDecoder()
    stream = bytearray()
    valid_refs: list[str] = []
    for n in range(count):
        if rng.random() < 0.3:
            frame = serial_valid(rng, n, devices)
            valid_refs.append(f"v{n}")
            stream += frame
        else:
            _, data = serial_garbage(rng, n, devices)
            stream += data
    started = time.perf_counter()
    decoded: Counter[str] = Counter()
    at = 0
    max_buffered = 0
    while at < len(stream):
        step = rng.randint(1, 700)
        for item in decoder.feed(bytes(stream[at:at + step])):
            if isinstance(item, FrameError):
                serial[f"frame_error_{item.reason.value}"] += 1
            elif isinstance(item, Reply):
                serial["reply"] += 1
            else:
                assert _clean(item), item
                serial[f"record_{type(item).__name__}"] += 1
                if item.ref.startswith("v"):
                    decoded[item.ref] += 1
        max_buffered = max(max_buffered, decoder.buffered)
        at += step
    serial_s = time.perf_counter() - started
    assert max_buffered <= MAX_FRAME
    # Every valid record, whatever garbage came before it, is decoded exactly once.
    assert all(decoded[ref] == 1 for ref in valid_refs), "a valid record lost or doubled"
    assert set(decoded) == set(valid_refs)
    return {
        "mqtt": {"inputs": count, "seconds": round(mqtt_s, 2),
                 "inputs_per_s": round(count / mqtt_s), "exceptions": 0,
                 "accepted_with_unprintable_text_or_nonfinite_number": 0,
                 "generated": dict(kinds.most_common()),
                 "outcomes": dict(mqtt.most_common())},
        "serial": {"inputs": count, "stream_bytes": len(stream), "seconds": round(serial_s, 2),
                   "inputs_per_s": round(count / serial_s), "exceptions": 0,
                   "valid_records": len(valid_refs),
                   "valid_records_decoded_exactly_once": len(valid_refs),
                   "max_buffered_bytes": max_buffered,
                   "outcomes": dict(serial.most_common())},
    }


# -- part 2: live ----------------------------------------------------------------------------


class Errors(logging.Handler):
    """Every record at ERROR or above, or with an exception."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(f"{record.name}: {record.getMessage()}"[:300])


def _sample(gw: Gateway, name: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for family in gw.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                values[",".join(sample.labels.values()) or "-"] = sample.value
    return values


async def live(mqtt_count: int, serial_count: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed + 1)
    errors = Errors()
    logging.getLogger().addHandler(errors)
    logging.getLogger().setLevel(logging.WARNING)
    mqtt_devices = [f"fz-{i:03d}" for i in range(20)]
    serial_devices = ["rx-a", "rx-b", "rx-c"]
    with broker() as port, tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "gw"
        data_dir.mkdir()
        seed_org(data_dir, [*mqtt_devices, *serial_devices])
        org = OrgStore(data_dir / "org.sqlite3")
        sim = SerialReceiverSim([*serial_devices, "rx-ghost"], link_path=data_dir / "ttyFUZZ",
                                backoff=Backoff(0.05, 1.0), seed=seed)
        async with sim:
            settings = load(
                None, gateway_id=f"fuzz-{uuid.uuid4().hex[:6]}", data_dir=data_dir,
                secret_key=secrets.token_urlsafe(36),
                mqtt={"host": "127.0.0.1", "port": port, "prefix": PREFIX},
                http={"host": "127.0.0.1", "port": 0},
                serial=[{"name": "fz", "url": str(sim.path), "baudrate": 115200}])
            async with Gateway(settings, org=org) as gw:
                await asyncio.wait_for(gw.wait_connected(), 10)
                result = await _live_run(gw, port, sim, mqtt_devices, serial_devices,
                                         mqtt_count, serial_count, rng)
        org.close()
    logging.getLogger().removeHandler(errors)
    result["logged_errors"] = len(errors.records)
    result["logged_error_examples"] = errors.records[:5]
    return result


async def _live_run(gw: Gateway, port: int, sim: SerialReceiverSim, mqtt_devices: list[str],
                    serial_devices: list[str], mqtt_count: int, serial_count: int,
                    rng: random.Random) -> dict[str, Any]:
    await asyncio.wait_for(gw.serial_links["fz"].wait_up(), 10)
    health: Counter[int] = Counter()
    stop = asyncio.Event()

    async def poll_health() -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as client:
            while not stop.is_set():
                health[(await client.get("/healthz")).status_code] += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)

    acks: dict[tuple[str, str], list[str]] = {}
    sent_ts: dict[tuple[str, str], bytes] = {}
    generated: Counter[str] = Counter()

    async def listen(client: aiomqtt.Client) -> None:
        async for message in client.messages:
            # Our own garbage on ack topics comes back too: only the gateway's acks count.
            try:
                body = json.loads(message.payload)
            except ValueError:
                continue
            if isinstance(body, dict) and "status" in body and "ref" in body:
                device = str(message.topic).split("/")[-2]
                acks.setdefault((device, str(body["ref"])), []).append(str(body["status"]))

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group, \
            aiomqtt.Client("127.0.0.1", port, identifier=f"fuzz-{uuid.uuid4().hex[:6]}"
                           ) as client:
        poller = group.create_task(poll_health(), name="health poller")
        await client.subscribe(f"{PREFIX}/+/ack", qos=1)
        listener = group.create_task(listen(client), name="ack listener")
        # MQTT: valid alarms among garbage, from the devices' own topics.
        for n in range(mqtt_count):
            if rng.random() < 0.2:
                # A prefix no mutation of a garbage ref ("g<n>") can produce.
                device, ref = rng.choice(mqtt_devices), f"valid-{n}"
                payload = json.dumps({"ref": ref, "ts": TS + n, "type": rng.choice(KINDS)})
                sent_ts[(device, ref)] = payload.encode()
                await client.publish(f"{PREFIX}/{device}/alarm", payload.encode(), qos=1)
                generated["valid_alarm"] += 1
            else:
                kind, topic, data = mqtt_input(rng, n, mqtt_devices)
                generated[kind] += 1
                await client.publish(topic, data, qos=1)
        # Serial: valid alarms among garbage on the line (the receiver resends until ACKed).
        serial_alarms: list[SerialAlarm] = []
        for n in range(serial_count):
            if rng.random() < 0.2:
                serial_alarms.append(sim.raise_alarm(rng.choice(serial_devices),
                                                     rng.choice([AlarmType.MANUAL,
                                                                 AlarmType.FALL])))
            else:
                sim.send_raw(serial_garbage(rng, n, serial_devices)[1])
            if n % 20 == 0:
                await asyncio.sleep(0.005)  # ~4,000 items/s: the line's pace, not the tty's
        sent_s = time.perf_counter() - started
        # Resend what was not acked, as a device does (the same message: same bytes).
        resent = 0
        for _ in range(10):
            await asyncio.sleep(1.0)
            missing = [k for k in sent_ts if "stored" not in acks.get(k, [])]
            if not missing:
                break
            for device, ref in missing:
                await client.publish(f"{PREFIX}/{device}/alarm", sent_ts[(device, ref)], qos=1)
                resent += 1
        serial_settled = await sim.wait_settled(serial_alarms, timeout=60)
        elapsed = time.perf_counter() - started
        stop.set()
        await poller
        listener.cancel()

    def stored_once(device: str, ref: str) -> bool:
        return sum(1 for a in gw.core.alarms.values()
                   if (a.device_id, a.ref) == (device, ref)
                   or any((r.device_id, r.ref) == (device, ref) for r in a.attached)) == 1

    mqtt_stored = sum("stored" in acks.get(k, []) for k in sent_ts)
    mqtt_once = sum(stored_once(*k) for k in sent_ts)
    serial_stored = sum(a.status == "stored" for a in serial_alarms)
    serial_once = sum(stored_once(a.device_id, a.ref) for a in serial_alarms)
    link = gw.serial_links["fz"].stats
    return {
        "mqtt": {"messages": mqtt_count, "generated": dict(generated.most_common()),
                 "valid_alarms": len(sent_ts), "acked_stored": mqtt_stored,
                 "stored_exactly_once": mqtt_once, "resent_after_no_ack": resent},
        "serial": {"items": serial_count, "valid_alarms": len(serial_alarms),
                   "settled": serial_settled, "acked_stored": serial_stored,
                   "stored_exactly_once": serial_once,
                   "receiver_resends": sim.stats.resends,
                   "frame_errors": dict(link.frame_errors), "naks": dict(link.naks),
                   "replies_dropped": link.replies_dropped,
                   "link_handler_errors": link.handler_errors},
        "seconds_sending": round(sent_s, 1),
        "seconds_total": round(elapsed, 1),
        "rejected_by_reason": _sample(gw, "trygg_rejected_messages_total"),
        "handler_errors": _sample(gw, "trygg_handler_errors_total"),
        "healthz": {str(code): count for code, count in sorted(health.items())},
        "health_at_end": gw.health()["status"],
    }


# -- report ----------------------------------------------------------------------------------


def table(report: dict[str, Any]) -> str:
    rows = [("what", "inputs", "figure")]
    s = report["sans_io"]
    rows.append(("MQTT decode (sans-I/O)", f"{s['mqtt']['inputs']:,}",
                 f"0 exceptions, {s['mqtt']['inputs_per_s']:,}/s, accepted all clean"))
    rows.append(("serial decoder (sans-I/O, random chunks)", f"{s['serial']['inputs']:,}",
                 f"0 exceptions, {s['serial']['inputs_per_s']:,}/s, "
                 f"{s['serial']['valid_records']:,} valid records each decoded once, "
                 f"≤ {s['serial']['max_buffered_bytes']} B buffered"))
    if "live" in report:
        live_ = report["live"]
        m, se = live_["mqtt"], live_["serial"]
        rows.append(("live MQTT into a gateway", f"{m['messages']:,}",
                     f"{m['valid_alarms']} valid alarms: {m['acked_stored']} acked stored, "
                     f"{m['stored_exactly_once']} stored exactly once"))
        rows.append(("live serial line into a gateway", f"{se['items']:,}",
                     f"{se['valid_alarms']} valid alarms: {se['acked_stored']} acked stored, "
                     f"{se['stored_exactly_once']} stored exactly once"))
        rows.append(("live: logged errors / handler errors / /healthz", "",
                     f"{live_['logged_errors']} / {sum(live_['handler_errors'].values()):.0f}"
                     f" / {live_['healthz']}"))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["| " + " | ".join(r[i].ljust(width[i]) for i in range(3)) + " |" for r in rows]
    lines.insert(1, "| " + " | ".join("-" * w for w in width) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--inputs", type=int, default=100_000,
                        help="sans-I/O inputs per codec (MQTT, serial)")
    parser.add_argument("--live-mqtt", type=int, default=20_000)
    parser.add_argument("--live-serial", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    report: dict[str, Any] = {"sans_io": sans_io(args.inputs, args.seed)}
    if args.live_mqtt or args.live_serial:
        report["live"] = asyncio.run(live(args.live_mqtt, args.live_serial, args.seed))
    print(json.dumps(report, indent=2, ensure_ascii=False))
    print()
    print(table(report))


if __name__ == "__main__":
    main()
