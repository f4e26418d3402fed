"""The embedded MQTT broker (amqtt) for ``trygg demo`` and tests: loopback only by default."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any, Self

from amqtt.broker import Broker

_LOGGER = logging.getLogger(__name__)


class EmbeddedBroker:
    """An in-process MQTT 3.1.1 broker. amqtt binds 0.0.0.0 unless told otherwise: we do."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host = host
        self.port = port
        self._broker: Any = None

    async def __aenter__(self) -> Self:
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        self._broker = Broker(config)
        await self._broker.start()
        _LOGGER.info("embedded MQTT broker on %s:%d", self.host, self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
