"""Dependencies shared by every router: the bearer-token staff member, roles, id paths."""

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException, Path, status
from fastapi.security import OAuth2PasswordBearer

from alarms.events import Presence, StaffEvent
from alarms.model import Alarm
from gateway.audit import AuditKind
from gateway.auth import TokenError, TokenIssuer
from gateway.cameras import CameraService
from gateway.errors import ForbiddenError
from gateway.ingest import DeviceSeen
from gateway.metrics import Metrics
from gateway.org import StaffMember
from gateway.ports import ServiceHost
from gateway.provisioning import DeviceRegistry
from gateway.provlarm import Provlarm
from gateway.push import PushNotifier
from gateway.security import LoginGuard, SecuritySettings
from gateway.sensors import SensorService
from gateway.sms import SmsService
from gateway.stores.sessions import SessionStore
from gateway.tsdb import SqliteSink
from gateway.watch import DeviceWatch


class WebGateway(ServiceHost, Protocol):
    """What the web layer calls."""

    @property
    def tokens(self) -> TokenIssuer:
        """Checks bearer tokens."""

    @property
    def metrics(self) -> Metrics:
        """The Prometheus registry and the gateway's metrics."""

    @property
    def telemetry(self) -> SqliteSink:
        """The built-in time-series store."""

    @property
    def watch(self) -> DeviceWatch:
        """Device supervision."""

    @property
    def devices(self) -> dict[str, DeviceSeen]:
        """What the gateway last heard from each device."""

    @property
    def registry(self) -> DeviceRegistry:
        """The device registry (provisioning)."""

    @property
    def provlarm(self) -> Provlarm:
        """Daily end-to-end test alarms."""

    @property
    def sensors(self) -> SensorService:
        """Sensor rules and their evidence."""

    @property
    def cameras(self) -> CameraService:
        """Night cameras."""

    @property
    def push(self) -> PushNotifier:
        """Web Push."""

    @property
    def http_port(self) -> int:
        """The bound HTTP port."""

    @property
    def sms(self) -> SmsService | None:
        """The SMS fallback, when configured."""

    @property
    def routers(self) -> list[Any]:
        """Extra routers to mount (tests, extensions)."""

    def act(self, event: StaffEvent) -> Awaitable[Alarm]:
        """Carry out a staff action durably (raises ``gateway.errors`` on refusal)."""

    def observe(self, event: Presence) -> None:
        """A staff client connected or disconnected."""

    def may_see(self, staff_id: str, alarm: Alarm) -> bool:
        """Whether a staff member may see an alarm."""

    def visible_alarms(self, staff_id: str, state: str = "open") -> list[Alarm]:
        """The alarms a staff member may see, ``open``/``closed``/``all``."""

    def refresh_directory(self) -> None:
        """The organisation changed: hand the core a new routing view."""

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` answers."""

    def refresh_gauges(self) -> None:
        """Bring the gauges that are read on demand up to date (before ``/metrics``)."""


@dataclass(frozen=True, slots=True)
class WebState:
    """What the web edge keeps for itself: tokens, sessions and login throttles."""

    security: SecuritySettings
    issuer: TokenIssuer
    guard: LoginGuard
    claim_guard: LoginGuard
    sessions: SessionStore


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


# A bulk read's audit record names every id it returned up to this many; beyond, the count
# and the filter (which, replayed against the journal and the organisation at that time,
# give the same set) keep the record small. 100 covers a team's open alarms and recipients.
AUDIT_MAX_IDS = 100


def audit_read(gw: WebGateway, actor: str, what: str, ids: Iterable[str], **filters: object
               ) -> None:
    """Record that ``actor`` read the set ``what`` (issue 17.4): which ids, or how many and
    with which filter. Reads by id record themselves (``alarm_view``, ``recipient_view``)."""
    listed = list(ids)
    detail: dict[str, object] = {"count": len(listed), "filter": filters}
    if len(listed) <= AUDIT_MAX_IDS:
        detail["ids"] = listed
    gw.audit.record(AuditKind.BULK_READ, actor=actor, subject=what, detail=detail)


def require(member: StaffMember, *roles: str) -> None:
    """Refuse (403) a member whose role is not one of ``roles``."""
    if member.role not in roles:
        raise ForbiddenError(f"needs role {' or '.join(roles)}; you are {member.role}")
