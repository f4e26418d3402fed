"""FastAPI dependencies shared by every router of the gateway."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import OAuth2PasswordBearer

from gateway.auth import TokenError
from gateway.org import StaffMember

if TYPE_CHECKING:
    from gateway.runtime import Gateway

oauth2 = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token")


def staff_dependency(gateway: Gateway) -> Callable[[str], StaffMember]:
    """A dependency giving the staff member a bearer token belongs to (401 otherwise)."""

    def current_staff(token: Annotated[str, Depends(oauth2)]) -> StaffMember:
        try:
            staff_id = gateway.tokens.check(token)
        except TokenError:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "invalid or expired token",
                headers={"WWW-Authenticate": "Bearer"},
            ) from None
        member = gateway.org.staff.get(staff_id)
        if member is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown staff member")
        return member

    return current_staff
