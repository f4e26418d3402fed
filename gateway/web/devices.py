"""The technician's device workflow (register, bind, swap, decommission, claim codes, test
alarms) and the device's own enrolment call (``/provisioning/claim``)."""

import asyncio
import time
from typing import Annotated, Any

import segno
from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from devices.contract import encode_command
from gateway.audit import AuditKind
from gateway.errors import ConflictError, NotFoundError, TooManyError, UnavailableError
from gateway.org import StaffMember
from gateway.provisioning import ProvisioningError
from gateway.web.deps import (
    ID_PATTERN,
    IdPath,
    WebGateway,
    WebState,
    audit_read,
    require,
    staff_dependency,
)
from gateway.web.schemas import (
    ClaimAnswerOut,
    ClaimCodeOut,
    DeviceOut,
    E2eStatusOut,
    HistoryEntryOut,
    TestAlarmOut,
    documented,
)


class DeviceIn(BaseModel):
    """A device being registered by a technician."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    type: str = Field(pattern=ID_PATTERN)
    serial: str = Field(min_length=1, max_length=100)
    model: str = Field(default="", max_length=100)
    firmware: str = Field(default="", max_length=100)
    recipient_id: str | None = Field(default=None, pattern=ID_PATTERN)


class BindIn(BaseModel):
    """Body of ``/devices/{id}/bind``."""

    model_config = ConfigDict(extra="forbid")

    recipient_id: str = Field(pattern=ID_PATTERN)


class SwapIn(BaseModel):
    """Body of ``/devices/{id}/swap``: the registered replacement."""

    model_config = ConfigDict(extra="forbid")

    new_device_id: str = Field(pattern=ID_PATTERN)


class ClaimIn(BaseModel):
    """Body of ``/provisioning/claim``: the code or the whole QR payload."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=200)


def qr_image(text: str) -> str:
    """``text`` as a QR code: an SVG ``data:`` URI for an ``<img>`` (the CSP allows ``data:``
    images, and the console needs nothing from outside). Error correction M (15 %) survives
    a scuffed print-out; the 4-module quiet zone is what scanners expect."""
    return str(segno.make(text, error="m", micro=False).svg_data_uri(
        scale=6, border=4, dark="#000", light="#fff"))


