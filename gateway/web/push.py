"""The Web Push API (VAPID public key, subscribe, unsubscribe) and the service worker."""

import asyncio
import binascii
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, Response, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import ConflictError, InvalidError, NotFoundError
from gateway.org import StaffMember
from gateway.push import (
    VAPID_KEY_FILE,
    Subscription,
    VapidKeys,
    b64url_decode,
)
from gateway.pushguard import EndpointPolicy, EndpointRefused
from gateway.stores.push import PushStore
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
    return create_push_router(gw, gw.push.store, keys=gw.push.keys, endpoints=gw.push.policy)


def create_push_router(
    gw: WebGateway,
    store: PushStore,
    *,
    keys: VapidKeys | None = None,
    endpoints: EndpointPolicy | None = None,
) -> APIRouter:
    """The push API and the service worker script on ``store``.

    ``endpoints``: where subscriptions may point (gateway.pushguard); by default the
    settings' allowed push services. Tests pass ``EndpointPolicy.loopback_for_tests()``.
    """
    subscriptions = store
    if keys is None:
        keys = VapidKeys.load_or_create(gw.settings.data_dir / VAPID_KEY_FILE)
    policy = endpoints or EndpointPolicy(tuple(gw.settings.push.allowed_hosts))
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
        **documented(SubscribedOut, 400, 401, 409, 422, status=status.HTTP_201_CREATED),
    )
    async def subscribe(body: SubscriptionIn, member: Me) -> dict[str, str]:
        _check_keys(body.keys)
        # The gateway will POST to this URL on every alarm: a push service only, never an
        # address inside its own network (gateway.pushguard, docs/security.md).
        try:
            await policy.check(body.endpoint)
        except EndpointRefused as exc:
            raise InvalidError(str(exc)) from None
        added = await asyncio.to_thread(
            subscriptions.add,
            Subscription(body.endpoint, member.id, body.keys.p256dh, body.keys.auth),
        )
        if not added:
            raise ConflictError("this endpoint is registered to another staff member; "
                                "subscribe again for a new one")
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
