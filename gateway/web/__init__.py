"""The web layer: the staff HTTP API, its WebSocket, the pages and the operations endpoints.

Imported only once the alarm path is up (``gateway.runtime`` stage 2): FastAPI and uvicorn
are not on the path from a device's alarm to its ack. Routes call the gateway through the
``gateway.ports.WebGateway`` protocol and raise ``gateway.errors`` domain errors, which one
exception handler maps to HTTP (``gateway.web.errors``).
"""

from gateway.web.app import create_app

__all__ = ["create_app"]
