"""``/healthz`` and ``/metrics``: what operations and load balancers poll."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.web.deps import WebGateway


def router(gw: WebGateway) -> APIRouter:
    """The operations endpoints (no token: they hold no personal data)."""
    api = APIRouter(tags=["operations"])

    @api.get("/healthz")
    async def healthz() -> JSONResponse:
        health = gw.health()
        code = 200 if health["status"] == "ok" else 503
        return JSONResponse(health, status_code=code)

    @api.get("/metrics")
    async def metrics() -> PlainTextResponse:
        gw.refresh_gauges()
        return PlainTextResponse(
            generate_latest(gw.metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST
        )

    return api
