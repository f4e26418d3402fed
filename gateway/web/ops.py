"""``/healthz`` and ``/metrics``: what operations and load balancers poll."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.web.deps import WebGateway
from gateway.web.responses import SafeJSONResponse
from gateway.web.schemas import HealthOut


def router(gw: WebGateway) -> APIRouter:
    """The operations endpoints (no token: they hold no personal data)."""
    api = APIRouter(tags=["operations"])

    @api.get("/healthz", response_model=None, responses={
        200: {"model": HealthOut, "description": "Everything the alarm path needs works."},
        503: {"model": HealthOut, "description": "Something the alarm path needs does not "
              "work (the body says what)."}})
    async def healthz() -> JSONResponse:
        health = gw.health()
        code = 200 if health["status"] == "ok" else 503
        return SafeJSONResponse(health, status_code=code)

    @api.get("/metrics", response_class=PlainTextResponse, responses={200: {
        "description": "Prometheus text exposition format.",
        "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}})
    async def metrics() -> PlainTextResponse:
        gw.refresh_gauges()
        return PlainTextResponse(
            generate_latest(gw.metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST
        )

    return api
