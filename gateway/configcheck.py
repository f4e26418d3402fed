"""``trygg config check``: a settings file and the environment judged before a start.

Three kinds of problem, one line each (``where: what``):

- what the gateway would refuse at start-up: unknown keys, wrong types, values out of range,
  contradicting settings (pydantic's own errors, with the key path);
- ``TRYGG_*`` variables that name no setting (pydantic-settings ignores them, so a typo in
  the environment file would otherwise go unnoticed);
- settings that start but are unsafe in production: a default or weak ``secret_key``, a broker
  or database reached without TLS across the network, a staff API exposed without TLS in
  front, a data directory that holds the demo's organisation and logins.

The effective settings (defaults, file and environment merged) are printed with every
secret masked, so the output can be pasted into a ticket.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sqlite3
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from gateway.config import DEFAULT_SECRET, Settings, load
from gateway.security import MIN_ACCESS_TTL_S
from gateway.strength import secret_problem

ENV_PREFIX = "TRYGG_"
MASK = "********"
# Keys whose values are secrets wherever they appear in the settings tree.
_SECRET_KEYS = re.compile(r"(^|_)(password|secret|token|key|hash)$")
# Credentials inside connection strings: libpq's ``password=...`` and ``scheme://user:pw@``.
_DSN_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^/:@\s]*:)([^@/\s]+)(@)")
# The demo's seeded staff accounts (gateway.demo.STAFF, ids "staff-<username>").
_DEMO_MARKERS = ("demo.json", "demo-secret.key")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the settings: where (a key path, a variable) and what."""

    where: str
    message: str

    def line(self) -> str:
        """The one line printed for it."""
        return f"{self.where}: {self.message}"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict: the effective settings (None when they cannot be built) and problems."""

    settings: Settings | None
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems


def check(config: Path) -> CheckResult:
    """Judge ``config`` with this process's environment, as ``trygg run`` would read both."""
    problems: list[Problem] = []
    try:
        with config.open("rb") as handle:
            tomllib.load(handle)
    except OSError as exc:
        return CheckResult(None, (Problem(str(config), f"cannot be read ({exc.strerror})"),))
    except tomllib.TOMLDecodeError as exc:
        return CheckResult(None, (Problem(str(config), f"is not valid TOML ({exc})"),))
    problems.extend(_unknown_variables(os.environ))
    refused: list[Problem] = []
    settings: Settings | None = None
    try:
        settings = load(config)
    except ValidationError as exc:
        refused.extend(_validation_problems(exc))
    except (SettingsError, ValueError) as exc:
        refused.append(Problem("settings", str(exc)))
    if settings is None:
        # Demo mode relaxes only the production checks (secret, token lifetime). When the
        # settings load with it, those checks were all that failed, and production_problems
        # below names each of them (not only the first, as the validators would).
        try:
            settings = load(config, demo=True).model_copy(update={"demo": False})
        except (ValidationError, SettingsError, ValueError):
            problems.extend(refused)
    if settings is not None:
        problems.extend(production_problems(settings))
    return CheckResult(settings, tuple(problems))


def _validation_problems(exc: ValidationError) -> Iterator[Problem]:
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        if error["type"] == "extra_forbidden":
            yield Problem(where, "unknown key")
            continue
        message = str(error["msg"]).removeprefix("Value error, ")
        yield Problem(where, message)


