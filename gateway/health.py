"""Liveness you can trust: an internal probe on the real ingest path, and systemd's watchdog.

Every ``PROBE_INTERVAL_S`` the gateway publishes a heartbeat of its own probe device through
the broker, on the alarm lane, exactly as a device would. It is received by the same MQTT
receiver, decoded by the same codec and dispatched by the same intake as every device message;
then the probe waits for the commit follower to pass a marker (the pipeline is moving). The
round trip's time is the ``probe`` part of ``/healthz`` and ``trygg_probe_age_seconds``.

When no probe has come round for ``STALL_S`` while the broker link is up — the receiver, the
intake or the pipeline is stuck, the failure mode that once stopped delivery silently for
hours — the gateway raises a technical alarm, answers ``/healthz`` with 503 and sets its
retained status to ``degraded``; all three clear when probes pass again.

Under systemd (``Type=notify``, ``WatchdogSec=``) the gateway says ``READY=1`` once started,
and feeds ``WATCHDOG=1`` only while the probe passes or the broker is known to be down (an
outage of the broker is not cured by restarting the gateway). A hung event loop, or an ingest
path stuck for longer than the watchdog period, is therefore restarted by systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from alarms.events import TechnicalCleared
from alarms.model import GATEWAY_DEVICE
from devices.contract import DeviceMessage, topic
from gateway import __version__
from gateway.links import LinkWatch
from gateway.metrics import Metrics
from gateway.mqtt import Outbound
from gateway.pipeline import Pipeline, technical
from gateway.ports import Clock

if TYPE_CHECKING:
    from alarms.core import AlarmCore
    from gateway.cluster import Cluster
    from gateway.config import Settings
    from gateway.ingest import Ingest
    from gateway.mqtt import MqttLink
    from gateway.supervisor import Supervisor
    from gateway.watch import DeviceWatch

_LOGGER = logging.getLogger(__name__)

# A probe every few seconds costs nothing (one small message) and finds a stuck intake well
# inside the minute-level supervision the field requires.
PROBE_INTERVAL_S = 5.0
# How long one probe may take before it counts as lost (a broker under a burst is slow).
PROBE_TIMEOUT_S = 10.0
# No probe round trip for this long while the broker link is up: the intake is stalled.
STALL_S = 30.0
# Probe devices' ids start with this; a gateway ignores the other gateways' probes.
PROBE_PREFIX = "gateway-probe."


class Probe:
    """Sends the probe, notes its arrival, and judges the ingest path by it."""

    def __init__(self, *, gateway_id: str, prefix: str, pipeline: Pipeline, links: LinkWatch,
                 metrics: Metrics, clock: Clock, publish: Callable[[Outbound], bool],
                 connected: Callable[[], bool]) -> None:
        self.device_id = f"{PROBE_PREFIX}{gateway_id}"
        self._topic = topic(prefix, self.device_id, "heartbeat")
        self._pipeline = pipeline
        self._links = links
        self._metrics = metrics
        self._clock = clock
        self._publish = publish
        self._connected = connected
        self._sequence = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self.started_at = clock()
        # The last time the broker link was seen down: the probe's age counts from the later
        # of this and the last probe that came round, so a link coming up is given time.
        self._down_at = self.started_at
        self.last_ok: float | None = None
        self.round_trip_s: float | None = None
        self.stalled = False
        self.interval_s = PROBE_INTERVAL_S
        self.timeout_s = PROBE_TIMEOUT_S
        self.stall_s = STALL_S

    # -- the intake side -----------------------------------------------------------------

    def arrived(self, message: DeviceMessage) -> None:
        """The probe heartbeat came through the receiver, the codec and the intake."""
        waiter = self._waiting.pop(message.ref, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the probe loop (a supervised task) ----------------------------------------------

    async def run(self) -> None:
        """Send a probe every interval; judge the ingest path."""
        while True:
            if self._connected():
                await self._round_trip()
            else:
                self._down_at = self._clock()
            await self._judge()
            await asyncio.sleep(self.interval_s)

    async def _round_trip(self) -> None:
        ref = f"probe-{next(self._sequence)}"
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[ref] = waiter
        sent = self._clock()
        payload = f'{{"ref":"{ref}","ts":{int(sent * 1000)}}}'.encode()
        try:
            if not self._publish(Outbound(self._topic, payload, qos=1)):
                self._metrics.probe_misses.inc()  # could not even be sent: not round
                return
            # Never longer than the stall threshold: the verdict must not wait for a probe.
            timeout = min(self.timeout_s, self.stall_s)
            async with asyncio.timeout(timeout):
                await waiter
                await self._pipeline.flush()
        except TimeoutError:
            _LOGGER.warning("probe %s did not come round within %.1f s", ref, timeout)
            self._metrics.probe_misses.inc()
            return
        finally:
            self._waiting.pop(ref, None)
        now = self._clock()
        self.last_ok = now
        self.round_trip_s = now - sent
        self._metrics.probe_round_trip.observe(self.round_trip_s)
        self._metrics.probe_round_trips.inc()

    def age(self) -> float:
        """Seconds since the last probe came round (or the broker link was last seen down)."""
        return self._clock() - max(self.last_ok or 0.0, self._down_at)

    def passing(self) -> bool:
        """Whether the ingest path is known to work (or the broker is known to be down)."""
        return not self._connected() or self.age() < self.stall_s

    async def _judge(self) -> None:
        self._metrics.probe_age.set(self.age())
        stalled = self._connected() and self.age() >= self.stall_s
        if stalled == self.stalled:
            return
        self.stalled = stalled
        now = self._clock()
        if stalled:
            _LOGGER.critical("ingest path stalled: no probe came round for %.0f s", self.age())
            self._links.status = "degraded"
            await self._pipeline.submit_internal(technical(
                GATEWAY_DEVICE, f"ingest.{int(now * 1000)}",
                "Gatewayens larmintag står still / the gateway's alarm intake is stalled", now))
        else:
            _LOGGER.warning("ingest path moving again")
            self._links.status = "online"
            for alarm in self._pipeline.open_technical("ingest."):
                await self._pipeline.submit_internal(
                    TechnicalCleared(GATEWAY_DEVICE, alarm.ref, "intake moving again"))
        publisher = self._pipeline.effects.publisher
        if publisher is not None:
            publisher.publish_status(self._links.status)

    def json(self) -> dict[str, object]:
        """The ``/healthz`` entry."""
        return {
            "ok": not self.stalled,
            "age_s": round(self.age(), 3),
            "round_trip_ms": None if self.round_trip_s is None
            else round(self.round_trip_s * 1000, 2),
        }


class Watchdog:
    """systemd's notify protocol: ``READY=1`` and ``WATCHDOG=1`` on ``$NOTIFY_SOCKET``.

    The protocol is one datagram per message to a unix socket (sd_notify(3)); a few lines
    here instead of a dependency.
    """

    def __init__(self, passing: Callable[[], bool]) -> None:
        self._passing = passing
        self._address = os.environ.get("NOTIFY_SOCKET")
        usec = os.environ.get("WATCHDOG_USEC", "")
        # Fed at half the period, as sd_watchdog_enabled(3) recommends.
        self.interval_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None

    @property
    def enabled(self) -> bool:
        """Whether the process runs under systemd's notify protocol."""
        return bool(self._address)

    def notify(self, message: str) -> None:
        """Send one state line (no-op outside systemd)."""
        if not self._address:
            return
        address = self._address
        if address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX,
                                                         socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())

    async def run(self) -> None:
        """Feed the watchdog while the probe passes (a supervised task)."""
        if self.interval_s is None:
            return
        while True:
            if self._passing():
                self.notify("WATCHDOG=1")
            else:
                self.notify("STATUS=ingest path stalled; not feeding the watchdog")
            await asyncio.sleep(self.interval_s)


