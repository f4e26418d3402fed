"""The device registry and the technician's workflow: register, bind, swap, decommission,
enrol by claim code, send a test alarm, look at a device's health (docs/provisioning.md).

Registry state lives behind ``gateway.stores.registry.RegistryStore``: ``provisioning.sqlite3``
in the data directory for one gateway, PostgreSQL shared by every gateway of a cluster (a
claim code issued on one gateway is redeemed on any, exactly once). The routing
view stays in ``OrgStore.devices``: a device is there from registration until it is
decommissioned, and is routable once bound to a recipient.

Broker credentials: each device gets a random password once, when its claim code is
redeemed; only its ``$7$`` hash is kept. Every change rewrites the broker's password and ACL
files and reloads the broker (gateway/broker_auth.py), so decommissioning takes effect at
once; in a cluster the other gateways do the same when told (gateway.broker_sync).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import asdict as dataclasses_asdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from devices.contract import DEFAULT_PREFIX, valid_id
from gateway.broker_auth import (
    BrokerFiles,
    GatewayAccounts,
    accounts_with_gateway,
    mosquitto_hash,
    new_device_password,
)
from gateway.config import OtherGateway
from gateway.errors import DomainError
from gateway.org import DeviceInfo, OrgStore
from gateway.stores.registry import (
    HistoryEvent,
    RegisteredDevice,
    RegistryStore,
    SqliteRegistryStore,
)

_LOGGER = logging.getLogger(__name__)

REGISTRY_FILENAME = "provisioning.sqlite3"
# A claim code is typed in or scanned within the installation visit; a day is plenty.
CLAIM_TTL_S = 24 * 3600.0
# 10 characters of Crockford base32 = 50 bits: unguessable behind the claim rate limit.
_CLAIM_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CLAIM_LEN = 10


class ProvisioningError(DomainError):
    """A refused registry operation; ``code`` is the HTTP status to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason, status=code)
        self.code = code
        self.reason = reason


class Hooks(Protocol):
    """What the running gateway does when the registry changes (no-ops for the CLI)."""

    def directory_changed(self) -> None:
        """Routing changed: hand the core a new directory."""

    def watch(self, device: DeviceInfo) -> None:
        """Start supervising a device."""

    def unwatch(self, device_id: str) -> None:
        """Stop supervising a device."""

    def audit(self, actor: str, subject: str, detail: dict[str, Any]) -> None:
        """Record a provisioning action."""


class NoHooks:
    """Hooks for offline use (the CLI): nothing runs that could be told."""

    def directory_changed(self) -> None:
        """Nothing to tell."""

    def watch(self, device: DeviceInfo) -> None:
        """Nothing to tell."""

    def unwatch(self, device_id: str) -> None:
        """Nothing to tell."""

    def audit(self, actor: str, subject: str, detail: dict[str, Any]) -> None:
        """The gateway audits; offline changes are kept in the registry history."""


@dataclass(frozen=True, slots=True)
class ClaimCode:
    """A one-time code a technician scans or types; ``qr`` is the QR payload text."""

    device_id: str
    code: str
    qr: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class BrokerAccount:
    """How the registry's credentials reach the broker."""

    files: BrokerFiles | None
    prefix: str = DEFAULT_PREFIX
    gateway_username: str = "trygg-gateway"
    gateway_password: str | None = None
    # The telemetry lane's account (default "<gateway_username>-telemetry").
    telemetry_username: str | None = None
    # The other gateways of a cluster: their lane accounts go into the files too.
    other_gateways: tuple[OtherGateway, ...] = ()
    # Where devices connect, for the enrolment answer (host, port, tls).
    host: str = "127.0.0.1"
    port: int = 1883

    def gateways(self) -> list[GatewayAccounts]:
        """Every gateway's lane accounts: this one's first."""
        return [GatewayAccounts.named(self.gateway_username, self.telemetry_username),
                *(GatewayAccounts.named(o.username, o.telemetry_username)
                  for o in self.other_gateways)]

    def reserved(self) -> frozenset[str]:
        """Usernames no device may have (they are gateway accounts)."""
        return frozenset(name for g in self.gateways() for name in g.names())


def _hash_code(code: str) -> str:
    return hashlib.sha256(code.replace("-", "").upper().encode()).hexdigest()


