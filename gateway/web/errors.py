"""Domain errors to HTTP, in one place."""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gateway.errors import DomainError


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)


def install(app: FastAPI) -> None:
    """Answer every ``DomainError`` a route or service raises with its status and detail."""
    app.add_exception_handler(DomainError, _domain_error)
