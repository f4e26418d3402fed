"""Domain errors to HTTP, in one place; every error answer is ``{"detail": ...}``."""

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from gateway.errors import DomainError
from gateway.web.responses import SafeJSONResponse


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return SafeJSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    # FastAPI's own answer, but safe to encode: the issues quote the input, and a body
    # may carry "\ud800" (JSON allows the escape; UTF-8 cannot carry the result).
    assert isinstance(exc, RequestValidationError)
    return SafeJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)


def install(app: FastAPI) -> None:
    """Answer every ``DomainError`` a route or service raises with its status and detail."""
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
