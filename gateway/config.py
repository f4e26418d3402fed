"""Gateway settings: defaults, then a TOML file, then ``TRYGG_*`` environment variables."""

from __future__ import annotations

import errno
import ipaddress
import logging
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from alarms.escalation import SmsRule
from alarms.model import AlarmType
from devices.contract import DEFAULT_PREFIX
from devices.scaip import ScaipTables, StatusRule, parse_status_rule
from gateway.privacy import RetentionSettings
from gateway.pushguard import DEFAULT_PUSH_HOSTS
from gateway.security import MIN_ACCESS_TTL_DEMO_S, MIN_ACCESS_TTL_S, SecuritySettings
from gateway.smscodec import RecipientField
from gateway.strength import secret_problem

if TYPE_CHECKING:
    # Only what a configured [dc09] or SCAIP centre needs: not imported to load settings.
    from devices.dc09 import Dc09Account, Meaning
    from devices.scaip_out import CentreCode, SipUri

_LOGGER = logging.getLogger(__name__)

DEFAULT_SECRET = "changethis"  # noqa: S105 - the marker we refuse outside demo mode


class MqttSettings(BaseModel):
    """The broker the gateway talks to devices through."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=0, le=65535)
    prefix: str = DEFAULT_PREFIX
    # The alarm lane's broker account; the telemetry lane logs in as ``telemetry_username``
    # (default "<username>-telemetry") with the same password: with Mosquitto's
    # use_username_as_clientid each lane's username is its client id (docs/security.md).
    username: str | None = None
    password: str | None = None
    telemetry_username: str | None = None
    client_id: str | None = None
    keepalive_s: int = Field(default=30, ge=5, le=600)
    # TLS to the broker (docs/configuration.md, "TLS to the broker"). The broker's
    # certificate and host name are always verified; there is no switch to turn that off.
    tls: bool = False
    # PEM CA bundle the broker's certificate must chain to; None: the system trust store.
    ca_file: Path | None = None
    # A client certificate and its key (PEM), for brokers with ``require_certificate``.
    cert_file: Path | None = None
    key_file: Path | None = None
    # The name the broker's certificate must carry (and the SNI sent), when ``host`` is not
    # that name, e.g. an IP address.
    tls_server_name: str | None = Field(default=None, min_length=1)

    @field_validator("prefix")
    @classmethod
    def _prefix_has_no_wildcards(cls, value: str) -> str:
        if not value or any(c in value for c in "+#") or value.endswith("/"):
            raise ValueError("prefix must be a non-empty topic without wildcards or trailing /")
        return value

    @model_validator(mode="after")
    def _user_and_password_together(self) -> MqttSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("mqtt.username and mqtt.password must be set together")
        if self.telemetry_username is not None and self.username is None:
            raise ValueError("mqtt.telemetry_username needs mqtt.username and password")
        return self

    def lane_username(self, lane: str) -> str | None:
        """The broker account of a lane ("alarm" or "telemetry"); None without accounts."""
        if self.username is None or lane == "alarm":
            return self.username
        return self.telemetry_username or telemetry_account(self.username)

    @model_validator(mode="after")
    def _tls_files(self) -> MqttSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("mqtt.cert_file and mqtt.key_file must be set together")
        if not self.tls:
            # Refused rather than ignored: a CA or certificate without ``tls`` most likely
            # means TLS was meant, and ignoring them would connect in clear text.
            stray = [name for name in _TLS_ONLY if getattr(self, name) is not None]
            if stray:
                raise ValueError(
                    f"mqtt.{', mqtt.'.join(stray)} set but mqtt.tls is false: "
                    "set tls = true, or remove them"
                )
            return self
        # Read the files now, so that a missing or bad one stops start-up with its name.
        self.client_context()
        return self

    def client_context(self) -> ssl.SSLContext | None:
        """The TLS client context for the broker link, or None without ``tls``.

        Raises ``ValueError`` naming the file when a CA, certificate or key cannot be used.
        """
        if not self.tls:
            return None
        from gateway.mqtt import BrokerTlsContext

        # PROTOCOL_TLS_CLIENT: CERT_REQUIRED and check_hostname, as create_default_context.
        context = BrokerTlsContext(ssl.PROTOCOL_TLS_CLIENT)
        context.server_name = self.tls_server_name
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca_file is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            try:
                context.load_verify_locations(cafile=self.ca_file)
            except OSError as exc:  # ssl.SSLError included
                raise ValueError(
                    f"mqtt.ca_file {self.ca_file}: not a readable PEM CA bundle ({exc})"
                ) from None
        if self.cert_file is not None and self.key_file is not None:
            try:
                context.load_cert_chain(self.cert_file, self.key_file, password=_no_passphrase)
            except (OSError, ValueError) as exc:
                raise ValueError(
                    f"mqtt.cert_file {self.cert_file} / key_file {self.key_file}: not a readable "
                    f"PEM certificate and matching key ({exc})"
                ) from None
        return context


# Settings that only mean something with ``mqtt.tls``.
_TLS_ONLY = ("ca_file", "cert_file", "key_file", "tls_server_name")


def _no_passphrase() -> str:
    # Without a callback OpenSSL prompts on the terminal for an encrypted key's passphrase,
    # which would hang (or, without a terminal, fail obscurely) a service's start.
    raise ValueError("the key is encrypted; the gateway needs an unencrypted key (mode 0600)")


class PushSettings(BaseModel):
    """Web Push (docs/staff-app.md): which push services subscriptions may point at."""

    model_config = ConfigDict(extra="forbid")

    # Endpoint hosts the gateway will POST to (docs/security.md, "Web Push endpoints"):
    # exact names, or "*.domain" for any subdomain. The default is the major browsers' push
    # services; add a self-hosted one (e.g. an autopush) here.
    allowed_hosts: list[str] = Field(default_factory=lambda: list(DEFAULT_PUSH_HOSTS),
                                     min_length=1)

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        for pattern in value:
            name = pattern.removeprefix("*.")
            labels = name.split(".")
            if (len(labels) < 2 or any(not label or not all(c.isalnum() or c == "-"
                                                               for c in label)
                                       for label in labels)
                    or all(label.isdigit() for label in labels)):
                raise ValueError(f"{pattern!r} is not a host name (or *.domain)")
        return [p.lower() for p in value]


class ClusterSettings(BaseModel):
    """Several gateways sharing one PostgreSQL journal and one broker (docs/deployment.md)."""

    model_config = ConfigDict(extra="forbid")

    # MQTT shared-subscription group: alarms and telemetry reach one gateway of the group.
    shared_group: str = "trygg"
    # Lease time-to-live: a dead gateway's work is taken over within about 4/3 of it.
    lease_ttl_s: float = Field(default=5.0, ge=1.0, le=60.0)

    @field_validator("shared_group")
    @classmethod
    def _group_is_one_level(cls, value: str) -> str:
        if not value or any(c in value for c in "+#/"):
            raise ValueError("shared_group must be a non-empty name without +, # or /")
        return value


class HttpSettings(BaseModel):
    """The staff API and web app."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