def _unknown_variables(env: Mapping[str, str]) -> Iterator[Problem]:
    fields = Settings.model_fields
    for name in sorted(env):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        top = name[len(ENV_PREFIX):].split("__", 1)[0].lower()
        if top not in fields:
            yield Problem(name, "names no setting (unknown key in the environment)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _dsn_host(dsn: str) -> str | None:
    match = re.search(r"host\s*=\s*(\S+)", dsn) or re.search(r"://(?:[^@/]*@)?([^/:?]+)", dsn)
    return None if match is None else match.group(1)


def production_problems(settings: Settings) -> Iterator[Problem]:
    """What would start but is unsafe for a production gateway (not demo mode)."""
    if settings.secret_key == DEFAULT_SECRET:
        yield Problem("secret_key", "is the default; set TRYGG_SECRET_KEY or secret_key")
    else:
        problem = secret_problem(settings.secret_key)
        if problem is not None:
            yield Problem("secret_key", problem.removeprefix("secret_key "))
    if settings.security.access_ttl_s < MIN_ACCESS_TTL_S:
        yield Problem("security.access_ttl_s",
                      f"must be at least {MIN_ACCESS_TTL_S} s outside demo mode")
    mqtt = settings.mqtt
    if not mqtt.tls and not _loopback(mqtt.host):
        yield Problem("mqtt.tls", f"is off but the broker {mqtt.host} is another host: "
                      "passwords and alarms would cross the network in clear text")
    if not _loopback(settings.http.host) and not settings.security.hsts:
        yield Problem("http.host", f"{settings.http.host} is reachable from other hosts but "
                      "security.hsts is off: terminate TLS in a reverse proxy in front and set "
                      "[security] hsts = true (docs/deployment.md)")
    if settings.journal_dsn is not None:
        host = _dsn_host(settings.journal_dsn)
        if (host is not None and not host.startswith("/") and not _loopback(host)
                and not re.search(r"sslmode\s*=\s*verify-(ca|full)", settings.journal_dsn)):
            yield Problem("journal_dsn", f"the database {host} is another host: set "
                          "sslmode=verify-full (and sslrootcert) so the journal is not "
                          "carried in clear text")
    influx = settings.influx
    if influx is not None and influx.url.startswith("http://"):
        host = re.sub(r"^http://([^/:]+).*$", r"\1", influx.url)
        if not _loopback(host):
            yield Problem("influx.url", "plain http to another host: the token would cross "
                          "the network in clear text; use https")
    yield from _demo_data(settings.data_dir)


def _demo_data(data_dir: Path) -> Iterator[Problem]:
    markers = [name for name in _DEMO_MARKERS if (data_dir / name).exists()]
    if markers:
        yield Problem("data_dir", f"{data_dir} holds the demo's organisation "
                      f"({', '.join(markers)}: its logins and passwords are written in "
                      "clear text); use a data directory of its own")
        return
    if _demo_accounts(data_dir / "org.sqlite3"):
        yield Problem("data_dir", f"{data_dir}/org.sqlite3 has the demo's staff accounts "
                      "(admin, tekniker, ...); remove them or use a fresh organisation")


def _demo_accounts(path: Path) -> bool:
    if not path.is_file():
        return False
    from gateway.demo import STAFF

    # Read-only: a check must not create or change anything in the data directory.
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return False
    try:
        ids = {row[0] for row in conn.execute("SELECT id FROM staff")}
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    demo_ids = {f"staff-{username}" for username, *_ in STAFF}
    return demo_ids <= ids


def masked(settings: Settings) -> dict[str, Any]:
    """The settings as JSON-compatible data with every secret replaced by ``MASK``."""
    data = settings.model_dump(mode="json")
    result = _mask(data, "")
    assert isinstance(result, dict)
    return result


def _mask(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        return {k: _mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, key) for v in value]
    if isinstance(value, str):
        if value and _SECRET_KEYS.search(key.lower()):
            return MASK
        return mask_credentials(value)
    return value


def mask_credentials(text: str) -> str:
    """``text`` with passwords in connection strings and URLs masked."""
    text = _DSN_PASSWORD.sub(lambda m: m.group(1) + MASK, text)
    return _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(3), text)


def flat_lines(data: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """``key.path = value`` lines (values as TOML-like JSON), sections after plain keys."""
    import json

    plain = [(k, v) for k, v in data.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in data.items() if isinstance(v, dict)]
    for key, value in plain:
        yield f"{prefix}{key} = {json.dumps(value, ensure_ascii=False)}"
    for key, value in tables:
        yield from flat_lines(value, f"{prefix}{key}.")


def main(config: Path) -> int:
    """``trygg config check --config FILE``: settings on stdout, problems on stderr."""
    import sys

    result = check(config)
    if result.settings is not None:
        print(f"# effective settings ({config} + TRYGG_* environment), secrets masked")
        for line in flat_lines(masked(result.settings)):
            print(line)
    for problem in result.problems:
        print(problem.line(), file=sys.stderr)
    if result.ok:
        print(f"# {config}: no problems found")
        return 0
    print(f"{len(result.problems)} problem(s) in {config}", file=sys.stderr)
    return 1
