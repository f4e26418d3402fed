"""Per-device broker credentials and topic ACLs, for Mosquitto and the embedded broker.

The rules (docs/security.md):

- a device (username = device id) may publish only to ``{prefix}/{id}/alarm``,
  ``/telemetry``, ``/heartbeat`` and ``/status``, and read (subscribe to, receive) only
  ``{prefix}/{id}/ack`` and ``{prefix}/{id}/cmd``;
- a gateway has one account per broker session (lane): the alarm lane's account may do
  everything under ``{prefix}/#``, the telemetry lane's (``<account>-telemetry``) may only
  read ``{prefix}/+/telemetry``;
- anonymous clients and unknown or revoked accounts are refused;
- a client can only use its own client id: the broker replaces the client id with the
  username (Mosquitto ``use_username_as_clientid``, in ``mosquitto_conf`` and
  deploy/mosquitto/trygg.conf), so no account can take over another's session, the
  gateway's included. That is why each lane has an account of its own.

Mosquitto reads a password file of ``user:$7$iterations$salt$hash`` lines (PBKDF2-HMAC-SHA512,
as written by ``mosquitto_passwd`` since 2.0: 12 random salt bytes, 101 iterations, both
base64) and an ACL file; ``write_mosquitto_files`` replaces both atomically (temp file +
``os.replace``) and ``reload_mosquitto`` sends SIGHUP so the broker re-reads them. On reload
Mosquitto re-checks connected clients, so a revoked device loses its session at once.

The embedded amqtt broker gets the same rules from ``DeviceAuthPlugin`` and ``DeviceAclPlugin``,
which read the very same two files (re-read whenever they change on disk).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import signal
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from pydantic import BaseModel, ConfigDict, Field

# mosquitto_passwd's defaults (src/password_mosq.c: SALT_LEN 12, PW_DEFAULT_ITERATIONS 101).
# 101 iterations is weak against offline guessing of human passwords; device passwords are
# 32 random bytes, so the count does not matter for them and we keep the broker's default
# (a higher count costs the broker CPU on every CONNECT).
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
DEVICE_PUBLISH = ("alarm", "telemetry", "heartbeat", "status")
DEVICE_READ = ("ack", "cmd")
# The telemetry lane's account: "<alarm lane account>-telemetry" unless configured.
TELEMETRY_SUFFIX = "-telemetry"


def telemetry_account(username: str) -> str:
    """The telemetry lane's broker account of the gateway whose alarm lane is ``username``."""
    return f"{username}{TELEMETRY_SUFFIX}"


class OtherGateway(BaseModel):
    """Another gateway of the cluster, whose lane accounts go into the files as well.

    With ``use_username_as_clientid`` every gateway needs accounts of its own (gateways
    sharing one account would take each other's sessions over). The gateway that writes the
    files knows only its own password, so the others come as ``mosquitto_passwd`` hashes.
    """

    model_config = ConfigDict(extra="forbid")

    username: str
    # The "$7$..." part of a mosquitto_passwd line for the gateway's [mqtt] password.
    password_hash: str = Field(pattern=r"^\$7\$[0-9]+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")
    telemetry_username: str | None = None

    def accounts(self) -> GatewayAccounts:
        """Its two lane accounts."""
        return GatewayAccounts.named(self.username, self.telemetry_username)


@dataclass(frozen=True, slots=True)
class GatewayAccounts:
    """The broker accounts of one gateway, one per lane (``gateway.mqtt``)."""

    alarm: str
    telemetry: str

    @classmethod
    def named(cls, username: str, telemetry: str | None = None) -> GatewayAccounts:
        """``username``'s lanes; the telemetry account defaults to ``<username>-telemetry``."""
        return cls(username, telemetry or telemetry_account(username))

    def names(self) -> tuple[str, str]:
        """Both usernames."""
        return (self.alarm, self.telemetry)


class BrokerAuthSettings(BaseModel):
    """Where the broker's credential files live and how to make it re-read them.

    ``password_file`` / ``acl_file`` default to ``{data_dir}/broker/passwd`` and ``.../acl``.
    ``pid_file`` (or ``pid``) names the Mosquitto process to SIGHUP after a change; without
    either the files are only written (the embedded broker's plugin notices them itself).
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    password_file: Path | None = None
    acl_file: Path | None = None
    pid_file: Path | None = None
    pid: int | None = None
    gateway_username: str = "trygg-gateway"
    # The other gateways of a cluster (their lane accounts): docs/deployment.md.
    other_gateways: list[OtherGateway] = []


# -- password hashes --------------------------------------------------------------------------


def mosquitto_hash(password: str, *, salt: bytes | None = None,
                   iterations: int = PBKDF2_ITERATIONS) -> str:
    """A ``$7$`` hash exactly as ``mosquitto_passwd`` writes it."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_mosquitto_hash(encoded: str, password: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash (constant-time compare)."""
    parts = encoded.split("$")
    # "", "7", iterations, salt, hash
    if len(parts) != 5 or parts[0] != "" or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    if not 1 <= iterations <= 10_000_000:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return hmac.compare_digest(digest, expected)