class InfluxSettings(BaseModel):
    """Long-term telemetry in an InfluxDB v2 write API compatible server (docs/telemetry.md)."""

    model_config = ConfigDict(extra="forbid")

    url: str
    token: str = ""
    org: str = ""
    bucket: str = "trygg"


class SmsStepSettings(BaseModel):
    """One SMS fallback rule (``[[escalation.sms]]``, docs/sms.md)."""

    model_config = ConfigDict(extra="forbid")

    # Seconds from stored (or handed back) without any phone confirming receipt.
    after_s: float = Field(gt=0)
    # Alarms this urgent or more: 1 fire/water, 2 button/fall, 3 sensor alarms; 0 none.
    # Technical and test alarms are never texted.
    max_priority: int = Field(default=2, ge=0, le=3)
    # Teams the rule is for; empty: every team that has no rule of its own.
    teams: list[str] = []


# With [sms] configured and no rules: text button, fall, fire and water alarms that no phone
# confirmed within 30 s, half-way to the first rung (re-alert the team at 60 s).
DEFAULT_SMS_STEP = SmsStepSettings(after_s=30.0, max_priority=2)


class CentreScaipSettings(BaseModel):
    """The alarm centre as a SCAIP receiver: SIP MESSAGE + <mrq> (docs/scaip.md)."""

    model_config = ConfigDict(extra="forbid")

    # The centre's SIP URI (request URI; its host and port are where we send).
    uri: str
    transport: Literal["udp", "tcp", "tls"] = "udp"
    # Our address: bound locally and written in Via and From.
    local_host: str = "127.0.0.1"
    local_port: int = Field(default=0, ge=0, le=65535)
    # Our SIP user (keepalives, OPTIONS) when no controller id is set.
    user: str = "trygg"
    # The <cid> we send: the message model's 1-16 digits, as the centre registered this
    # gateway. Device ids are not cids, so each alarm's device id goes in <did>.
    controller_id: str = Field(pattern=r"^[0-9]{1,16}$")
    # Alarm type -> {"dty": "0005", "stc": "0010"}, over devices/scaip_out.DEFAULT_CODES.
    codes: dict[str, dict[str, str]] = {}
    # How the link is supervised between alarms: a SCAIP PI heartbeat (as controllers
    # send), SIP OPTIONS, or not at all.
    keepalive: Literal["pi", "options", "none"] = "pi"
    keepalive_s: float = Field(default=60.0, gt=0)
    # Unanswered transactions in a row before the link counts as down (technical alarm).
    down_after: int = Field(default=1, ge=1)
    # TLS: the CA the centre's certificate must chain to (unset: system store), and the
    # name to verify when the URI's host is an address.
    ca_file: Path | None = None
    tls_server_name: str | None = None

    @model_validator(mode="after")
    def _valid(self) -> CentreScaipSettings:
        self.target()
        self.code_table()
        from devices.scaip_out import valid_user

        if not valid_user(self.user):
            raise ValueError(f"centre_scaip.user {self.user!r} is not a SIP user")
        if self.transport != "tls" and (self.ca_file or self.tls_server_name):
            raise ValueError("centre_scaip.ca_file / tls_server_name need transport = tls")
        return self

    def target(self) -> SipUri:
        """The centre's URI, parsed."""
        from devices.scaip_out import parse_sip_uri

        return parse_sip_uri(self.uri)

    def code_table(self) -> dict[AlarmType, CentreCode]:
        """Alarm type -> (dty, stc) with this site's codes."""
        from devices.scaip_out import codes_with

        return codes_with(self.codes)

    def client_context(self) -> ssl.SSLContext | None:
        """The TLS client context (certificate and name verified), for transport tls."""
        if self.transport != "tls":
            return None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca_file is not None:
            context.load_verify_locations(cafile=self.ca_file)
        return context