class HealthSource(Protocol):
    """The parts of a gateway its health is read from."""

    clock: Clock
    settings: Settings
    core: AlarmCore
    pipeline: Pipeline
    supervisor: Supervisor
    link: MqttLink
    telemetry_link: MqttLink
    links: LinkWatch
    ingest: Ingest
    watch: DeviceWatch
    probe: Probe
    cluster: Cluster | None

    @property
    def leases_held(self) -> frozenset[str]:
        """The once-only work this gateway does in a cluster."""


def health_report(gw: HealthSource) -> dict[str, Any]:
    """What ``/healthz`` answers: each link, the probe, each supervised task.

    ``status`` is ``ok`` only when both broker lanes are up, the journal stores, the probe
    comes round, every supervised task runs and (in a cluster) the gateway follows the
    others; anything else is ``degraded`` (503), with the part that is not ok named.
    """
    now = gw.clock()
    pipeline = gw.pipeline
    tasks = gw.supervisor.states()
    running = all(t.state != "failed" for t in tasks.values()) and bool(tasks)
    journal_ok = running and pipeline.journal_failed_since is None
    lanes = {"alarm": gw.link.connected, "telemetry": gw.telemetry_link.connected}
    following = gw.cluster is None or gw.cluster.listening
    counts = gw.watch.supervisor.counts()
    links: dict[str, Any] = {
        "mqtt": {"up": lanes["alarm"], "telemetry_up": lanes["telemetry"]},
        **{name: {"up": up} for name, up in gw.links.state.items() if name != "mqtt"},
    }
    for name, at in gw.ingest.last_message_at.items():
        links.setdefault(name, {"up": True})["last_message_age_s"] = round(now - at, 3)
    ok = (all(lanes.values()) and journal_ok and not gw.probe.stalled
          and gw.supervisor.healthy() and following)
    return {
        "status": "ok" if ok else "degraded",
        "mqtt": "up" if lanes["alarm"] else "down",
        "journal": "ok" if journal_ok else ("failing" if running else "stopped"),
        "probe": gw.probe.json(),
        "intake": {"rejected": gw.ingest.rejected, "handler_errors": gw.ingest.faults},
        "links": links,
        "tasks": {name: state.json() for name, state in sorted(tasks.items())},
        "devices": {"watched": counts.watched, "offline": counts.offline},
        "version": __version__,
        "gateway_id": gw.settings.gateway_id,
        **({} if gw.cluster is None else {"cluster": {
            "leases": sorted(gw.leases_held),
            "following": gw.cluster.listening,
            "followed_records": gw.cluster.followed,
            "remote_staff": len(gw.core.remote_connected),
        }}),
    }
