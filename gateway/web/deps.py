"""Dependencies shared by every router: the bearer-token staff member, roles, id paths."""

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Path, status
from fastapi.security import OAuth2PasswordBearer

from gateway.auth import TokenError
from gateway.errors import ForbiddenError
from gateway.org import StaffMember
from gateway.ports import WebGateway

oauth2 = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token")

ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
IdPath = Annotated[str, Path(pattern=ID_PATTERN)]


def staff_dependency(gw: WebGateway) -> Callable[[str], StaffMember]:
    """A dependency giving the staff member a bearer token belongs to (401 otherwise)."""

    def current_staff(token: Annotated[str, Depends(oauth2)]) -> StaffMember:
        try:
            staff_id = gw.tokens.check(token)
        except TokenError:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "invalid or expired token",
                headers={"WWW-Authenticate": "Bearer"},
            ) from None
        member = gw.org.staff.get(staff_id)
        if member is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown staff member")
        return member

    return current_staff


def require(member: StaffMember, *roles: str) -> None:
    """Refuse (403) a member whose role is not one of ``roles``."""
    if member.role not in roles:
        raise ForbiddenError(f"needs role {' or '.join(roles)}; you are {member.role}")
