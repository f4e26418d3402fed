"""Domain errors of the gateway's services, mapped to HTTP in one place (``gateway.web.errors``).

Services raise these instead of web exceptions, so they can be called from the CLI, the SMS
reply path or a test without a web framework; the web layer turns each class into its status
code with one exception handler. ``detail`` is what the client reads: a sentence, or a small
object with a machine-readable ``code`` where the client acts on it.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A request the gateway refuses; ``status`` is the HTTP status that says why."""

    status: int = 400

    def __init__(self, detail: str | dict[str, Any], *, status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail if isinstance(detail, str) else str(detail.get("reason", detail)))
        self.detail = detail
        self.headers = headers
        if status is not None:
            self.status = status


class NotFoundError(DomainError):
    """Absent, or not the caller's to see (the same answer for both leaks nothing)."""

    status = 404


class ForbiddenError(DomainError):
    """The caller's role may not do this."""

    status = 403


class ConflictError(DomainError):
    """The state does not allow it now (already taken, already running, ...)."""

    status = 409


class InvalidError(DomainError):
    """Well-formed but wrong content (an unknown team, ids that differ)."""

    status = 422


class TooManyError(DomainError):
    """Rate limited; the headers carry Retry-After."""

    status = 429


class UnavailableError(DomainError):
    """The gateway cannot do it right now (journal failing, broker down); nothing changed."""

    status = 503


class StaleError(UnavailableError):
    """Another gateway changed the alarm meanwhile, again and again: nothing changed."""


class UpstreamError(DomainError):
    """A device or service behind the gateway failed (a camera stream)."""

    status = 502


class UpstreamTimeoutError(DomainError):
    """A device behind the gateway did not answer in time."""

    status = 504


class RefusedError(DomainError):
    """A staff action the alarm core refused; the core's code and reason go to the client."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason, status=code)
        self.code = code
        self.reason = reason