def router(gw: WebGateway, state: WebState) -> APIRouter:
    """``/api/v1/devices/*`` and ``/api/v1/provisioning/claim``."""
    api = APIRouter()
    Me = Annotated[StaffMember, Depends(staff_dependency(gw))]
    registry = gw.registry
    claim_guard = state.claim_guard

    def device_json(device_id: str) -> dict[str, Any]:
        info = gw.org.devices.get(device_id)
        row = registry.get(device_id)
        seen = gw.devices.get(device_id)
        watched = gw.watch.supervisor.status(device_id)
        recipient = gw.org.recipients.get(info.recipient_id or "") if info else None
        return {
            "id": device_id,
            "type": info.type if info else (row.type if row else None),
            "model": info.model if info else (row.model if row else ""),
            "serial": info.serial if info else (row.serial if row else ""),
            "state": row.state if row else "registered",
            "recipient": None if recipient is None else {
                "id": recipient.id, "name": recipient.name, "address": recipient.address},
            "health": {
                "supervised": watched is not None,
                "online": None if watched is None else not watched.offline,
                "last_seen": (seen.last_seen if seen else
                              (watched.last_seen if watched else None)),
                "battery": seen.battery if seen else None,
                "rssi": seen.rssi if seen else None,
                "firmware": (seen.firmware if seen and seen.firmware else
                             (row.firmware if row else None)),
            },
            "credentials": registry.has_credentials(device_id),
            "replaces": row.replaces if row else None,
            "replaced_by": row.replaced_by if row else None,
        }

    def run(member: StaffMember, operation: Any, *args: Any, **kwargs: Any) -> Any:
        require(member, "technician", "admin")
        return operation(*args, actor=member.id, **kwargs)

    @api.get("/api/v1/devices", tags=["devices"], **documented(list[DeviceOut], 401, 403))
    async def list_devices(member: Me) -> list[dict[str, Any]]:
        require(member, "technician", "admin")
        # Recipients' names and addresses come with the devices.
        audit_read(gw, member.id, "devices", sorted(gw.org.devices))
        return [device_json(d) for d in sorted(gw.org.devices)]

    @api.post("/api/v1/devices", tags=["devices"],
              **documented(DeviceOut, 400, 401, 403, 404, 409, 422, status=201))
    async def register(body: DeviceIn, member: Me) -> dict[str, Any]:
        run(member, registry.register, device_id=body.id, type=body.type, serial=body.serial,
            model=body.model, firmware=body.firmware, recipient_id=body.recipient_id)
        return device_json(body.id)

    @api.get("/api/v1/devices/{device_id}", tags=["devices"],
             **documented(DeviceOut, 401, 403, 404, 422))
    async def get_device(device_id: IdPath, member: Me) -> dict[str, Any]:
        require(member, "technician", "admin")
        if device_id not in gw.org.devices and registry.get(device_id) is None:
            raise NotFoundError(f"no device {device_id!r}")
        return device_json(device_id)

    @api.get("/api/v1/devices/{device_id}/history", tags=["devices"],
             **documented(list[HistoryEntryOut], 401, 403, 422))
    async def device_history(device_id: IdPath, member: Me) -> list[dict[str, Any]]:
        require(member, "technician", "admin")
        return registry.history(device_id)

    @api.post("/api/v1/devices/{device_id}/bind", tags=["devices"],
              **documented(DeviceOut, 400, 401, 403, 404, 409, 422))
    async def bind(device_id: IdPath, body: BindIn, member: Me) -> dict[str, Any]:
        run(member, registry.bind, device_id, body.recipient_id)
        return device_json(device_id)

    @api.post("/api/v1/devices/{device_id}/unbind", tags=["devices"],
              **documented(DeviceOut, 401, 403, 404, 409, 422))
    async def unbind(device_id: IdPath, member: Me) -> dict[str, Any]:
        run(member, registry.unbind, device_id)
        return device_json(device_id)

    @api.post("/api/v1/devices/{device_id}/swap", tags=["devices"],
              **documented(DeviceOut, 400, 401, 403, 404, 409, 422))
    async def swap(device_id: IdPath, body: SwapIn, member: Me) -> dict[str, Any]:
        run(member, registry.swap, device_id, body.new_device_id)
        return device_json(body.new_device_id)

    @api.post("/api/v1/devices/{device_id}/decommission", tags=["devices"],
              **documented(DeviceOut, 401, 403, 404, 409, 422))
    async def decommission(device_id: IdPath, member: Me) -> dict[str, Any]:
        run(member, registry.decommission, device_id)
        return device_json(device_id)

    @api.post("/api/v1/devices/{device_id}/claim-code", tags=["devices"],
              **documented(ClaimCodeOut, 401, 403, 404, 409, 422))
    async def claim_code(device_id: IdPath, member: Me) -> dict[str, Any]:
        claim = run(member, registry.issue_claim, device_id)
        return {"device_id": claim.device_id, "code": claim.code, "qr": claim.qr,
                "expires_at": claim.expires_at, "qr_image": qr_image(claim.qr)}

    @api.post("/api/v1/devices/{device_id}/test-alarm", tags=["devices"],
              **documented(TestAlarmOut, 401, 403, 404, 422, 503, status=202))
    async def test_alarm(device_id: IdPath, member: Me) -> dict[str, Any]:
        """Ask the device to raise a test alarm (provlarm) through the whole chain."""
        require(member, "technician", "admin")
        if device_id not in gw.org.devices:
            raise NotFoundError(f"no device {device_id!r}")
        ref = f"test-{int(time.time() * 1000)}"
        if not gw.send_command(device_id, encode_command(ref, "test_alarm")):
            raise UnavailableError("the broker is not connected; try again")
        gw.audit.record("test_alarm", actor=member.id, subject=device_id, detail={"ref": ref})
        return {"device_id": device_id, "ref": ref, "sent": True}

    def test_runner(member: StaffMember, device_id: str) -> str:
        # Technicians and administrators (docs/consoles.md): an end-to-end test raises an
        # alarm that staff must confirm, so a team lead could otherwise set other teams'
        # staff running after test alarms of devices that are not theirs.
        require(member, "technician", "admin")
        if device_id not in gw.org.devices:
            raise NotFoundError(f"no device {device_id!r}")
        return device_id

    @api.get("/api/v1/devices/{device_id}/e2e-test", tags=["devices"],
             **documented(E2eStatusOut, 401, 403, 404))
    async def e2e_status(device_id: str, member: Me) -> dict[str, Any]:
        """The device's last end-to-end test and whether one is running."""
        return await asyncio.to_thread(gw.provlarm.status, test_runner(member, device_id))

    @api.post("/api/v1/devices/{device_id}/e2e-test", tags=["devices"],
              **documented(E2eStatusOut, 401, 403, 404, 409, status=202))
    async def e2e_run(device_id: str, member: Me) -> dict[str, Any]:
        """Run an end-to-end test of the device now (its result: GET the same path)."""
        if not gw.provlarm.run_now(test_runner(member, device_id)):
            raise ConflictError("a test of this device is running")
        gw.audit.record("provisioning", actor=member.id, subject=device_id,
                detail={"action": "e2e_test"})
        return await asyncio.to_thread(gw.provlarm.status, device_id)

    @api.post("/api/v1/provisioning/claim", tags=["provisioning"],
              **documented(ClaimAnswerOut, 400, 404, 422, 429))
    async def redeem(request: Request, body: Annotated[ClaimIn, Body()]) -> dict[str, Any]:
        """A device (or the installer's phone) exchanges its claim code for credentials."""
        address = request.client.host if request.client else "?"
        wait = claim_guard.retry_after(address, address)
        if wait > 0:
            raise TooManyError("too many bad claim codes; try again later",
                                headers={"Retry-After": str(int(wait) + 1)})
        try:
            answer = await asyncio.to_thread(registry.redeem, body.code)
        except ProvisioningError as exc:
            claim_guard.failed(address, address)
            gw.audit.record("claim_refused", actor=address, subject="provisioning",
                detail={"reason": exc.reason})
            raise
        gw.audit.record(AuditKind.PROVISIONING, actor=answer["device_id"],
                             subject=answer["device_id"], detail={"event": "credentials_sent"})
        return answer

    return api
