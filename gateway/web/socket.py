"""The staff WebSocket: a snapshot of the open alarms, then live updates; receipts back."""

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketDisconnected

from alarms.access import role_sees
from alarms.events import ReceiptConfirmed, StaffConnected, StaffDisconnected
from gateway.auth import TokenError
from gateway.errors import DomainError
from gateway.web.alarms import alarm_body
from gateway.web.deps import WebGateway, audit_read
from gateway.web.responses import dumps

_LOGGER = logging.getLogger(__name__)


async def _send(websocket: WebSocket, message: dict[str, Any]) -> None:
    # Like send_json, but a damaged stored string cannot fail the send (and drop the socket).
    await websocket.send_text(dumps(message))


class _TooSlowError(Exception):
    """A staff client fell too far behind; it is disconnected and resyncs on reconnect."""


async def _refuse(websocket: WebSocket, reason: str) -> None:
    """Close a socket whose token is refused with code 4401.

    Accepted first: closing before the handshake answers HTTP 403, which a browser reports
    as a bare 1006, and the staff app needs 4401 to know it must refresh its token.
    """
    await websocket.accept()
    await websocket.close(code=4401, reason=reason)


def router(gw: WebGateway) -> APIRouter:
    """``/api/v1/ws``."""
    api = APIRouter()

    @api.websocket("/api/v1/ws")
    async def staff_socket(websocket: WebSocket, token: str = Query(default="")) -> None:
        try:
            staff_id = gw.tokens.check(token)
        except TokenError:
            await _refuse(websocket, "invalid or expired token")
            return
        if staff_id not in gw.org.staff:
            await _refuse(websocket, "unknown staff member")
            return
        role = gw.org.staff[staff_id].role
        await websocket.accept()
        # Attach before the snapshot: an update racing the snapshot then arrives twice
        # (the client keeps the newest by id) rather than not at all.
        connection = gw.hub.attach(staff_id)
        gw.observe(StaffConnected(staff_id))
        try:
            await _send(websocket, {"type": "hello", "staff_id": staff_id})
            snapshot = [a for a in gw.visible_alarms(staff_id, "open") if role_sees(role, a)]
            audit_read(gw, staff_id, "alarms", (a.id for a in snapshot), state="open",
                       via="websocket")
            for alarm in snapshot:
                await _send(websocket, {"type": "alarm", "alarm": alarm_body(gw, role, alarm)})
            await _send(websocket, {"type": "sync", "open": [a.id for a in snapshot]})
            async with asyncio.TaskGroup() as group:
                group.create_task(_read(websocket, staff_id), name=f"ws read {staff_id}")
                group.create_task(_write(websocket, connection.outbox),
                                  name=f"ws write {staff_id}")
                group.create_task(_watch(connection.overflowed), name=f"ws watch {staff_id}")
        except* _TooSlowError:
            with contextlib.suppress(Exception):
                await websocket.close(code=1013, reason="too far behind; reconnect")
        except* (WebSocketDisconnect, WebSocketDisconnected, OSError):
            # WebSocketDisconnected: a send or receive after the client went away (Starlette
            # raises it instead of WebSocketDisconnect when the close came first).
            _LOGGER.debug("staff %s socket closed", staff_id)
        finally:
            gw.hub.detach(connection)
            gw.observe(StaffDisconnected(staff_id))

    async def _read(websocket: WebSocket, staff_id: str) -> None:
        while True:
            message = await websocket.receive_json()
            if not isinstance(message, dict) or message.get("type") != "receipt":
                await _send(websocket, {"type": "error", "reason": "expected a receipt"})
                continue
            alarm_id = message.get("alarm_id")
            if not isinstance(alarm_id, str):
                await _send(websocket, {"type": "error", "reason": "receipt needs alarm_id"})
                continue
            try:
                await gw.act(ReceiptConfirmed(alarm_id, staff_id))
            except DomainError as exc:
                # One bad receipt is answered on the socket; the socket goes on.
                await _send(websocket,
                            {"type": "error", "alarm_id": alarm_id, "reason": str(exc)})

    async def _watch(overflowed: asyncio.Event) -> None:
        await overflowed.wait()
        raise _TooSlowError

    async def _write(websocket: WebSocket, outbox: "asyncio.Queue[dict[str, Any]]") -> None:
        while True:
            await _send(websocket, await outbox.get())

    return api
