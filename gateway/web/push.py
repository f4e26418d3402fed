"""The Web Push API (VAPID public key, subscribe, unsubscribe) and the service worker."""

import asyncio
import binascii
import contextlib
import ipaddress
from importlib import resources
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Response, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import InvalidError, NotFoundError
from gateway.org import StaffMember
from gateway.push import (
    VAPID_KEY_FILE,
    Subscription,
    SubscriptionStore,
    VapidKeys,
    b64url_decode,
)
from gateway.web.deps import WebGateway, staff_dependency
from gateway.web.schemas import EndpointOut, SubscribedOut, VapidKeyOut, documented

_P256DH_LEN = 65  # an uncompressed P-256 point
_AUTH_LEN = 16


# -- the HTTP API -----------------------------------------------------------------------------


class SubscriptionKeys(BaseModel):
    """``PushSubscription.toJSON().keys``."""

    p256dh: str = Field(min_length=1, max_length=200)
    auth: str = Field(min_length=1, max_length=100)


class SubscriptionIn(BaseModel):
    """A browser's ``PushSubscription.toJSON()``."""

    model_config = ConfigDict(extra="ignore")  # browsers add fields (expirationTime, ...)

    endpoint: str = Field(min_length=8, max_length=2048)
    keys: SubscriptionKeys


class EndpointIn(BaseModel):
    """Body of ``DELETE /push/subscriptions``."""

    endpoint: str = Field(min_length=1, max_length=2048)


def _check_endpoint(endpoint: str, allow_http: bool) -> None:
    # The gateway POSTs to whatever endpoint a client registers: require https, so a
    # staff token cannot aim it at plain-HTTP services inside the network. Plain http is
    # for loopback test endpoints in demo mode only.
    parts = urlsplit(endpoint)
    if parts.scheme == "https" and parts.hostname:
        return
    if allow_http and parts.scheme == "http" and parts.hostname:
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(parts.hostname).is_loopback:
                return
        if parts.hostname == "localhost":
            return
    raise InvalidError("endpoint must be an https URL")


def _check_keys(keys: SubscriptionKeys) -> None:
    try:
        p256dh = b64url_decode(keys.p256dh)
        auth = b64url_decode(keys.auth)
    except (binascii.Error, ValueError):
        raise InvalidError("keys must be base64url") from None
    if len(p256dh) != _P256DH_LEN or p256dh[0] != 4 or len(auth) != _AUTH_LEN:
        raise InvalidError(
            "keys.p256dh must be an uncompressed P-256 point and keys.auth 16 bytes")


def router(gw: WebGateway) -> APIRouter:
    """The push API of the gateway's own notifier."""
    return create_push_router(gw, gw.push.store, keys=gw.push.keys)


def create_push_router(
    gw: WebGateway,
    store: SubscriptionStore,
    *,
    keys: VapidKeys | None = None,
    allow_http_endpoints: bool | None = None,
) -> APIRouter:
    """The push API and the service worker script on ``store``.

    Plain-http loopback endpoints are accepted only in demo mode unless
    ``allow_http_endpoints`` says otherwise.
    """
    subscriptions = store
    if keys is None:
        keys = VapidKeys.load_or_create(gw.settings.data_dir / VAPID_KEY_FILE)
    allow_http = gw.settings.demo if allow_http_endpoints is None else allow_http_endpoints
    router = APIRouter()

    current_staff = staff_dependency(gw)

    Me = Annotated[StaffMember, Depends(current_staff)]

    @router.get("/api/v1/push/vapid-public-key", tags=["push"], **documented(VapidKeyOut))
    async def vapid_public_key() -> dict[str, str]:
        return {"public_key": keys.public_key}

    @router.get("/api/v1/push/subscriptions", tags=["push"],
                **documented(list[EndpointOut], 401))
    async def list_subscriptions(member: Me) -> list[dict[str, str]]:
        mine = await asyncio.to_thread(subscriptions.for_staff, [member.id])
        return [{"endpoint": s.endpoint} for s in mine]

    @router.post(
        "/api/v1/push/subscriptions", tags=["push"],
        **documented(SubscribedOut, 400, 401, 422, status=status.HTTP_201_CREATED),
    )
    async def subscribe(body: SubscriptionIn, member: Me) -> dict[str, str]:
        _check_endpoint(body.endpoint, allow_http)
        _check_keys(body.keys)
        await asyncio.to_thread(
            subscriptions.add,
            Subscription(body.endpoint, member.id, body.keys.p256dh, body.keys.auth),
        )
        return {"endpoint": body.endpoint, "staff_id": member.id}

    @router.delete(
        "/api/v1/push/subscriptions", tags=["push"],
        **documented(None, 400, 401, 404, 422, status=status.HTTP_204_NO_CONTENT),
    )
    async def unsubscribe(body: EndpointIn, member: Me) -> Response:
        removed = await asyncio.to_thread(subscriptions.remove, body.endpoint, member.id)
        if not removed:
            raise NotFoundError("no such subscription")
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    with resources.as_file(resources.files("dashboards") / "static" / "sw.js") as worker:

        @router.get("/app/sw.js", include_in_schema=False)
        async def service_worker() -> FileResponse:
            # Served from /app/ (not /static/) so its scope covers the app; revalidated on
            # every visit, so a new version is picked up at once.
            return FileResponse(
                worker, media_type="text/javascript", headers={"Cache-Control": "no-cache"}
            )

    return router
