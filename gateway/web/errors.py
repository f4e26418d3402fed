"""Domain errors to HTTP, in one place; every error answer is ``{"detail": ...}``."""

import logging

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from gateway.errors import DomainError
from gateway.stores import StoreError
from gateway.web.responses import SafeJSONResponse


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return SafeJSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)


_LOGGER = logging.getLogger(__name__)
# A shared store's database is away (a cluster's PostgreSQL restarting, failing over): the
# client retries after this long; staff keep their access token meanwhile.
STORE_RETRY_AFTER_S = 5


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    _LOGGER.warning("%s %s: store unavailable: %s", request.method, request.url.path, exc)
    return SafeJSONResponse({"detail": "temporarily unavailable; try again"}, status_code=503,
                            headers={"Retry-After": str(STORE_RETRY_AFTER_S)})


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    # FastAPI's own answer, but safe to encode: the issues quote the input, and a body
    # may carry "\ud800" (JSON allows the escape; UTF-8 cannot carry the result).
    assert isinstance(exc, RequestValidationError)
    return SafeJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)


def install(app: FastAPI) -> None:
    """Answer every ``DomainError`` a route or service raises with its status and detail."""
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
