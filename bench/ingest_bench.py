"""Ingest throughput: the gateway's full telemetry pipeline against a bare subscriber.

    .venv/bin/python bench/ingest_bench.py [--messages 60000] [--publishers 2]

On a private Mosquitto (``set_tcp_nodelay true``, ``max_queued_messages 2000000``):

* live: ``--publishers`` processes publish ``--messages`` QoS 1 telemetry messages from 1,000
  devices as fast as the broker takes them (a raw MQTT writer with a PUBACK-reader thread,
  up to 5,000 in flight), while the consumer runs. Rate = messages / (first publish .. last message consumed).
* backlog drain: the consumer's persistent session exists but it is down; the same messages
  are published (queued by the broker), then the consumer starts and drains them. Rate =
  messages / (first .. last message consumed), process start-up excluded (reported apart).

Consumers, each in its own process on the same broker: the ceilings, bare subscribers that
only count (``aiomqtt``, the gateway's client library, and raw ``paho``), and the gateway
(``trygg run``: decode, validate, supervision, device table, telemetry sink into SQLite),
whose progress is read from ``/metrics``: its rate counts a message once it is stored in the
SQLite sink (``trygg_telemetry_written_total``, or shed), the decode-only rate
(``trygg_ingest_messages_total``) is reported beside it. Sensor rules run on this path too
(``gateway/sensors.py``: telemetry batched into ``SensorRuleEngine``), when the gateway
version under test has them wired in. Prints JSON, then
a markdown table. Importable: ``run.py`` calls ``bench()``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PYTHON = sys.executable
DEVICES = 1000
# Messages a publisher keeps unacknowledged: enough to keep the broker busy while the
# PUBACKs travel back, far below the broker's queue (and below the 65,535 packet ids).
PUBLISH_INFLIGHT = 5000
# Polling period of the consumers' progress (gateway /metrics): the rate's error is at most
# one period over runs of several seconds.
POLL_S = 0.05
# Any one run is bounded: a consumer that stops making progress for STALL_S ends it.
STALL_S = 15.0
RUN_LIMIT_S = 300.0


# -- shared helpers (also used by recovery_bench and run.py) ---------------------------------


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_broker(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A private Mosquitto: Nagle off, a queue deep enough for the whole backlog."""
    port = free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
        "max_queued_messages 2000000\nmax_queued_bytes 0\npersistence false\n"
        "log_type error\n"
    )
    proc = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    for _ in range(200):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


@contextlib.contextmanager
def broker() -> Iterator[int]:
    """A private broker for the block; yields its port."""
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_broker(Path(tmp))
        try:
            yield port
        finally:
            proc.terminate()
            proc.wait(10)


def device_ids(n: int = DEVICES, tag: str = "ing") -> list[str]:
    """Provisioned device ids."""
    return [f"{tag}-{i:04d}" for i in range(n)]


def seed_org(data_dir: Path, devices: list[str], *, heartbeat_s: float = 86_400.0,
             password: str = "bench-password") -> None:
    """One team, one staff member (``cleo``), one recipient per device, every device.

    The long heartbeat keeps supervision quiet: devices that stop sending between runs
    would otherwise raise technical alarms that are not what is measured.
    """
    from gateway.auth import hash_password
    from gateway.org import DeviceInfo, OrgStore, RecipientInfo, StaffMember, Team

    org = OrgStore(data_dir / "org.sqlite3")
    try:
        org.put_team(Team("team-b", "Lag B"))
        org.put_staff(StaffMember("cleo", "cleo", "Cleo", "staff", ("team-b",),
                                  hash_password(password)))
        for device in devices:
            org.put_recipient(RecipientInfo(f"r-{device}", device, "Gatan 1", "team-b"))
            org.put_device(DeviceInfo(device, "alarm_unit", f"r-{device}",
                                      heartbeat_s=heartbeat_s))
    finally:
        org.close()