class DeviceRegistry:
    """Registry operations. Every method is synchronous and short; call from any thread.

    The rows live behind ``gateway.stores.registry.RegistryStore``: SQLite in the data
    directory by default, PostgreSQL (shared by a cluster) when ``store`` says so.
    """

    def __init__(
        self,
        data_dir: Path,
        org: OrgStore,
        broker: BrokerAccount,
        hooks: Hooks | None = None,
        clock: Callable[[], float] = time.time,
        store: RegistryStore | None = None,
    ) -> None:
        self.path = data_dir / REGISTRY_FILENAME
        self.org = org
        self.broker = broker
        self.hooks: Hooks = hooks or NoHooks()
        self._clock = clock
        self.store: RegistryStore = store if store is not None else SqliteRegistryStore(
            self.path)

    # -- queries -----------------------------------------------------------------------------

    def get(self, device_id: str) -> RegisteredDevice | None:
        """The registry row of a device, if registered."""
        return self.store.get(device_id)

    def all(self) -> list[RegisteredDevice]:
        """Every registered device, decommissioned ones included."""
        return self.store.all()

    def history(self, device_id: str) -> list[dict[str, Any]]:
        """The device's events, and those of the devices it replaced (oldest first)."""
        chain = [device_id]
        seen = {device_id}
        current = self.get(device_id)
        while current is not None and current.replaces and current.replaces not in seen:
            chain.append(current.replaces)
            seen.add(current.replaces)
            current = self.get(current.replaces)
        return [
            {"device_id": e.device_id, "at": e.at, "event": e.event, "actor": e.actor,
             "detail": json.loads(e.detail)}
            for e in self.store.history(chain)
        ]

    def _event(self, device_id: str, event: str, actor: str, **detail: Any) -> HistoryEvent:
        """A history entry, audited as it is made (the store writes it)."""
        self.hooks.audit(actor, device_id, {"event": event, **detail})
        return HistoryEvent.of(device_id, self._clock(), event, actor, **detail)

    def _require(self, device_id: str) -> tuple[RegisteredDevice, DeviceInfo]:
        registered = self.get(device_id)
        info = self.org.devices.get(device_id)
        if registered is None and info is not None:
            # Devices seeded straight into the organisation (demo, import) are adopted.
            registered = self._adopt(info)
        if registered is None or info is None or registered.state == "decommissioned":
            raise ProvisioningError(404, f"no active device {device_id!r}")
        return registered, info

    def _adopt(self, info: DeviceInfo) -> RegisteredDevice:
        row = RegisteredDevice(info.id, info.serial, info.type, info.model, "", "registered",
                               self._clock())
        self.store.adopt(row)
        return row

    # -- operations --------------------------------------------------------------------------

    def register(
        self, *, device_id: str, type: str, serial: str, model: str = "",
        firmware: str = "", actor: str, recipient_id: str | None = None,
    ) -> RegisteredDevice:
        """Add a device to the registry (and, with ``recipient_id``, bind it)."""
        if not valid_id(device_id) or device_id in self.broker.reserved():
            raise ProvisioningError(422, f"unusable device id {device_id!r}")
        if not valid_id(type):
            raise ProvisioningError(422, f"unusable device type {type!r}")
        if self.get(device_id) is not None or device_id in self.org.devices:
            raise ProvisioningError(409, f"device {device_id!r} is already registered")
        if recipient_id is not None and recipient_id not in self.org.recipients:
            raise ProvisioningError(404, f"no recipient {recipient_id!r}")
        row = RegisteredDevice(device_id, serial, type, model, firmware, "registered",
                               self._clock())
        event = HistoryEvent.of(device_id, row.registered_at, "registered", actor,
                                serial=serial, type=type, model=model, firmware=firmware)
        # Another gateway may have registered the id since the check above.
        if not self.store.register(row, event):
            raise ProvisioningError(409, f"device {device_id!r} is already registered")
        self.hooks.audit(actor, device_id, {"event": "registered", "serial": serial,
                                            "type": type, "model": model,
                                            "firmware": firmware})
        self.org.put_device(DeviceInfo(device_id, type, None, model, serial))
        if recipient_id is not None:
            self.bind(device_id, recipient_id, actor=actor)
        return row

    def bind(self, device_id: str, recipient_id: str, *, actor: str) -> DeviceInfo:
        """Bind a device to the recipient it protects; supervision starts."""
        _, info = self._require(device_id)
        if recipient_id not in self.org.recipients:
            raise ProvisioningError(404, f"no recipient {recipient_id!r}")
        if info.recipient_id is not None and info.recipient_id != recipient_id:
            raise ProvisioningError(409, f"device {device_id!r} is bound to another recipient;"
                                         " unbind it first")
        bound = replace(info, recipient_id=recipient_id)
        self.org.put_device(bound)
        self.store.log(self._event(device_id, "bound", actor, recipient_id=recipient_id))
        self.hooks.directory_changed()
        self.hooks.watch(bound)
        return bound

    def unbind(self, device_id: str, *, actor: str) -> DeviceInfo:
        """Unbind a device from its recipient; supervision stops."""
        _, info = self._require(device_id)
        unbound = replace(info, recipient_id=None)
        self.org.put_device(unbound)
        self.store.log(self._event(device_id, "unbound", actor, recipient_id=info.recipient_id))
        self.hooks.directory_changed()
        self.hooks.unwatch(device_id)
        return unbound

    def swap(self, old_id: str, new_id: str, *, actor: str) -> DeviceInfo:
        """Replace a broken device: the new one takes over binding, history and supervision."""
        if old_id == new_id:
            raise ProvisioningError(422, "a device cannot replace itself")
        _, old = self._require(old_id)
        _, new = self._require(new_id)
        if new.recipient_id is not None:
            raise ProvisioningError(409, f"device {new_id!r} is already bound")
        if old.recipient_id is None:
            raise ProvisioningError(409, f"device {old_id!r} is not bound to anyone")
        taken = replace(new, recipient_id=old.recipient_id)
        self.org.put_device(taken)
        self.store.swap(old_id, new_id, [
            self._event(new_id, "swapped_in", actor, replaces=old_id,
                        recipient_id=old.recipient_id),
            self._event(old_id, "swapped_out", actor, replaced_by=new_id),
        ])
        self.hooks.watch(taken)
        self._decommission(old_id, actor=actor, reason=f"replaced by {new_id}")
        return taken

    def decommission(self, device_id: str, *, actor: str) -> None:
        """Take a device out of service: unbound, credentials revoked, supervision stopped."""
        self._require(device_id)
        self._decommission(device_id, actor=actor, reason="decommissioned")

    def _decommission(self, device_id: str, *, actor: str, reason: str) -> None:
        self.store.decommission(device_id,
                                self._event(device_id, "decommissioned", actor, reason=reason))
        self.org.delete_device(device_id)
        self.sync_broker()
        self.hooks.directory_changed()
        self.hooks.unwatch(device_id)

    def set_firmware(self, device_id: str, firmware: str) -> None:
        """Record the firmware a device reported."""
        self.store.set_firmware(device_id, firmware)

    # -- enrolment ---------------------------------------------------------------------------

    def issue_claim(self, device_id: str, *, actor: str, ttl_s: float = CLAIM_TTL_S) -> ClaimCode:
        """A one-time code for the device; any earlier unused code for it stops working."""
        self._require(device_id)
        raw = "".join(secrets.choice(_CLAIM_ALPHABET) for _ in range(_CLAIM_LEN))
        code = f"{raw[:5]}-{raw[5:]}"
        expires = self._clock() + ttl_s
        self.store.issue_claim(_hash_code(code), device_id, expires,
                               self._event(device_id, "claim_issued", actor,
                                           expires_at=expires))
        qr = f"TRYGG:1;D={device_id};C={code}"
        return ClaimCode(device_id, code, qr, expires)

    def redeem(self, code: str) -> dict[str, Any]:
        """Exchange a claim code for the device's broker credentials, exactly once."""
        now = self._clock()
        code = code.strip()
        if code.upper().startswith("TRYGG:"):  # the whole QR payload was sent
            fields = dict(p.split("=", 1) for p in code.split(";")[1:] if "=" in p)
            code = fields.get("C", "")
        password = new_device_password()
        device_id = self.store.redeem(_hash_code(code), now, mosquitto_hash(password))
        if device_id is None:
            raise ProvisioningError(404, "unknown, used or expired claim code")
        self.hooks.audit(device_id, device_id, {"event": "enrolled"})
        self.sync_broker()
        broker = self.broker
        return {
            "device_id": device_id,
            "mqtt": {"host": broker.host, "port": broker.port, "username": device_id,
                     "password": password, "client_id": device_id},
            "topics": {
                "publish": [f"{broker.prefix}/{device_id}/{c}"
                            for c in ("alarm", "telemetry", "heartbeat", "status")],
                "subscribe": [f"{broker.prefix}/{device_id}/{c}" for c in ("ack", "cmd")],
            },
        }

    def sync_broker(self) -> bool:
        """Rewrite the broker files from the registry and reload; whether files were written."""
        files = self.broker.files
        if files is None:
            return False
        broker = self.broker
        accounts = accounts_with_gateway(
            self.store.credentials(), broker.gateway_username, broker.gateway_password,
            telemetry_username=broker.telemetry_username, others=broker.other_gateways,
        )
        files.write(accounts, broker.prefix, broker.gateways())
        if files.reload():
            _LOGGER.info("broker credentials reloaded (%d accounts)", len(accounts))
        return True

    def has_credentials(self, device_id: str) -> bool:
        """Whether the device holds valid broker credentials."""
        return self.store.has_credentials(device_id)


