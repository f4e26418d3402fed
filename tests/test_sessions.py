"""Access-token lifetime settings, logout, and the socket's answer to a refused token.

Refresh rotation and reuse detection are tested in tests/test_authz_matrix.py; the staff
app's use of them in a real browser in tests/test_browser.py.
"""

from __future__ import annotations

import logging
import time

import httpx
import pytest
import websockets
from pydantic import ValidationError

from gateway.auth import TokenIssuer
from gateway.config import load
from gateway.security import SecuritySettings
from tests.conftest import PASSWORD, TEST_SECRET, GatewayFactory

SECRET = TEST_SECRET


def test_access_tokens_live_15_minutes_by_default() -> None:
    settings = load(None, secret_key=SECRET)
    assert settings.security.access_ttl_s == 15 * 60 == SecuritySettings().access_ttl_s
    # gateway.tokens (the runtime's issuer) uses the same lifetime.
    assert settings.token_ttl_s == settings.security.access_ttl_s


def test_token_ttl_s_is_a_deprecated_alias(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        settings = load(None, secret_key=SECRET, token_ttl_s=3600)
    assert settings.security.access_ttl_s == 3600
    assert "token_ttl_s is deprecated" in caplog.text
    # Both set: they must agree (no guessing which one was meant).
    same = load(None, secret_key=SECRET, token_ttl_s=600, security={"access_ttl_s": 600})
    assert same.security.access_ttl_s == 600
    with pytest.raises(ValidationError, match="disagree"):
        load(None, secret_key=SECRET, token_ttl_s=600, security={"access_ttl_s": 300})


def test_access_tokens_under_a_minute_only_in_demo_mode() -> None:
    assert load(None, demo=True, security={"access_ttl_s": 10}).security.access_ttl_s == 10
    with pytest.raises(ValidationError, match="at least 60 s"):
        load(None, secret_key=SECRET, security={"access_ttl_s": 30})
    with pytest.raises(ValidationError, match="at least 60 s"):
        load(None, secret_key=SECRET, token_ttl_s=30)
    with pytest.raises(ValidationError):
        load(None, demo=True, security={"access_ttl_s": 5})


@pytest.mark.network
async def test_login_refresh_and_logout(make_gateway: GatewayFactory,
                                        mosquitto: tuple[str, int]) -> None:
    async with make_gateway(mosquitto) as gw:
        base = f"http://127.0.0.1:{gw.http_port}"
        async with httpx.AsyncClient(base_url=base) as client:
            login = await client.post("/api/v1/auth/token",
                                      data={"username": "anna", "password": PASSWORD})
            body = login.json()
            assert body["expires_in"] == 15 * 60
            assert body["refresh_token"]
            rotated = await client.post("/api/v1/auth/refresh",
                                        json={"refresh_token": body["refresh_token"]})
            assert rotated.status_code == 200
            fresh = rotated.json()
            assert fresh["expires_in"] == 15 * 60
            me = await client.get("/api/v1/me",
                                  headers={"Authorization": f"Bearer {fresh['access_token']}"})
            assert me.json()["id"] == "anna"

            # Logout revokes the family, with any of its tokens (here the spent first one).
            out = await client.post("/api/v1/auth/logout",
                                    json={"refresh_token": body["refresh_token"]})
            assert out.status_code == 204
            refused = await client.post("/api/v1/auth/refresh",
                                        json={"refresh_token": fresh["refresh_token"]})
            assert refused.status_code == 401


@pytest.mark.network
async def test_socket_refuses_an_expired_token_with_4401(make_gateway: GatewayFactory,
                                                         mosquitto: tuple[str, int]) -> None:
    """Close code 4401 reaches the client (a close before the handshake would be a 403)."""
    async with make_gateway(mosquitto) as gw:
        ws = f"ws://127.0.0.1:{gw.http_port}/api/v1/ws?token="
        expired = TokenIssuer(gw.settings.secret_key, 60).issue("anna", now=time.time() - 120)
        for token in (expired, "not-a-token", TokenIssuer(gw.settings.secret_key, 60).issue("nobody")):
            async with websockets.connect(ws + token) as socket:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await socket.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4401