def new_device_password() -> str:
    """A random broker password for one device (256 bits)."""
    return secrets.token_urlsafe(32)


# -- the two files ----------------------------------------------------------------------------


def _gateways(gateways: str | Sequence[GatewayAccounts]) -> list[GatewayAccounts]:
    return [GatewayAccounts.named(gateways)] if isinstance(gateways, str) else list(gateways)


def acl_text(prefix: str, gateways: str | Sequence[GatewayAccounts]) -> str:
    """Mosquitto ACL: each gateway's alarm lane owns the prefix and its telemetry lane reads
    telemetry; every other user only its own topics."""
    lines = ["# Generated by trygg (gateway/broker_auth.py); changes are overwritten."]
    for accounts in _gateways(gateways):
        lines += [
            f"user {accounts.alarm}",
            f"topic readwrite {prefix}/#",
            f"user {accounts.telemetry}",
            f"topic read {prefix}/+/telemetry",
        ]
    lines += [
        "",
        "# Every account (devices: username = device id) may use only its own topics.",
    ]
    lines += [f"pattern write {prefix}/%u/{channel}" for channel in DEVICE_PUBLISH]
    lines += [f"pattern read {prefix}/%u/{channel}" for channel in DEVICE_READ]
    return "\n".join(lines) + "\n"


def password_text(accounts: Mapping[str, str]) -> str:
    """``user:hash`` lines, sorted; usernames must not contain ``:`` or whitespace."""
    lines = []
    for user, encoded in sorted(accounts.items()):
        if not user or any(c in user for c in ": \t\r\n") or "\n" in encoded:
            raise ValueError(f"unusable broker username {user!r}")
        lines.append(f"{user}:{encoded}")
    return "\n".join(lines) + "\n"


