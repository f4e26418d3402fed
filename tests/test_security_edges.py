"""Issue 17's low and high edges of the web side: demo mode only in code, token and secret
rules, private data files, password strength, and what the audit log keeps.

Each test names the guarantee of docs/security.md ("Holding the edges") that it proves.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from pydantic import ValidationError

from gateway.auth import TokenError, TokenIssuer
from gateway.config import load
from gateway.files import tighten
from gateway.runtime import Gateway
from gateway.strength import password_problem, secret_problem
from tests.conftest import PASSWORD, TEST_SECRET, GatewayFactory
from tests.helpers import device

# -- 2. demo mode is reachable only through `trygg demo` ----------------------------------------


def test_demo_in_a_settings_file_is_refused(tmp_path: Path) -> None:
    """``demo = true`` in a `trygg run` config cannot switch the default-secret check off."""
    config = tmp_path / "trygg.toml"
    config.write_text('demo = true\nsecret_key = "changethis"\n')
    with pytest.raises(ValueError, match="demo cannot be set in the settings file"):
        load(config)
    # Even "demo = false": the key is not part of the file's surface at all.
    config.write_text(f'demo = false\nsecret_key = "{TEST_SECRET}"\n')
    with pytest.raises(ValueError, match="demo cannot be set"):
        load(config)


@pytest.mark.parametrize("value", ["true", "1", "false"])
def test_demo_in_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("TRYGG_DEMO", value)
    monkeypatch.setenv("TRYGG_SECRET_KEY", "changethis")
    with pytest.raises(ValueError, match=r"environment \(TRYGG_DEMO\)"):
        load(None)


def test_default_secret_refused_outside_code_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without demo (only code can set it) the default secret is refused; the demo's code
    path still works."""
    with pytest.raises(ValidationError, match="secret_key is the default"):
        load(None)
    assert load(None, demo=True).demo


def test_refused_secret_is_not_echoed_in_the_error() -> None:
    secret = "q" * 40
    with pytest.raises(ValidationError) as refused:
        load(None, secret_key=secret)
    assert secret not in str(refused.value)


# -- 12. tokens need an expiry; secrets need entropy; data files are private -----------------------


def test_token_without_exp_is_refused() -> None:
    issuer = TokenIssuer(TEST_SECRET, 900)
    assert issuer.check(issuer.issue("anna")) == "anna"
    now = int(time.time())
    forever = jwt.encode({"sub": "anna", "iat": now, "typ": "access"}, TEST_SECRET,
                         algorithm="HS256")
    with pytest.raises(TokenError, match="exp"):
        issuer.check(forever)
    expired = jwt.encode({"sub": "anna", "iat": now - 100, "exp": now - 10, "typ": "access"},
                         TEST_SECRET, algorithm="HS256")
    with pytest.raises(TokenError, match="expired"):
        issuer.check(expired)


@pytest.mark.parametrize("secret", [
    "a" * 32,                                  # one letter, 32 times
    "test-secret-" + "x" * 40,                 # words and padding
    "abcdefghijklmnopqrstuvwxyz0123456789",    # a run
    "changethis" * 4,                          # a word, repeated
    "qwertyuiopasdfghjklzxcvbnm123456",        # keyboard rows (zxcvbn decides)
    "password-password-password-12345",        # (zxcvbn decides)
])
def test_low_entropy_secrets_are_refused(secret: str) -> None:
    assert secret_problem(secret) is not None
    with pytest.raises(ValidationError, match="secret_key is guessable"):
        load(None, secret_key=secret)
    assert load(None, demo=True, secret_key=secret).demo  # the demo and tests may


def test_random_secrets_are_accepted() -> None:
    import secrets

    for _ in range(200):  # hex keys land between the cheap verdicts: zxcvbn decides
        for secret in (secrets.token_urlsafe(32), secrets.token_hex(16),
                       secrets.token_urlsafe(48), TEST_SECRET):
            assert secret_problem(secret) is None, secret
    assert secret_problem("x" * 31) == "secret_key must be at least 32 characters"