class EscalationSettings(BaseModel):
    """The escalation ladder (docs/routing.md). Seconds count from when the alarm was stored
    (or handed back) without anybody accepting it."""

    model_config = ConfigDict(extra="forbid")

    team_s: float = Field(default=60.0, gt=0)
    next_level_s: float = Field(default=180.0, gt=0)
    centre_s: float = Field(default=300.0, gt=0)
    presence_deadline_s: float = Field(default=30 * 60.0, gt=0)
    reminder_s: float = Field(default=300.0, gt=0)
    centre_retry_s: float = Field(default=30.0, gt=0)
    # The external alarm centre (larmcentral): JSON POSTed here; a 2xx answer confirms it.
    centre_url: str | None = None
    # The SMS fallback's rules (need [sms]); none with [sms] set means DEFAULT_SMS_STEP.
    sms: list[SmsStepSettings] = []
    # An SMS round not delivered within this (or failed) brings the next rung forward.
    sms_delivery_timeout_s: float = Field(default=120.0, gt=0)

    @property
    def sms_rules(self) -> tuple[SmsRule, ...]:
        """The rules for the pure core (``alarms.escalation.sms_schedule``)."""
        return tuple(SmsRule(r.after_s, r.max_priority, frozenset(r.teams)) for r in self.sms)

    @property
    def has_centre(self) -> bool:
        """Whether an alarm centre is configured (else the ladder has no centre step)."""
        if self.centre_protocol == "scaip":
            return self.centre_scaip is not None
        return self.centre_url is not None


    # How to talk to it: "http-json" (centre_url) or "scaip" (centre_scaip, docs/scaip.md).
    centre_protocol: Literal["http-json", "scaip"] = "http-json"
    centre_scaip: CentreScaipSettings | None = None

    @model_validator(mode="after")
    def _centre_protocol(self) -> EscalationSettings:
        if self.centre_protocol == "scaip" and self.centre_scaip is None:
            raise ValueError("centre_protocol = \"scaip\" needs [escalation.centre_scaip]")
        return self

    @model_validator(mode="after")
    def _increasing(self) -> EscalationSettings:
        if not self.team_s < self.next_level_s < self.centre_s:
            raise ValueError("escalation times must increase: team_s < next_level_s < centre_s")
        return self