def atomic_write(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to a temp file beside ``path``, fsync, then ``os.replace`` it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """The password and ACL files one broker reads."""

    password_file: Path
    acl_file: Path
    pid_file: Path | None = None
    pid: int | None = None

    def write(self, accounts: Mapping[str, str], prefix: str,
              gateways: str | Sequence[GatewayAccounts]) -> None:
        """Replace both files (ACL first: a new account must never run without its rules)."""
        atomic_write(self.acl_file, acl_text(prefix, gateways))
        atomic_write(self.password_file, password_text(accounts))

    def reload(self) -> bool:
        """SIGHUP the broker, if one is configured; whether a signal was sent."""
        pid = self.pid
        if pid is None and self.pid_file is not None:
            try:
                pid = int(self.pid_file.read_text().strip())
            except (OSError, ValueError):
                return False
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            return False
        return True


def mosquitto_conf(files: BrokerFiles, *, port: int, host: str = "127.0.0.1") -> str:
    """The lines a mosquitto.conf needs for these rules (listener, no anonymous, files).

    ``use_username_as_clientid`` is a listener option (every listener needs it): the broker
    replaces each client's id with its username, so a client can only ever take over its
    own session.
    """
    return (
        f"listener {port} {host}\n"
        "use_username_as_clientid true\n"
        "allow_anonymous false\n"
        f"password_file {files.password_file}\n"
        f"acl_file {files.acl_file}\n"
    )


# -- the embedded broker ------------------------------------------------------------------------


@dataclass(slots=True)
class _Rules:
    """The parsed files, cached by modification time."""

    accounts: dict[str, str] = field(default_factory=dict)
    gateways: set[str] = field(default_factory=set)
    readers: set[str] = field(default_factory=set)  # telemetry lanes
    prefix: str | None = None
    stamp: tuple[float, float] = (-1.0, -1.0)


def _stat(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns / 1e9
    except FileNotFoundError:
        return 0.0


def _load(rules: _Rules, password_file: Path, acl_file: Path) -> _Rules:
    stamp = (_stat(password_file), _stat(acl_file))
    if stamp == rules.stamp:
        return rules
    fresh = _Rules(stamp=stamp)
    if password_file.exists():
        for raw in password_file.read_text(encoding="utf-8").splitlines():
            user, sep, encoded = raw.strip().partition(":")
            if sep and user and not user.startswith("#"):
                fresh.accounts[user] = encoded
    if acl_file.exists():
        lines = [ln.strip() for ln in acl_file.read_text(encoding="utf-8").splitlines()]
        for current, following in zip(lines, [*lines[1:], ""], strict=True):
            user = current.removeprefix("user ").strip()
            if current.startswith("user ") and following.startswith("topic readwrite "):
                fresh.gateways.add(user)
                fresh.prefix = following.removeprefix("topic readwrite ").strip().removesuffix(
                    "/#")
            elif current.startswith("user ") and following.startswith("topic read "):
                fresh.readers.add(user)
    return fresh


def telemetry_allowed(prefix: str | None, topic: str, action: str) -> bool:
    """The ACL decision for a telemetry lane's account: read ``{prefix}/+/telemetry``."""
    if prefix is None or action == "publish":
        return False
    rest = topic.removeprefix(prefix + "/").split("/") if topic.startswith(prefix + "/") else []
    return len(rest) == 2 and rest[1] == "telemetry"


def allowed(
    username: str | None, gateway: str | None, prefix: str | None, topic: str, action: str
) -> bool:
    """The ACL decision of the amqtt plugin; action is publish, subscribe or receive."""
    if username is None or prefix is None or not topic.startswith(prefix + "/"):
        return False
    if username == gateway:
        return True
    rest = topic[len(prefix) + 1:].split("/")
    if len(rest) != 2 or rest[0] != username:
        return False
    if action == "publish":
        return rest[1] in DEVICE_PUBLISH
    return rest[1] in DEVICE_READ


class _FilesPlugin:
    """Mixin: the two files from the plugin's Config, re-read when they change."""

    config: Any
    _rules: _Rules

    def _current(self) -> _Rules:
        self._rules = _load(
            self._rules, Path(self.config.password_file), Path(self.config.acl_file)
        )
        return self._rules


class DeviceAuthPlugin(_FilesPlugin, BaseAuthPlugin):  # type: ignore[misc]
    """amqtt authentication against the Mosquitto password file (``$7$`` hashes only)."""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._rules = _Rules()

    async def authenticate(self, *, session: Session) -> bool | None:
        """Known account with the right password; anonymous is refused."""
        if not session.username:
            return False
        encoded = self._current().accounts.get(session.username)
        return encoded is not None and verify_mosquitto_hash(encoded, session.password or "")

    @dataclass
    class Config:
        """Plugin configuration (the broker config's ``plugins`` section)."""

        password_file: str = ""
        acl_file: str = ""


class DeviceAclPlugin(_FilesPlugin, BaseTopicPlugin):  # type: ignore[misc]
    """amqtt topic ACL with the same rules as the Mosquitto ACL file."""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._rules = _Rules()

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None,
        action: Action | None = None,
    ) -> bool | None:
        """Allow only what ``allowed`` allows."""
        if session is None or topic is None or action is None:
            return False
        rules = self._current()
        username = session.username
        # A revoked account keeps no rights, even over a session opened before.
        if username is None or username not in rules.accounts:
            return False
        if username in rules.readers:
            return telemetry_allowed(rules.prefix, topic, action.value)
        gateway = username if username in rules.gateways else None
        return allowed(username, gateway, rules.prefix, topic, action.value)

    @dataclass
    class Config:
        """Plugin configuration (the broker config's ``plugins`` section)."""

        password_file: str = ""
        acl_file: str = ""


def embedded_plugins(files: BrokerFiles) -> dict[str, dict[str, Any]]:
    """The ``plugins`` section for an amqtt ``Broker`` config enforcing these rules."""
    config = {"password_file": str(files.password_file), "acl_file": str(files.acl_file)}
    return {
        f"{__name__}.DeviceAuthPlugin": dict(config),
        f"{__name__}.DeviceAclPlugin": dict(config),
    }


def accounts_with_gateway(
    devices: Iterable[tuple[str, str]], gateway_username: str, gateway_password: str | None,
    *, telemetry_username: str | None = None, others: Sequence[OtherGateway] = (),
) -> dict[str, str]:
    """Device ``(id, hash)`` pairs plus the gateways' lane accounts: this gateway's (if it
    has a password) and the other gateways' of a cluster (from their hashes). A device id
    that is a gateway account's name never gets in."""
    own = GatewayAccounts.named(gateway_username, telemetry_username)
    accounts = dict(devices)
    for name in (*own.names(), *(n for o in others for n in o.accounts().names())):
        accounts.pop(name, None)
    if gateway_password:
        for name in own.names():
            accounts[name] = mosquitto_hash(gateway_password)
    for other in others:
        for name in other.accounts().names():
            accounts[name] = other.password_hash
    return accounts