def write_config(data_dir: Path, mqtt_port: int, prefix: str, http_port: int,
                 gateway_id: str = "bench") -> Path:
    """A ``trygg run`` TOML for the bench."""
    path = data_dir / "trygg.toml"
    path.write_text(
        f'gateway_id = "{gateway_id}"\ndata_dir = "{data_dir}"\nsecret_key = "{secrets.token_urlsafe(48)}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\nprefix = "{prefix}"\n'
        f'[http]\nhost = "127.0.0.1"\nport = {http_port}\n'
    )
    return path


def start_gateway(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``trygg run`` as its own process (logs to ``log``)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [PYTHON, "-m", "gateway.cli", "--log-level", "WARNING", "run", "--config",
             str(config)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal a child and reap it (killed if it does not stop within 20 s)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def metrics(http_port: int, timeout: float = 2.0) -> dict[str, float]:
    """The gateway's Prometheus metrics as {name{labels}: value}; {} if unreachable."""
    import httpx

    try:
        text = httpx.get(f"http://127.0.0.1:{http_port}/metrics", timeout=timeout).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def ingested(values: dict[str, float], channel: str = "telemetry") -> int:
    """Messages the gateway decoded on a channel."""
    return int(values.get(f'trygg_ingest_messages_total{{channel="{channel}"}}', 0))


def wait_healthy(http_port: int, proc: subprocess.Popen[bytes], limit: float = 60.0) -> float:
    """Block until ``/healthz`` answers 200; returns the seconds it took."""
    import httpx

    began = time.monotonic()
    while time.monotonic() - began < limit:
        if proc.poll() is not None:
            raise RuntimeError("gateway exited")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=1).status_code == 200:
                return time.monotonic() - began
        time.sleep(0.02)
    raise RuntimeError("gateway not healthy")


def load_avg() -> str:
    """The 1/5/15-minute load average (other work on the machine skews every figure)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- publishers ------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: bytes) -> bytes:
    return len(text).to_bytes(2, "big") + text


def _connect_packet(client_id: str) -> bytes:
    # MQTT 3.1.1 CONNECT: protocol "MQTT" level 4, clean session, keep-alive 60 s.
    body = _string(b"MQTT") + b"\x04\x02" + (60).to_bytes(2, "big") + _string(client_id.encode())
    return b"\x10" + _varint(len(body)) + body


def _publish_packet(topic: bytes, payload: bytes, packet_id: int) -> bytes:
    # PUBLISH, QoS 1 (0x32): topic, packet id, payload.
    body = _string(topic) + packet_id.to_bytes(2, "big") + payload
    return b"\x32" + _varint(len(body)) + body


def _publish_packet_qos0(topic: bytes, payload: bytes, packet_id: int) -> bytes:
    # PUBLISH, QoS 0 (0x30): topic, payload (no packet id).
    body = _string(topic) + payload
    return b"\x30" + _varint(len(body)) + body


def _room(sent: int, acked: list[int]) -> bool:
    return sent - acked[0] < PUBLISH_INFLIGHT


def publisher_main(port: int, prefix: str, count: int, offset: int, devices: int,
                   rate: float = 0.0) -> None:
    """Child process: publish ``count`` QoS 1 telemetry messages as fast as the broker takes.

    A raw MQTT 3.1.1 writer, not a client library: packets are encoded up front and written
    in batches, and a reader thread counts PUBACKs, keeping at most ``PUBLISH_INFLIGHT``
    unacknowledged. A library client (paho) managed ~2,000 msg/s per process on this
    machine, well below what the consumers take; this one leaves the CPU to the consumer
    under test. With ``rate`` > 0 it is paced at that many messages per second instead.
    """
    ids = device_ids(devices)
    now_ms = int(time.time() * 1000)
    qos = _qos()
    encode = _publish_packet if qos == 1 else _publish_packet_qos0
    packets = [
        encode(
            f"{prefix}/{ids[(offset + i) % devices]}/telemetry".encode(),
            b'{"ref":"b%d","ts":%d,"metric":"temperature","value":21.5,"unit":"C"}'
            % (offset + i, now_ms + i),
            i % 65535 + 1,
        )
        for i in range(count)
    ]
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(_connect_packet(f"pub-{os.getpid()}-{offset}"))
    connack = b""
    while len(connack) < 4:
        connack += sock.recv(4 - len(connack))
    acked = [0]
    window = threading.Condition()

    def read_acks() -> None:
        pending = 0  # bytes of PUBACKs (4 bytes each) received
        while acked[0] < count:
            data = sock.recv(65536)
            if not data:
                return
            pending += len(data)
            with window:
                acked[0] = pending // 4
                window.notify_all()

    reader = threading.Thread(target=read_acks, name="pubacks", daemon=True)
    if qos == 0:
        # QoS 0: nothing comes back; the socket's own back-pressure paces the writer.
        acked[0] = count
    else:
        reader.start()
    batch = 200
    began = time.time()
    for n in range(0, count, batch):
        if rate > 0:
            ahead = began + n / rate - time.time()
            if ahead > 0:
                time.sleep(ahead)
        with window:
            window.wait_for(functools.partial(_room, n, acked), RUN_LIMIT_S)
        sock.sendall(b"".join(packets[n : n + batch]))
    queued = time.time()
    if qos == 1:
        reader.join(RUN_LIMIT_S)
    ended = time.time()
    with contextlib.suppress(OSError):
        sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()
    print(json.dumps({"sent": count, "acked": acked[0], "t0": began, "queued": queued,
                      "t1": ended}), flush=True)


def spawn_publisher(port: int, prefix: str, count: int, offset: int = 0,
                    rate: float = 0.0) -> subprocess.Popen[bytes]:
    """One publisher process (see ``publisher_main``); it prints a JSON report at the end."""
    return subprocess.Popen([PYTHON, __file__, "--publisher", str(port), prefix, str(count),
                             str(offset), str(DEVICES), str(rate)], stdout=subprocess.PIPE)


def publish(port: int, prefix: str, total: int, processes: int) -> dict[str, Any]:
    """Run ``processes`` publishers for ``total`` messages; their combined rate."""
    share = total // processes
    procs = [spawn_publisher(port, prefix, share, n * share) for n in range(processes)]
    reports = []
    for proc in procs:
        out, _ = proc.communicate(timeout=RUN_LIMIT_S + 30)
        reports.append(json.loads(out))
    t0 = min(r["t0"] for r in reports)
    t1 = max(r["t1"] for r in reports)
    acked = sum(r["acked"] for r in reports)
    return {"processes": processes, "messages": share * processes, "acked": acked,
            "t0": t0, "t1": t1, "seconds": round(t1 - t0, 3),
            "per_s": round(acked / (t1 - t0))}


class Background:
    """``publish`` in a thread, so the caller can watch a consumer meanwhile."""

    def __init__(self, port: int, prefix: str, total: int, processes: int) -> None:
        self.result: dict[str, Any] = {}
        self.started = time.time()
        self._thread = threading.Thread(
            target=self._run, args=(port, prefix, total, processes), daemon=True)
        self._thread.start()

    def _run(self, port: int, prefix: str, total: int, processes: int) -> None:
        self.result = publish(port, prefix, total, processes)

    def join(self) -> dict[str, Any]:
        """Wait for the publishers; their report."""
        self._thread.join(RUN_LIMIT_S + 60)
        return self.result


# -- bare subscribers (the ceilings) ---------------------------------------------------------


def sink_main(kind: str, port: int, prefix: str, expected: int, client_id: str,
              prime: bool) -> None:
    """Child process: count messages until ``expected``; print first/last receive times.

    ``prime``: only create the persistent session (subscribe) and leave.
    """
    if kind == "paho":
        _paho_sink(port, prefix, expected, client_id, prime)
    else:
        asyncio.run(_aiomqtt_sink(port, prefix, expected, client_id, prime))


def _report(count: int, first: float, last: float, connected: float,
            cpu_at_first: float | None = None) -> None:
    """The sink's counts; with ``cpu_at_first`` (``process_time`` at the first message) the
    CPU seconds it spent from the first message to the end: what the client costs."""
    cpu = None if cpu_at_first is None else round(time.process_time() - cpu_at_first, 4)
    print(json.dumps({"received": count, "first": first, "last": last,
                      "connected": connected, "cpu_s": cpu}), flush=True)


async def _aiomqtt_sink(port: int, prefix: str, expected: int, client_id: str,
                        prime: bool) -> None:
    import aiomqtt

    count, first, last, cpu = 0, 0.0, 0.0, 0.0
    async with aiomqtt.Client("127.0.0.1", port, identifier=client_id, clean_session=False,
                              socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
                              ) as client:
        connected = time.time()
        await client.subscribe(f"{prefix}/+/telemetry", qos=1)
        print("ready", flush=True)
        if prime:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RUN_LIMIT_S):
                async for _ in client.messages:
                    last = time.time()
                    if count == 0:
                        first, cpu = last, time.process_time()
                    count += 1
                    if count >= expected:
                        break
    _report(count, first, last, connected, cpu)


def _paho_sink(port: int, prefix: str, expected: int, client_id: str, prime: bool) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    state = {"count": 0, "first": 0.0, "last": 0.0, "cpu": 0.0}
    subscribed = threading.Event()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        now = time.time()
        if state["count"] == 0:
            state["first"], state["cpu"] = now, time.process_time()
        state["last"] = now
        state["count"] += 1

    def on_subscribe(*_: Any) -> None:
        subscribed.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=False)
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.connect("127.0.0.1", port, keepalive=60)
    connected = time.time()
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.subscribe(f"{prefix}/+/telemetry", qos=1)
    limit = time.monotonic() + RUN_LIMIT_S
    while not subscribed.is_set() and time.monotonic() < limit:
        client.loop(0.1)
    print("ready", flush=True)
    if not prime:
        while state["count"] < expected and time.monotonic() < limit:
            client.loop(0.1)
    client.disconnect()
    if not prime:
        _report(int(state["count"]), state["first"], state["last"], connected, state["cpu"])


def _spawn_sink(kind: str, port: int, prefix: str, expected: int, client_id: str,
                prime: bool = False) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [PYTHON, __file__, "--sink", kind, str(port), prefix, str(expected), client_id,
         "prime" if prime else "run"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError(f"{kind} sink did not start")
    return proc


def _sink_result(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=RUN_LIMIT_S + 30)
    result: dict[str, Any] = json.loads(out)
    return result


def ceiling_live(kind: str, port: int, total: int, publishers: int) -> dict[str, Any]:
    """A bare subscriber consuming while the publishers run."""
    prefix = f"bench/ceil-{kind}-{os.getpid()}-{time.monotonic_ns()}"
    sink = _spawn_sink(kind, port, prefix, total, f"sink-{kind}-{time.monotonic_ns()}")
    pub = publish(port, prefix, total, publishers)
    got = _sink_result(sink)
    seconds = got["last"] - pub["t0"]
    return {"consumer": f"bare {kind} subscriber", "received": got["received"],
            "seconds": round(seconds, 3), "per_s": round(got["received"] / seconds),
            "cpu_us_per_msg": cpu_per_message(got), "publishers": pub}


def cpu_per_message(got: dict[str, Any]) -> float | None:
    """A sink's CPU µs per message, first message to last (None if it did not say)."""
    if got.get("cpu_s") is None or got["received"] < 2:
        return None
    return round(float(got["cpu_s"]) * 1e6 / int(got["received"]), 2)


def ceiling_backlog(kind: str, port: int, total: int, publishers: int) -> dict[str, Any]:
    """A bare subscriber draining a backlog queued for its persistent session."""
    prefix = f"bench/drain-{kind}-{os.getpid()}-{time.monotonic_ns()}"
    client_id = f"drain-{kind}-{time.monotonic_ns()}"
    _spawn_sink(kind, port, prefix, total, client_id, prime=True).wait(30)
    pub = publish(port, prefix, total, publishers)
    started = time.time()
    got = _sink_result(_spawn_sink(kind, port, prefix, total, client_id))
    seconds = got["last"] - got["first"]
    return {"consumer": f"bare {kind} subscriber", "received": got["received"],
            "seconds": round(seconds, 3), "per_s": round(got["received"] / seconds),
            "startup_s": round(got["first"] - started, 3), "publishers": pub}


# -- profiling -------------------------------------------------------------------------------

# Set by ``--profile DIR``: py-spy samples the gateway while it ingests.
PROFILE_DIR: list[Path] = []
PY_SPY = Path(PYTHON).parent / "py-spy"


def start_profile(pid: int, name: str) -> subprocess.Popen[bytes] | None:
    """``py-spy record`` on ``pid`` until stopped: raw collapsed stacks, 100 Hz.

    ``--gil``: only the thread holding the GIL, i.e. where the interpreter's one core goes
    (idle writer threads waiting on their queues would otherwise dilute every share);
    ``--nonblocking``: the target is not paused per sample, so it runs at nearly full speed
    (the profiled run is still a separate run, never one of the measured ones).
    """
    if not PROFILE_DIR or not PY_SPY.exists():
        return None
    out = PROFILE_DIR[0] / f"{name}.txt"
    return subprocess.Popen(
        [str(PY_SPY), "record", "--pid", str(pid), "--rate", "100", "--format", "raw",
         "--gil", "--nonblocking",
         "--duration", str(int(RUN_LIMIT_S)), "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profile(spy: subprocess.Popen[bytes] | None, name: str) -> dict[str, Any] | None:
    """Stop py-spy (it writes on SIGINT) and summarise the top frames."""
    if spy is None:
        return None
    spy.send_signal(signal.SIGINT)
    spy.wait(60)
    return summarise(PROFILE_DIR[0] / f"{name}.txt")


def summarise(path: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    if not path.exists():
        return {"error": f"no profile at {path}"}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [f.strip() for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def ranked(table: dict[str, int]) -> list[tuple[str, float]]:
        rows = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [(frame, round(100 * n / total, 1)) for frame, n in rows]

    return {"samples": total, "file": str(path), "self_pct": ranked(own),
            "inclusive_pct": ranked({k: v for k, v in inclusive.items()
                                     if "/work/main/" in k or "(gateway/" in k
                                     or "(alarms/" in k or "(devices/" in k
                                     or "aiomqtt" in k or "paho" in k})}


# -- the gateway -----------------------------------------------------------------------------


class GatewayUnderTest:
    """A seeded ``trygg run`` on the private broker, with its own prefix and data dir."""

    def __init__(self, directory: Path, mqtt_port: int, tag: str) -> None:
        self.data_dir = directory / tag
        self.data_dir.mkdir(parents=True)
        self.prefix = f"bench/{tag}-{os.getpid()}/trygg/v1"
        self.http_port = free_port()
        seed_org(self.data_dir, device_ids())
        self.config = write_config(self.data_dir, mqtt_port, self.prefix, self.http_port,
                                   gateway_id=f"bench-{tag}")
        self.log = self.data_dir / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        """Start the process (not waiting for it)."""
        self.proc = start_gateway(self.config, self.log)
        return self.proc

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the process."""
        if self.proc is not None:
            stop(self.proc, sig)

    def watch(self, total: int) -> dict[str, Any]:
        """Poll /metrics until ``total`` telemetry messages were ingested and stored.

        Ingested: decoded and handled (``trygg_ingest_messages_total``); stored: written to
        the SQLite sink, or shed (``trygg_telemetry_written_total`` +
        ``trygg_telemetry_shed_total``).
        Returns the first poll that saw progress and when each count reached ``total``.
        """
        first: tuple[float, int] | None = None
        last_progress = time.time()
        seen = stored = 0
        ingested_at: float | None = None
        stored_at: float | None = None
        values: dict[str, float] = {}
        limit = time.monotonic() + RUN_LIMIT_S
        while time.monotonic() < limit:
            values = metrics(self.http_port, timeout=5) or values
            now = time.time()
            count = ingested(values)
            done = int(values.get("trygg_telemetry_written_total", 0)
                       + values.get("trygg_telemetry_shed_total", 0))
            if count > seen or done > stored:
                last_progress = now
                if first is None:
                    first = (now, count)
            seen, stored = max(seen, count), max(stored, done)
            if ingested_at is None and seen >= total:
                ingested_at = now
            if stored_at is None and stored >= total:
                stored_at = now
            # Before the first message the clock is the start-up limit, not the stall one.
            stalled = now - last_progress > (STALL_S if first is not None else 120.0)
            if stored_at is not None or stalled:
                break
            time.sleep(POLL_S)
        return {"first": first, "ingested_at": ingested_at or last_progress,
                "stored_at": stored_at or last_progress, "ingested": seen, "stored": stored,
                "metrics": values}


def gateway_live(directory: Path, port: int, total: int, publishers: int,
                 profile: bool = False) -> dict[str, Any]:
    """The gateway consuming while the publishers run (``profile``: under py-spy)."""
    name = "gateway-live-profiled" if profile else "gateway-live"
    gw = GatewayUnderTest(directory, port, name)
    proc = gw.start()
    try:
        wait_healthy(gw.http_port, proc)
        spy = start_profile(proc.pid, name) if profile else None
        background = Background(port, gw.prefix, total, publishers)
        seen = gw.watch(total)
        pub = background.join()
        profiled = stop_profile(spy, name)
    finally:
        gw.stop()
    stored_s = seen["stored_at"] - pub["t0"]
    ingest_s = seen["ingested_at"] - pub["t0"]
    return {"consumer": "gateway (trygg run)", "received": seen["ingested"],
            "seconds": round(stored_s, 3), "per_s": round(seen["stored"] / stored_s),
            "ingest_per_s": round(seen["ingested"] / ingest_s),
            "telemetry_written": seen["metrics"].get("trygg_telemetry_written_total"),
            "telemetry_shed": seen["metrics"].get("trygg_telemetry_shed_total"),
            "pid": proc.pid, "publishers": pub, "profile": profiled}


def gateway_backlog(directory: Path, port: int, total: int, publishers: int) -> dict[str, Any]:
    """The gateway draining what the broker queued for its session while it was down."""
    gw = GatewayUnderTest(directory, port, "drain")
    proc = gw.start()
    try:
        wait_healthy(gw.http_port, proc)  # creates the persistent session
    finally:
        gw.stop()
    pub = publish(port, gw.prefix, total, publishers)
    started = time.time()
    proc = gw.start()
    try:
        seen = gw.watch(total)
    finally:
        gw.stop()
    first = seen["first"]
    assert first is not None, "the gateway drained nothing"
    if seen["stored_at"] <= first[0] or seen["ingested"] <= first[1]:
        # Drained before the second look (a small --quick backlog): no span to divide by
        # from the first look, so the rate counts from the process start instead.
        first = (started, 0)
    stored_s = seen["stored_at"] - first[0]
    ingest_s = seen["ingested_at"] - first[0]
    drained = seen["ingested"] - first[1]
    return {"consumer": "gateway (trygg run)", "received": seen["ingested"],
            "seconds": round(stored_s, 3), "per_s": round((seen["stored"] - first[1]) / stored_s),
            "ingest_per_s": round(drained / ingest_s),
            "startup_s": round(first[0] - started, 3),
            "total_s": round(seen["stored_at"] - started, 3),
            "telemetry_written": seen["metrics"].get("trygg_telemetry_written_total"),
            "telemetry_shed": seen["metrics"].get("trygg_telemetry_shed_total"),
            "pid": proc.pid, "publishers": pub}


def _qos() -> int:
    """The telemetry QoS of this run (``INGEST_QOS``, default 1)."""
    return int(os.environ.get("INGEST_QOS", "1"))


def guarded(label: str, run: Any, *args: Any) -> dict[str, Any]:
    """Run one measurement; a failure is reported in its place instead of ending the bench."""
    try:
        result: dict[str, Any] = run(*args)
    except Exception as exc:  # one broken figure must not lose the others
        print(f"{label} failed: {exc!r}", file=sys.stderr)
        return {"error": repr(exc), "consumer": label, "received": 0, "per_s": 0,
                "publishers": {"per_s": 0}}
    return result


def bench(messages: int, publishers: int, backlog: int | None = None) -> dict[str, Any]:
    """Every ingest figure, each next to its ceiling, on one private broker."""
    backlog = backlog or messages
    result: dict[str, Any] = {"messages": messages, "backlog": backlog,
                              "publishers": publishers, "load_before": load_avg()}
    with broker() as port, tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        result["live"] = {
            "ceiling_aiomqtt": guarded("bare aiomqtt subscriber", ceiling_live, "aiomqtt",
                                       port, messages, publishers),
            "ceiling_paho": guarded("bare paho subscriber", ceiling_live, "paho", port,
                                    messages, publishers),
            "gateway": guarded("gateway (trygg run)", gateway_live, directory, port,
                               messages, publishers),
        }
        # A broker keeps no QoS 0 message for a subscriber that is away (MQTT 3.1.1
        # section 3.1.2.4; Mosquitto's queue_qos0_messages is off by default), so with
        # QoS 0 there is no backlog to drain: the bare sinks would wait for it forever.
        modes = ("live",) if _qos() == 0 else ("live", "backlog_drain")
        if "backlog_drain" in modes:
            result["backlog_drain"] = {
                "ceiling_aiomqtt": guarded("bare aiomqtt subscriber", ceiling_backlog, "aiomqtt",
                                           port, backlog, publishers),
                "ceiling_paho": guarded("bare paho subscriber", ceiling_backlog, "paho", port,
                                        backlog, publishers),
                "gateway": guarded("gateway (trygg run)", gateway_backlog, directory, port,
                                   backlog, publishers),
            }
        if PROFILE_DIR:
            result["live_profiled"] = guarded("gateway (trygg run) under py-spy", gateway_live,
                                              directory, port, messages, publishers, True)
    for mode in modes:
        section = result[mode]
        gw = section["gateway"]["per_s"]
        for key in ("aiomqtt", "paho"):
            ceiling = section[f"ceiling_{key}"]["per_s"]
            section[f"gateway_vs_{key}_ceiling"] = round(gw / ceiling, 3) if ceiling else None
    result["load_after"] = load_avg()
    return result


def table(result: dict[str, Any]) -> str:
    """A markdown table: each consumer's rate and the publishers' achieved rate."""
    rows = ["| ingest | consumer | messages | msg/s (stored) | msg/s (decoded) | "
            "publishers' msg/s | vs aiomqtt ceiling |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for mode in ("live", "backlog_drain"):
        section = result.get(mode)
        if section is None:
            continue
        for key in ("ceiling_aiomqtt", "ceiling_paho", "gateway"):
            row = section[key]
            vs = section["gateway_vs_aiomqtt_ceiling"]
            ratio = f"{vs:.0%}" if key == "gateway" and vs is not None else ""
            rows.append(f"| {mode} | {row['consumer']} | {row['received']:,} | "
                        f"{row['per_s']:,} | {row.get('ingest_per_s', row['per_s']):,} | "
                        f"{row['publishers']['per_s']:,} | {ratio} |")
    return "\n".join(rows)


def main() -> None:
    """Parse arguments, run, print JSON and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=60_000)
    parser.add_argument("--backlog", type=int, default=0, help="backlog size (0: --messages)")
    parser.add_argument("--publishers", type=int, default=1)
    parser.add_argument("--profile", type=Path, help="py-spy the gateway; stacks go here")
    args = parser.parse_args()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        PROFILE_DIR.append(args.profile.resolve())
    result = bench(args.messages, args.publishers, args.backlog or None)
    print(json.dumps(result, indent=2))
    print()
    print(table(result))


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--publisher":
        publisher_main(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
                       int(sys.argv[6]), float(sys.argv[7]))
    elif len(sys.argv) == 8 and sys.argv[1] == "--sink":
        sink_main(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6],
                  sys.argv[7] == "prime")
    else:
        main()
