"""The outbound adapter to the external alarm centre (larmcentral).

Each ``NotifyCentre`` action becomes one HTTP POST of the alarm (JSON) to the configured
URL and one MQTT message on ``{prefix}/centre/alarm``. A 2xx answer from the HTTP endpoint
is the centre's receipt: it goes back into the core as ``CentreConfirmed`` and is journaled.
Retries are not this adapter's business: until the receipt is journaled, the core asks
again on its own schedule (30 s, doubling), so a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

import httpx

from gateway.ratelimit import LogLimiter

_LOGGER = logging.getLogger(__name__)

# Deliveries waiting for the sender. Each open alarm asks at most every 30 s, so this only
# fills if the centre is unreachable for a long time with very many alarms — and then the
# core asks again anyway.
MAX_PENDING = 1000
TIMEOUT_S = 10.0
# Deliveries in flight at once: one slow answer (up to TIMEOUT_S) must not hold up the
# alarms behind it, and many alarms escalating together (a storm) reach the centre together.
SENDERS = 8

Confirm = Callable[[str, int, str | None], Awaitable[None]]


class CentreAdapter:
    """Sends alarms to the alarm centre; confirms them through ``confirm``."""

    def __init__(self, url: str | None, confirm: Confirm) -> None:
        self.url = url
        self._confirm = confirm
        self._queue: asyncio.Queue[tuple[dict[str, Any], int]] = asyncio.Queue(MAX_PENDING)
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        # Per-alarm lines, once a minute per kind: a centre that is down fails every
        # delivery and every retry; the counters and the technical alarm carry the rest.
        self._log = LogLimiter(60.0)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def wait(self) -> None:
        """The senders (a supervised task while the adapter is open)."""
        await self._run()

    def send(self, alarm: dict[str, Any], attempt: int) -> None:
        """Queue one delivery attempt (never blocks)."""
        if self.url is None:
            self._log.log(
                _LOGGER, logging.WARNING, "no_url",
                "alarm %s escalated to the alarm centre, but no centre_url is configured",
                alarm["id"],
            )
            return
        try:
            self._queue.put_nowait((alarm, attempt))
        except asyncio.QueueFull:
            self.dropped += 1  # the core asks again; counted so monitoring sees it

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client, asyncio.TaskGroup() as group:
            for n in range(SENDERS):
                group.create_task(self._sender(client), name=f"alarm centre sender {n}")

    async def _sender(self, client: httpx.AsyncClient) -> None:
        while True:
            alarm, attempt = await self._queue.get()
            await self._deliver(client, alarm, attempt)

    async def _deliver(
        self, client: httpx.AsyncClient, alarm: dict[str, Any], attempt: int
    ) -> None:
        assert self.url is not None
        try:
            response = await client.post(
                self.url,
                json={"alarm": alarm, "attempt": attempt},
                headers={"Idempotency-Key": f"{alarm['id']}"},
            )
        except httpx.HTTPError as exc:
            self.failed += 1
            self._log.log(_LOGGER, logging.WARNING, "unreachable",
                          "alarm centre unreachable for alarm %s (attempt %d): %s",
                          alarm["id"], attempt, exc)
            return
        if not response.is_success:
            self.failed += 1
            self._log.log(_LOGGER, logging.WARNING, "refused",
                          "alarm centre refused alarm %s (attempt %d): HTTP %d",
                          alarm["id"], attempt, response.status_code)
            return
        self.sent += 1
        reference = None
        with contextlib.suppress(ValueError):
            body = response.json()
            if isinstance(body, dict) and isinstance(body.get("reference"), str):
                reference = body["reference"][:64]
        await self._confirm(alarm["id"], attempt, reference)