@pytest.fixture
def shell_umask() -> Iterator[None]:
    """Run with a shell's default umask (022), as a hand-started gateway would."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def _loose(root: Path) -> list[str]:
    """Entries below ``root`` (itself included) that group or others may use."""
    entries = [root, *root.rglob("*")]
    return [f"{p.relative_to(root)} {oct(stat.S_IMODE(p.lstat().st_mode))}"
            for p in entries if not p.is_symlink() and p.lstat().st_mode & 0o077]


@pytest.mark.network
async def test_data_files_are_private_whatever_the_umask(
    shell_umask: None, make_gateway: GatewayFactory, mosquitto: tuple[str, int], prefix: str,
    tmp_path: Path,
) -> None:
    """SQLite files (with -wal/-shm), keys, journal, audit, broker files: 0600; dirs 0700.
    A file left 0644 by an older version is tightened at start."""
    data_dir = tmp_path / "gw"
    data_dir.mkdir()
    old = data_dir / "left-by-an-older-version.sqlite3"
    old.write_text("")
    old.chmod(0o644)
    async with make_gateway(mosquitto, data_dir=data_dir,
                            broker_auth={"enabled": True}) as gw:
        async with device(mosquitto, prefix, "dev-a") as dev:
            await dev.alarm("files-1")
            assert (await dev.wait_ack("files-1"))["status"] == "stored"
        assert gw.registry.sync_broker()
        created = {p.name for p in data_dir.rglob("*")}
        for name in ("journal.sqlite3", "audit.sqlite3", "org.sqlite3", "vapid-private.pem",
                     "passwd", "acl", "telemetry.sqlite3"):
            assert name in created, (name, sorted(created))
        assert _loose(data_dir) == []
    assert _loose(data_dir) == []


def test_tighten_removes_bits_and_never_follows_links(tmp_path: Path) -> None:
    # Modes set explicitly: a gateway started earlier in this process set umask 077.
    (tmp_path / "d").mkdir()
    (tmp_path / "d").chmod(0o755)
    (tmp_path / "d" / "f").write_text("x")
    (tmp_path / "d" / "f").chmod(0o664)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_text("not ours")
    outside.chmod(0o644)
    try:
        (tmp_path / "d" / "link").symlink_to(outside)
        (tmp_path / "d" / "exec").write_text("")
        (tmp_path / "d" / "exec").chmod(0o750)
        assert tighten(tmp_path / "d") == 3
        assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "d" / "f").stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "d" / "exec").stat().st_mode) == 0o700
        assert stat.S_IMODE(outside.stat().st_mode) == 0o644  # a link's target is not ours
        assert tighten(tmp_path / "d") == 0
    finally:
        outside.unlink()


# -- 9. passwords: zxcvbn and a deny list ---------------------------------------------------------


@pytest.mark.parametrize("password", [
    "password1234", "aaaaaaaaaaaa", "123456789012", "Sommar2024!!", "H3mtj@nst2025!",
    "L0senord!2024", "sommarsommar12", "qwertyuiop12", "Anna Andersson1",
])
def test_weak_passwords_are_refused(password: str) -> None:
    problem = password_problem(password, ["anna", "Anna Andersson"])
    assert problem is not None and problem.startswith("password:")


@pytest.mark.parametrize("password", [
    "correct horse battery", "kaffe-Tallrik-Moln-9", "Tr0ubador&3xyz-lampa",
])
def test_strong_passwords_are_accepted(password: str) -> None:
    assert password_problem(password, ["anna", "Anna Andersson"]) is None


def test_short_password_reason() -> None:
    assert password_problem("kort-Ord-9") == "password: at least 12 characters"


def test_org_file_refuses_a_weak_password_naming_the_row(tmp_path: Path) -> None:
    from gateway.orgfile import OrgFileError, parse

    path = tmp_path / "org.toml"
    path.write_text(
        '[[teams]]\nid = "t"\nname = "T"\n'
        '[[staff]]\nid = "s1"\nusername = "sven"\nname = "Sven"\nrole = "staff"\n'
        'teams = ["t"]\npassword = "correct horse battery"\n'
        '[[staff]]\nid = "s2"\nusername = "stina"\nname = "Stina"\nrole = "staff"\n'
        'teams = ["t"]\npassword = "Sommar2024!!"\n'
        '[[staff]]\nid = "s3"\nusername = "sixten"\nname = "Sixten"\nrole = "staff"\n'
        'teams = ["t"]\npassword = "short"\n')
    with pytest.raises(OrgFileError) as refused:
        parse(path)
    reason = str(refused.value)
    assert "staff s2: password: too easy to guess" in reason
    assert "staff s3: password: at least 12 characters" in reason
    assert "s1" not in reason
    assert "Sommar2024" not in reason  # the reason never repeats the password


# -- 9 and 11 over the admin API and the login ---------------------------------------------------


async def _admin(gw: Gateway, client: httpx.AsyncClient) -> dict[str, str]:
    from gateway.auth import hash_password
    from gateway.org import StaffMember

    gw.org.put_staff(StaffMember("ada", "ada", "Ada", "admin", (), hash_password(PASSWORD)))
    token = (await client.post("/api/v1/auth/token",
                               data={"username": "ada", "password": PASSWORD})).json()
    return {"Authorization": f"Bearer {token['access_token']}"}


def _audit(data_dir: Path) -> list[tuple[str, str, str, dict[str, Any]]]:
    from gateway.audit import AuditLog

    with AuditLog.open(data_dir / "audit.sqlite3") as log:
        return [(r.kind, r.actor, r.subject, dict(r.detail)) for r in log.records()]


@pytest.mark.network
async def test_admin_api_password_strength_and_change_audit(
    make_gateway: GatewayFactory, mosquitto: tuple[str, int], tmp_path: Path,
) -> None:
    data_dir = tmp_path / "gw"
    async with make_gateway(mosquitto, data_dir=data_dir) as gw, httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{gw.http_port}") as client:
        admin = await _admin(gw, client)
        body = {"id": "cleo", "username": "cleo", "name": "Cleo", "role": "staff",
                "team_ids": ["team-b"]}
        for weak in ("password1234", "aaaaaaaaaaaa", "Sommar2024!!", "cleo-cleo-cleo"):
            refused = await client.put("/api/v1/admin/staff/cleo", headers=admin,
                                       json={**body, "password": weak})
            assert refused.status_code == 422, (weak, refused.text)
            assert refused.json()["detail"].startswith("password: "), refused.text
        # A promotion to admin, a team change and a new password: all in the record.
        promoted = await client.put(
            "/api/v1/admin/staff/cleo", headers=admin,
            json={**body, "role": "admin", "team_ids": ["team-a"], "on_duty": False,
                  "password": "kaffe-Tallrik-Moln-9"})
        assert promoted.status_code == 200, promoted.text
        renamed = await client.put("/api/v1/admin/staff/cleo", headers=admin,
                                   json={**body, "role": "admin", "team_ids": ["team-a"],
                                         "on_duty": False, "name": "Cleo Ny"})
        assert renamed.status_code == 200, renamed.text
        created = await client.put(
            "/api/v1/admin/staff/dan", headers=admin,
            json={"id": "dan", "username": "dan", "name": "Dan", "role": "lead",
                  "team_ids": ["team-a"], "password": "Tr0ubador&3xyz-lampa"})
        assert created.status_code == 200, created.text
    changes = [d for k, _, s, d in _audit(data_dir)
               if k == "config_change" and d.get("what") == "staff"]
    assert changes[0]["changes"] == {
        "role": {"from": "staff", "to": "admin"},
        "team_ids": {"added": ["team-a"], "removed": ["team-b"]},
        "on_duty": {"from": True, "to": False}, "password_set": True}
    assert changes[1]["changes"] == {"name_changed": True}
    assert changes[2]["changes"] == {"created": True, "role": "lead", "team_ids": ["team-a"],
                                     "on_duty": True, "password_set": True}
    raw = (data_dir / "audit.sqlite3").read_bytes()
    for secret in (b"kaffe-Tallrik", b"Tr0ubador", b"Cleo Ny"):
        assert secret not in raw


@pytest.mark.network
async def test_failed_login_never_stores_an_unknown_typed_username(
    make_gateway: GatewayFactory, mosquitto: tuple[str, int], tmp_path: Path,
) -> None:
    """A password typed into the username field is not kept: known usernames are audited
    as the staff id, unknown ones as a keyed hash, also in the lockout's record."""
    data_dir = tmp_path / "gw"
    typed = "Lingon-Skog-Regn-42"  # somebody's password, typed one field too early
    async with make_gateway(mosquitto, data_dir=data_dir) as gw, httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{gw.http_port}") as client:
        for _ in range(5):
            r = await client.post("/api/v1/auth/token",
                                  data={"username": typed, "password": "x"})
            assert r.status_code == 401
        locked = await client.post("/api/v1/auth/token",
                                   data={"username": typed, "password": "x"})
        assert locked.status_code == 429
        r = await client.post("/api/v1/auth/token", data={"username": "bo", "password": "x"})
        assert r.status_code == 401
    records = _audit(data_dir)
    failed = [(a, d) for k, a, _, d in records if k == "login_failed"]
    assert {a for a, _ in failed[:5]} == {failed[0][0]}  # the same name, the same hash
    assert failed[0][0].startswith("unknown:") and failed[0][1]["known_user"] is False
    assert failed[-1] == ("bo", {"address": "127.0.0.1", "known_user": True})
    lock = next((a, s) for k, a, s, _ in records if k == "login_locked")
    assert lock == (failed[0][0], f"user:{failed[0][0]}")
    assert any(k == "login_refused" and a == failed[0][0] for k, a, _, _ in records)
    data = (data_dir / "audit.sqlite3").read_bytes()
    assert typed.encode() not in data
    assert not list(data_dir.glob("audit.sqlite3-wal")) or typed.encode() not in (
        data_dir / "audit.sqlite3-wal").read_bytes()
