"""Supervision of the gateway's own links: a technical alarm when one drops, closed when back.

Links report ``(name, up)`` (the broker lanes, serial lines, the alarm centre, ...). The broker
counts as down only after it was up once (at start the gateway may simply be waiting for the
broker); a serial port missing at start is already a fault. The retained gateway status is
re-published periodically so that upstream monitors see a live time.
"""

from __future__ import annotations

import asyncio
import logging

from alarms.events import TechnicalCleared
from alarms.flapping import FlapDetector, Flapping, FlapPolicy
from alarms.model import GATEWAY_DEVICE
from gateway.effects import Effects
from gateway.pipeline import Pipeline, technical
from gateway.ports import Clock

_LOGGER = logging.getLogger(__name__)

# The gateway's own heartbeat on its retained status topic, for upstream monitors (and the
# larmcentral) that watch the gateway the way the gateway watches devices.
STATUS_INTERVAL_S = 30.0

# Links whose absence at start is normal until they were up once.
_WAIT_FOR_FIRST_UP = ("mqtt", "mqtt-telemetry")

_DETAIL = {
    "mqtt": "MQTT-mäklaren kan inte nås / MQTT broker unreachable",
    "mqtt-telemetry": "Telemetrilänken till MQTT-mäklaren är nere / MQTT telemetry link down",
}


class LinkWatch:
    """Raises and clears the technical alarms of the gateway's links."""

    def __init__(self, pipeline: Pipeline, effects: Effects, clock: Clock,
                 flap_policy: FlapPolicy | None = None) -> None:
        self._pipeline = pipeline
        self._effects = effects
        self._clock = clock
        self._events: asyncio.Queue[tuple[str, bool, float, bool]] = asyncio.Queue()
        # Link flapping (session take-overs): alarms.flapping; technical alarm flapping.<link>.
        self.flaps = FlapDetector(flap_policy)
        self._up_once: set[str] = set()
        self.state: dict[str, bool] = {}
        self.stopping = False
        # The retained status while nothing is wrong ("online"); the health probe changes it.
        self.status = "online"

    def report(self, name: str, up: bool, *, taken_over: bool = False) -> None:
        """A link went up or down (callable from any callback on the loop); ``taken_over``:
        the broker said another client took the session over (MQTT 5 reason 0x8E)."""
        if self.state.get(name) == up:
            return
        self.state[name] = up
        self._events.put_nowait((name, up, self._clock(), taken_over))

    async def run(self) -> None:
        """Turn link reports into technical alarms (a supervised task)."""
        while True:
            # -- flapping (alarms.flapping): wait no longer than the next settle check --
            due = self.flaps.next_check()
            try:
                timeout = None if due is None else max(0.0, due - self._clock())
                name, up, at, taken_over = await asyncio.wait_for(self._events.get(), timeout)
            except TimeoutError:
                await self._settle_flapping()
                continue
            if not up and not self.stopping:
                verdict = self.flaps.dropped(name, at, taken_over=taken_over)
                if verdict is not None:
                    await self._raise_flapping(verdict, at)
            await self._settle_flapping()
            # -- end flapping --
            prefix = f"{name}."
            if up:
                self._up_once.add(name)
                for alarm in self._pipeline.open_technical(prefix):
                    down_for = self._clock() - alarm.hops[0].at
                    await self._pipeline.submit_internal(
                        TechnicalCleared(GATEWAY_DEVICE, alarm.ref, f"outage {down_for:.0f} s")
                    )
                continue
            if self.stopping or self._pipeline.open_technical(prefix):
                continue
            if name in _WAIT_FOR_FIRST_UP and name not in self._up_once:
                continue
            if self.flaps.flapping(name):
                continue  # the flapping alarm stands for every drop while it lasts
            now = self._clock()
            detail = _DETAIL.get(name, f"Länken {name} är nere / link {name} down")
            if name.startswith("serial-"):
                line = name.removeprefix("serial-")
                detail = f"Seriell linje {line} nere / serial line {line} down"
            await self._pipeline.submit_internal(
                technical(GATEWAY_DEVICE, f"{prefix}{int(now * 1000)}", detail, now)
            )

    async def _raise_flapping(self, verdict: Flapping, at: float) -> None:
        prefix = f"flapping.{verdict.link}."
        if self._pipeline.open_technical(prefix):
            return
        cause = ("sessionen togs över av en annan klient / session taken over by another client"
                 if verdict.taken_over else
                 f"{verdict.drops} avbrott på {verdict.window_s:.0f} s / {verdict.drops} drops "
                 f"in {verdict.window_s:.0f} s")
        _LOGGER.warning("link %s is flapping (%s): another client may be using its client id",
                        verdict.link, cause)
        await self._pipeline.submit_internal(technical(
            GATEWAY_DEVICE, f"{prefix}{int(at * 1000)}",
            f"Länken {verdict.link} är instabil / link {verdict.link} flapping: {cause}", at))

    async def _settle_flapping(self) -> None:
        up = [name for name, is_up in self.state.items() if is_up]
        for name in self.flaps.settled(self._clock(), up):
            for alarm in self._pipeline.open_technical(f"flapping.{name}."):
                await self._pipeline.submit_internal(TechnicalCleared(
                    GATEWAY_DEVICE, alarm.ref,
                    f"stable for {self.flaps.policy.quiet_s:.0f} s"))

    async def heartbeat(self) -> None:
        """Re-publish the retained status periodically (a supervised task)."""
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            publisher = self._effects.publisher
            if publisher is not None:
                journal_failed = self._pipeline.journal_failed_since is not None
                publisher.publish_status("journal_failed" if journal_failed else self.status)