class SmsSettings(BaseModel):
    """The SMS fallback through Kannel (docs/sms.md): where to send, how callbacks are
    protected, what a message says."""

    model_config = ConfigDict(extra="forbid")

    # smsbox's sendsms interface and the sendsms-user it checks.
    sendsms_url: str = "http://127.0.0.1:13013/cgi-bin/sendsms"
    username: str = Field(min_length=1)
    password: str = Field(min_length=1)
    # The originator: the number (or short code) the operator routes replies back from. An
    # alphanumeric sender ("TRYGG") cannot be replied to.
    sender: str = Field(min_length=1, max_length=16, pattern=r"^\+?[A-Za-z0-9]+$")
    # bearerbox's status page, polled to supervise Kannel and its SMSC link; None: not.
    status_url: str | None = "http://127.0.0.1:13000/status.xml"
    status_password: str | None = None
    check_interval_s: float = Field(default=10.0, gt=0, le=300)
    timeout_s: float = Field(default=10.0, gt=0, le=60)
    # How Kannel reaches the gateway's HTTP API (dlr-url, get-url); None: http://host:port
    # of [http].
    callback_url: str | None = None
    # Shared secret in the callback URLs (MO get-url; DLR tokens are derived from it).
    # URL-safe characters only: Kannel substitutes %-escapes in those URLs.
    callback_secret: str = Field(min_length=24, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")
    # Client addresses allowed to call back (bearerbox/smsbox hosts); empty: any.
    callback_allow: list[str] = []
    # The staff app link in every SMS; None: no link.
    app_url: str | None = None
    # What an SMS says about where to go: address, code (the recipient id) or none.
    recipient_field: RecipientField = RecipientField.ADDRESS
    # Answer each staff reply with an SMS saying what became of it.
    confirm_replies: bool = True

    @field_validator("status_url", "callback_url", "app_url", "status_password")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        # TOML has no null: "" is how a file says "none".
        return value or None


class ScaipSettings(BaseModel):
    """The SCAIP (SS 91100) receiver: SIP MESSAGE over UDP and TCP (docs/scaip.md)."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=5060, ge=0, le=65535)
    udp: bool = True
    tcp: bool = True
    # Controllers that expect the <mrs> in the 200 OK body instead of a MESSAGE of its own.
    mrs_in_response: list[str] = []
    # SIP over TLS on the stream listener (then plain TCP is not offered): PEM files.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Require client certificates signed by this CA (mutual TLS), when set.
    tls_client_ca: Path | None = None
    # Site corrections to the SCAIP code tables (docs/scaip.md, "Code tables"): device type
    # code -> trygg alarm type ("smoke", ..., "technical" for infrastructure), and status
    # code -> meaning ("alarm", "test", "cancel", "reset", "complete", "presence", "info",
    # "fault:<kind>", "restore:<kind>" or "restore:*"). Keys are the codes, "23" or "0023".
    device_types: dict[str, str] = {}
    status_codes: dict[str, str] = {}
    # Networks whose UDP sources need not prove their address first (the controllers' VPN
    # or private APN, CIDR): they get <mrs> retransmissions from the first message on.
    trusted_networks: list[str] = []
    # Per-source limits (gateway/sipguard.py, docs/security.md).
    datagrams_per_s: float = Field(default=20.0, gt=0, le=10_000)
    max_connections_per_source: int = Field(default=8, ge=1, le=1024)

    @field_validator("trusted_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not a network (CIDR)") from None
        return value

    @field_validator("device_types", "status_codes")
    @classmethod
    def _codes(cls, value: dict[str, str]) -> dict[str, str]:
        for code in value:
            if not code.isdigit() or len(code) > 4:
                raise ValueError(f"code {code!r} must be 1-4 digits")
        return value

    @model_validator(mode="after")
    def _tables_valid(self) -> ScaipSettings:
        self.tables()  # refuses a bad row at start-up, naming it
        return self

    def tables(self) -> ScaipTables:
        """The default code tables with this site's rows on top."""
        device_types: dict[int, AlarmType] = {}
        for code, name in self.device_types.items():
            try:
                device_types[int(code)] = AlarmType(name)
            except ValueError:
                allowed = ", ".join(t.value for t in AlarmType if t is not AlarmType.TEST)
                raise ValueError(
                    f"scaip.device_types[{code!r}]: {name!r} is not one of {allowed}"
                ) from None
        status_codes: dict[int, StatusRule] = {}
        for code, text in self.status_codes.items():
            try:
                status_codes[int(code)] = parse_status_rule(text)
            except ValueError as exc:
                raise ValueError(f"scaip.status_codes[{code!r}]: {exc}") from None
        return ScaipTables.with_overrides(device_types, status_codes)

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> ScaipSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("scaip.tls_cert and scaip.tls_key must be set together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("scaip.tls_client_ca needs tls_cert and tls_key")
        return self

    def server_context(self) -> ssl.SSLContext | None:
        """The TLS server context, when TLS is configured."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.tls_cert, self.tls_key)
        if self.tls_client_ca is not None:
            context.load_verify_locations(self.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


class Dc09AccountSettings(BaseModel):
    """One DC-09 transmitter account and the device it is (docs/dc09.md)."""

    model_config = ConfigDict(extra="forbid")

    account: str
    device_id: str
    # The AES key as the transmitter is programmed with it (16, 24 or 32 hex characters);
    # with a key the account accepts encrypted messages only.
    key: str | None = Field(default=None, repr=False)


class Dc09Settings(BaseModel):
    """The SIA DC-09 receiver: TCP and UDP (docs/dc09.md)."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    # DC-09 has no registered port: use what the transmitters are programmed with.
    port: int = Field(default=9000, ge=0, le=65535)
    udp: bool = True
    tcp: bool = True
    accounts: list[Dc09AccountSettings] = []
    # Site corrections of the code tables: {"BA" = "door", "cid:130" = "door",
    # "RP" = "heartbeat", "OP" = "status:opened"}.
    codes: dict[str, str] = {}

    @model_validator(mode="after")
    def _valid(self) -> Dc09Settings:
        # Built once here so a bad account, key or code stops start-up with its name.
        self.receiver_accounts()
        self.code_tables()
        return self

    def receiver_accounts(self) -> list[Dc09Account]:
        """The accounts as ``devices.dc09.Dc09Account`` (validated)."""
        from devices.dc09 import Dc09Account, accounts_by_id

        accounts = [Dc09Account(a.account, a.device_id, a.key) for a in self.accounts]
        accounts_by_id(accounts)  # refuses an account configured twice
        return accounts

    def code_tables(self) -> tuple[dict[str, Meaning], dict[int, Meaning]]:
        """The (SIA, Contact ID) tables with this site's corrections."""
        from devices.dc09 import parse_codes

        return parse_codes(self.codes)


class SerialLineSettings(BaseModel):
    """One serial line with a receiver and its devices behind it (docs/serial.md)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    url: str
    baudrate: int = Field(default=9600, gt=0)
    framing: str = "8N1"
    rtscts: bool = False
    max_concurrent: int = Field(default=16, ge=1)

    @field_validator("framing")
    @classmethod
    def _framing(cls, value: str) -> str:
        from gateway.serial import parse_framing

        parse_framing(value)
        return value


class ProvlarmSettings(BaseModel):
    """Daily end-to-end test alarms of safety devices (gateway/provlarm.py)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    at: str = Field(default="03:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    # Devices are spread over this window after ``at`` so the fleet does not fire at once.
    spread_s: float = Field(default=2 * 3600.0, ge=1)
    # The device must get its test alarm stored within this (it resends with back-off) ...
    store_timeout_s: float = Field(default=120.0, gt=0)
    # ... and a staff client must confirm it within this after it was stored.
    delivery_timeout_s: float = Field(default=60.0, gt=0)


# The telemetry lane's broker account: "<alarm lane account>-telemetry" unless configured.
TELEMETRY_SUFFIX = "-telemetry"


def telemetry_account(username: str) -> str:
    """The telemetry lane's broker account of the gateway whose alarm lane is ``username``."""
    return f"{username}{TELEMETRY_SUFFIX}"


class OtherGateway(BaseModel):
    """Another gateway of the cluster, whose lane accounts go into the broker files too.

    With ``use_username_as_clientid`` every gateway needs accounts of its own (gateways
    sharing one account would take each other's sessions over). The gateway that writes the
    files knows only its own password, so the others come as ``mosquitto_passwd`` hashes.
    """

    model_config = ConfigDict(extra="forbid")

    username: str
    # The "$7$..." part of a mosquitto_passwd line for the gateway's [mqtt] password.
    password_hash: str = Field(pattern=r"^\$7\$[0-9]+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$")
    telemetry_username: str | None = None


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


class Settings(BaseSettings):
    """Everything a gateway process needs. See docs/configuration.md."""

    # hide_input_in_errors: a refused setting's error must not print the secrets beside it
    # (secret_key, passwords, tokens) into a log.
    model_config = SettingsConfigDict(
        env_prefix="TRYGG_", env_nested_delimiter="__", extra="forbid",
        hide_input_in_errors=True,
    )

    # Set by ``load``: the TOML file between the defaults and the environment.
    _toml_path: ClassVar[Path | None] = None

    gateway_id: str = "gw1"
    data_dir: Path = Path("trygg-data")
    # Demo mode (weaker checks: default secret, short token lifetimes, plain-http push test
    # endpoints) is set in code only, by `trygg demo` and the tests: a settings file or the
    # environment that names it is refused (``_CodeOnly``), so no production config can
    # switch the checks off.
    demo: bool = False
    secret_key: str = DEFAULT_SECRET
    # Deprecated: the old name of ``security.access_ttl_s``, honoured when only it is set
    # (with a warning); otherwise set to ``security.access_ttl_s``. docs/configuration.md.
    token_ttl_s: int = Field(default=15 * 60, ge=MIN_ACCESS_TTL_DEMO_S)
    mqtt: MqttSettings = MqttSettings()
    http: HttpSettings = HttpSettings()
    influx: InfluxSettings | None = None
    # The journal on PostgreSQL (docs/postgres.md) instead of SQLite in data_dir.
    journal_dsn: str | None = None
    # Set when several gateways share journal_dsn and the broker (scale-out).
    cluster: ClusterSettings | None = None
    escalation: EscalationSettings = EscalationSettings()
    provlarm: ProvlarmSettings = ProvlarmSettings()
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    push: PushSettings = PushSettings()
    broker_auth: BrokerAuthSettings | None = None
    retention: RetentionSettings = RetentionSettings()
    # An alarm no staff client has confirmed within this raises a technical alarm.
    delivery_timeout_s: float = Field(default=15.0, gt=0)
    scaip: ScaipSettings | None = None
    dc09: Dc09Settings | None = None
    serial: list[SerialLineSettings] = []
    # The SMS fallback through Kannel (docs/sms.md); None: no SMS.
    sms: SmsSettings | None = None
    # Log lines as plain text or one JSON object per line (gateway/logformat.py).
    log_format: Literal["text", "json"] = "text"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Precedence: explicit arguments, environment, TOML file, defaults."""
        return (init_settings, _CodeOnly(env_settings, "the environment (TRYGG_DEMO)"),
                _CodeOnly(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_path),
                          "the settings file"))

    @model_validator(mode="after")
    def _cluster_needs_a_shared_journal(self) -> Settings:
        if self.cluster is not None and self.journal_dsn is None:
            raise ValueError("[cluster] needs journal_dsn: gateways share the PostgreSQL journal")
        return self

    @model_validator(mode="after")
    def _sms_rules_need_sms(self) -> Settings:
        if self.sms is None:
            if self.escalation.sms:
                raise ValueError("[[escalation.sms]] rules need [sms] (the Kannel connection)")
        elif not self.escalation.sms:
            self.escalation = self.escalation.model_copy(update={"sms": [DEFAULT_SMS_STEP]})
        return self

    @model_validator(mode="after")
    def _access_token_lifetime(self) -> Settings:
        explicit = "security" in self.model_fields_set and (
            "access_ttl_s" in self.security.model_fields_set
        )
        legacy = "token_ttl_s" in self.model_fields_set
        if legacy and self.token_ttl_s != self.security.access_ttl_s:
            if explicit:
                raise ValueError(
                    "token_ttl_s (deprecated) and security.access_ttl_s disagree: "
                    "remove token_ttl_s"
                )
            _LOGGER.warning(
                "token_ttl_s is deprecated: set [security] access_ttl_s instead. Using "
                "token_ttl_s = %d s as the access-token lifetime (default %d s; the staff app "
                "refreshes its token, so long-lived access tokens are no longer needed)",
                self.token_ttl_s, SecuritySettings.model_fields["access_ttl_s"].default,
            )
            self.security = self.security.model_copy(update={"access_ttl_s": self.token_ttl_s})
        if not self.demo and self.security.access_ttl_s < MIN_ACCESS_TTL_S:
            raise ValueError(
                f"security.access_ttl_s must be at least {MIN_ACCESS_TTL_S} s "
                "(shorter lifetimes are for demo mode and tests)"
            )
        # gateway.tokens issues with the same lifetime as the API's login.
        self.token_ttl_s = self.security.access_ttl_s
        return self

    @model_validator(mode="after")
    def _no_default_secret_outside_demo(self) -> Settings:
        if not self.demo and self.secret_key == DEFAULT_SECRET:
            raise ValueError(
                "secret_key is the default; set TRYGG_SECRET_KEY or secret_key in the "
                "config file (only `trygg demo` may run with a generated secret)"
            )
        problem = None if self.demo else secret_problem(self.secret_key)
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def client_id(self) -> str:
        """The MQTT client id: stable, so the broker keeps the gateway's session."""
        return self.mqtt.client_id or f"trygg-gateway-{self.gateway_id}"


# Settings only code may set (``load(None, demo=True)`` in `trygg demo` and the tests).
CODE_ONLY = ("demo",)


class _CodeOnly(PydanticBaseSettingsSource):
    """A settings source that refuses the code-only settings instead of passing them on."""

    def __init__(self, inner: PydanticBaseSettingsSource, where: str) -> None:
        super().__init__(inner.settings_cls)
        self._inner = inner
        self._where = where

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._inner.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        data = self._inner()
        named = [key for key in CODE_ONLY if key in data]
        if named:
            raise ValueError(
                f"{', '.join(named)} cannot be set in {self._where}: demo mode is only "
                "`trygg demo`; remove it"
            )
        return data


def load(config: Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``config`` (TOML), the environment and ``overrides``.

    A ``config`` that does not exist raises ``FileNotFoundError``: pydantic-settings' TOML
    source would silently read nothing, and a gateway started on defaults by a typo in the
    path is worse than one that does not start.
    """
    if config is not None and not config.is_file():
        raise FileNotFoundError(errno.ENOENT, "settings file not found", str(config))
    Settings._toml_path = config
    try:
        return Settings(**overrides)
    finally:
        Settings._toml_path = None