# -- CLI: ``trygg devices ...`` -------------------------------------------------------------------


def main_devices(argv: list[str]) -> int:
    """``trygg devices list|register|bind|unbind|swap|decommission|claim-code`` offline.

    Works on the data directory directly (the gateway may be stopped); a running gateway picks
    routing changes up at its next start. Broker files are rewritten when ``--broker-dir`` is
    given (and the broker SIGHUPed with ``--broker-pid``).
    """
    import argparse

    parser = argparse.ArgumentParser(prog="trygg devices", description=main_devices.__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path("trygg-data"))
    parser.add_argument("--actor", default="cli", help="who is doing this (audited)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX)
    parser.add_argument("--broker-dir", type=Path, default=None,
                        help="write passwd and acl here after credential changes")
    parser.add_argument("--broker-pid", type=int, default=None)
    parser.add_argument("--gateway-username", default="trygg-gateway")
    sub = parser.add_subparsers(dest="op", required=True)
    sub.add_parser("list", help="all registered devices")
    reg = sub.add_parser("register", help="register a device")
    reg.add_argument("device_id")
    reg.add_argument("--type", required=True)
    reg.add_argument("--serial", required=True)
    reg.add_argument("--model", default="")
    reg.add_argument("--firmware", default="")
    reg.add_argument("--recipient", default=None)
    bind = sub.add_parser("bind", help="bind a device to a recipient")
    bind.add_argument("device_id")
    bind.add_argument("recipient_id")
    unbind = sub.add_parser("unbind", help="unbind a device")
    unbind.add_argument("device_id")
    swap = sub.add_parser("swap", help="replace OLD by the registered NEW")
    swap.add_argument("old_id")
    swap.add_argument("new_id")
    dec = sub.add_parser("decommission", help="take a device out of service")
    dec.add_argument("device_id")
    claim = sub.add_parser("claim-code", help="issue a one-time enrolment code")
    claim.add_argument("device_id")
    args = parser.parse_args(argv)

    files = None
    if args.broker_dir is not None:
        files = BrokerFiles(args.broker_dir / "passwd", args.broker_dir / "acl",
                            pid=args.broker_pid)
    org = OrgStore(args.data_dir / "org.sqlite3")
    try:
        registry = DeviceRegistry(args.data_dir, org, BrokerAccount(
            files, prefix=args.prefix, gateway_username=args.gateway_username))
        result: Any
        if args.op == "list":
            result = [
                {**_row_json(r), "recipient_id": (org.devices[r.device_id].recipient_id
                                                  if r.device_id in org.devices else None)}
                for r in registry.all()
            ]
            known = {r.device_id for r in registry.all()}
            result += [{"device_id": d.id, "type": d.type, "state": "unregistered",
                        "recipient_id": d.recipient_id}
                       for d in org.devices.values() if d.id not in known]
        elif args.op == "register":
            result = _row_json(registry.register(
                device_id=args.device_id, type=args.type, serial=args.serial, model=args.model,
                firmware=args.firmware, actor=args.actor, recipient_id=args.recipient))
        elif args.op == "bind":
            result = dataclasses_asdict(registry.bind(args.device_id, args.recipient_id,
                                                      actor=args.actor))
        elif args.op == "unbind":
            result = dataclasses_asdict(registry.unbind(args.device_id, actor=args.actor))
        elif args.op == "swap":
            result = dataclasses_asdict(registry.swap(args.old_id, args.new_id,
                                                      actor=args.actor))
        elif args.op == "decommission":
            registry.decommission(args.device_id, actor=args.actor)
            result = {"device_id": args.device_id, "state": "decommissioned"}
        else:
            claim_code = registry.issue_claim(args.device_id, actor=args.actor)
            result = {"device_id": claim_code.device_id, "code": claim_code.code,
                      "qr": claim_code.qr, "expires_at": claim_code.expires_at}
    except ProvisioningError as exc:
        print(f"error: {exc.reason}", file=sys.stderr)
        return 1
    finally:
        org.close()
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def _row_json(row: RegisteredDevice) -> dict[str, Any]:
    return dataclasses_asdict(row)
