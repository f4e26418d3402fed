"""Web Push: VAPID keys, the subscription API, and the notifier against a fake push service.

The fake push service is a local aiohttp server. It checks what a real one checks (the
VAPID JWT, its signature and audience, TTL and urgency) and decrypts the payload with the
subscriber's private key, so the tests prove the whole RFC 8291/8292 path, not a mock.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import http_ece  # type: ignore[import-untyped]
import httpx
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from gateway.org import OrgStore
from gateway.push import (
    SUBSCRIPTIONS_FILE,
    VAPID_KEY_FILE,
    PublicResolver,
    PushNotifier,
    Subscription,
    SubscriptionStore,
    VapidKeys,
    b64url_decode,
    b64url_encode,
    push_payload,
)
from gateway.pushguard import EndpointPolicy
from gateway.runtime import Gateway
from gateway.web.errors import install as install_errors
from gateway.web.push import create_push_router
from tests.conftest import seed_small, settings_for
from tests.helpers import device, running


@dataclass
class FakeBrowser:
    """A push subscriber's keys (what the browser keeps) and its subscription JSON."""

    endpoint: str
    private_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    auth: bytes = field(default_factory=lambda: os.urandom(16))

    def subscription(self) -> dict[str, Any]:
        public = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {"endpoint": self.endpoint, "expirationTime": None,
                "keys": {"p256dh": b64url_encode(public), "auth": b64url_encode(self.auth)}}

    def decrypt(self, body: bytes) -> dict[str, Any]:
        plain = http_ece.decrypt(body, private_key=self.private_key, auth_secret=self.auth,
                                 version="aes128gcm")
        decoded: dict[str, Any] = json.loads(plain)
        return decoded


@dataclass
class Received:
    name: str
    headers: dict[str, str]
    body: bytes


class FakePushService:
    """``/push/{name}``: answers with the status set for ``name`` (default 201)."""

    def __init__(self, vapid_public_key: str | None = None) -> None:
        self.vapid_public_key = vapid_public_key
        self.status: dict[str, int] = {}
        self.redirect: dict[str, str] = {}  # name -> Location of a 307
        self.received: list[Received] = []
        self.arrived = asyncio.Event()
        self.base = ""

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.received.append(Received(name, headers, await request.read()))
        self.arrived.set()
        if name in self.redirect:
            return web.Response(status=307, headers={"Location": self.redirect[name]})
        return web.Response(status=self.status.get(name, 201))

    def endpoint(self, name: str) -> str:
        return f"{self.base}/push/{name}"

    def check_vapid(self, received: Received) -> dict[str, Any]:
        """Verify the VAPID header as a push service would; returns the JWT claims."""
        scheme, _, params = received.headers["authorization"].partition(" ")
        assert scheme == "vapid"
        fields = dict(p.strip().split("=", 1) for p in params.split(","))
        assert fields["k"] == self.vapid_public_key
        public = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), b64url_decode(fields["k"])
        )
        claims: dict[str, Any] = jwt.decode(
            fields["t"], public, algorithms=["ES256"], audience=self.base
        )
        assert claims["exp"] > time.time()
        assert claims["sub"].startswith("mailto:")
        return claims

    async def wait_for(self, count: int, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def fake_push_service(vapid_public_key: str | None = None) -> AsyncIterator[FakePushService]:
    """The fake push service on a free loopback port."""
    service = FakePushService(vapid_public_key)
    app = web.Application()
    app.router.add_post("/push/{name}", service.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    service.base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    await web.SockSite(runner, sock).start()
    try:
        yield service
    finally:
        await runner.cleanup()
        sock.close()


# The suite's fake push service listens on loopback over plain http; this test-only policy
# (set in code) lets exactly that through. Production policies never do.
LOOPBACK = EndpointPolicy.loopback_for_tests()


@contextlib.asynccontextmanager
async def gateway_with_push(
    broker: tuple[str, int], data_dir: Path, prefix: str, **overrides: Any
) -> AsyncIterator[tuple[Gateway, PushNotifier]]:
    """A seeded gateway with its own Web Push notifier. ``overrides`` go to the settings."""
    org = OrgStore(data_dir / "org.sqlite3")
    if org.is_empty():
        seed_small(org)
    try:
        async with Gateway(settings_for(data_dir, broker, prefix, **overrides), org=org,
                           overrides={"push_endpoints": LOOPBACK}) as gw:
            await asyncio.wait_for(gw.wait_connected(), 10)
            yield gw, gw.push
    finally:
        org.close()


def alarm_body(alarm_id: str = "a1", **changes: Any) -> dict[str, Any]:
    """An alarm as ``views.alarm_json`` shapes it (the fields the notifier reads)."""
    body: dict[str, Any] = {
        "id": alarm_id, "device_id": "dev-a", "ref": "r1", "type": "fall", "priority": 2,
        "state": "open", "stage": "routed", "test": False, "owner": None,
        "raised_at": "2025-01-01T03:00:00.000+00:00",
        "recipient": {"name": "Astrid A", "address": "Storgatan 1"},
    }
    body.update(changes)
    return body


# -- VAPID keys and the store ----------------------------------------------------------------


def test_vapid_key_is_generated_once_and_private(tmp_path: Path) -> None:
    """The key pair is created on first use, kept 0600, and the same on the next start."""
    path = tmp_path / VAPID_KEY_FILE
    first = VapidKeys.load_or_create(path)
    second = VapidKeys.load_or_create(path)
    assert first.public_key == second.public_key
    raw = b64url_decode(first.public_key)
    assert len(raw) == 65 and raw[0] == 4
    assert path.stat().st_mode & 0o777 == 0o600


def test_store_never_moves_another_members_endpoint(tmp_path: Path) -> None:
    """Whoever knows anna's endpoint cannot take her pushes: the endpoint stays hers."""
    store = SubscriptionStore(tmp_path / SUBSCRIPTIONS_FILE)
    assert store.add(Subscription("https://push.example/1", "anna", "k", "a"))
    assert not store.add(Subscription("https://push.example/1", "bo", "k2", "a2"))
    assert store.add(Subscription("https://push.example/1", "anna", "k3", "a3"))  # renewed
    assert store.add(Subscription("https://push.example/2", "bo", "k", "a"))
    assert [(s.endpoint, s.p256dh) for s in store.for_staff({"anna"})] == [
        ("https://push.example/1", "k3")]
    assert [s.staff_id for s in store.for_staff({"anna", "bo"})] == ["anna", "bo"]
    assert store.for_staff(set()) == []
    assert not store.remove("https://push.example/1", "bo")
    assert store.remove("https://push.example/1", "anna")
    assert store.count() == 1


# -- the router ------------------------------------------------------------------------------


# "DNS" for the router tests (the machine has none): push.example is a public address;
# its subdomains show every kind of inside address an attacker could aim at.
ADDRESSES = {
    "push.example": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
    "inside.push.example": ["10.1.2.3"],
    "metadata.push.example": ["169.254.169.254"],
    "loop.push.example": ["127.0.0.1"],
    "mapped.push.example": ["::ffff:192.168.1.1"],
    "v6local.push.example": ["fe80::1"],
    "cgnat.push.example": ["100.64.0.1"],
    "mixed.push.example": ["93.184.216.34", "172.16.0.1"],
}


async def _resolve(host: str) -> list[str]:
    if host not in ADDRESSES:
        raise OSError(f"no such host {host}")
    return ADDRESSES[host]


PUSH_EXAMPLE = EndpointPolicy(("push.example", "*.push.example"), resolve=_resolve)


@pytest.fixture
async def push_api(tmp_path: Path, prefix: str) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    """The push router on a gateway that is constructed but not started (no broker)."""
    data_dir = tmp_path / "gw"
    org = OrgStore(data_dir / "org.sqlite3")
    seed_small(org)
    gw = Gateway(settings_for(data_dir, ("127.0.0.1", 1), prefix), org=org)
    app = FastAPI()
    install_errors(app)
    app.include_router(create_push_router(gw, SubscriptionStore(data_dir / SUBSCRIPTIONS_FILE),
                                          endpoints=PUSH_EXAMPLE))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client, gw
    finally:
        org.close()


def _auth(gw: Gateway, staff_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.tokens.issue(staff_id)}"}


async def test_router_subscribe_list_unsubscribe(
    push_api: tuple[httpx.AsyncClient, Gateway],
) -> None:
    """Subscriptions are per staff member, authenticated, and persisted in the data dir."""
    client, gw = push_api
    key = (await client.get("/api/v1/push/vapid-public-key")).json()["public_key"]
    assert key == VapidKeys.load_or_create(gw.settings.data_dir / VAPID_KEY_FILE).public_key

    sub = FakeBrowser("https://push.example/send/abc").subscription()
    assert (await client.post("/api/v1/push/subscriptions", json=sub)).status_code == 401
    bad = {"Authorization": "Bearer nonsense"}
    assert (await client.post("/api/v1/push/subscriptions", json=sub, headers=bad)).status_code == 401

    created = await client.post("/api/v1/push/subscriptions", json=sub, headers=_auth(gw, "anna"))
    assert created.status_code == 201, created.text
    assert created.json() == {"endpoint": sub["endpoint"], "staff_id": "anna"}
    mine = await client.get("/api/v1/push/subscriptions", headers=_auth(gw, "anna"))
    assert mine.json() == [{"endpoint": sub["endpoint"]}]
    theirs = await client.get("/api/v1/push/subscriptions", headers=_auth(gw, "bo"))
    assert theirs.json() == []

    # Persisted: a fresh store on the same file sees it.
    store = SubscriptionStore(gw.settings.data_dir / SUBSCRIPTIONS_FILE)
    assert [s.staff_id for s in store.for_staff({"anna"})] == ["anna"]

    # bo cannot take anna's endpoint (it would move her alarms to him): refused, unchanged.
    taken = await client.post("/api/v1/push/subscriptions", json=sub, headers=_auth(gw, "bo"))
    assert taken.status_code == 409, taken.text
    assert [s.staff_id for s in store.for_staff({"anna", "bo"})] == ["anna"]

    # bo cannot remove anna's subscription; anna can, once.
    gone = {"endpoint": sub["endpoint"]}
    response = await client.request("DELETE", "/api/v1/push/subscriptions", json=gone,
                                    headers=_auth(gw, "bo"))
    assert response.status_code == 404
    response = await client.request("DELETE", "/api/v1/push/subscriptions", json=gone,
                                    headers=_auth(gw, "anna"))
    assert response.status_code == 204
    response = await client.request("DELETE", "/api/v1/push/subscriptions", json=gone,
                                    headers=_auth(gw, "anna"))
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("endpoint", "keys", "reason"),
    [
        ("http://push.example/x", None, "https"),
        ("ftp://push.example/x", None, "https"),
        ("http://10.0.0.1/x", None, "https"),
        # Server-side request forgery: IP literals, other hosts, inside addresses.
        ("https://127.0.0.1/x", None, "not an IP address"),
        ("https://[::1]/x", None, "not an IP address"),
        ("https://169.254.169.254/latest/meta-data/", None, "not an IP address"),
        ("https://intranet.kommun.example/admin", None, "not an allowed push service"),
        ("https://push.example.evil.example/x", None, "not an allowed push service"),
        ("https://evilpush.example/x", None, "not an allowed push service"),
        ("https://push.example:8443/x", None, "port 443"),
        ("https://user:pw@push.example/x", None, "user information"),
        ("https://inside.push.example/x", None, "non-public address (10.1.2.3)"),
        ("https://metadata.push.example/x", None, "169.254.169.254"),
        ("https://loop.push.example/x", None, "127.0.0.1"),
        ("https://mapped.push.example/x", None, "::ffff:c0a8:101"),
        ("https://v6local.push.example/x", None, "fe80::1"),
        ("https://cgnat.push.example/x", None, "100.64.0.1"),
        ("https://mixed.push.example/x", None, "172.16.0.1"),
        ("https://gone.push.example/x", None, "cannot be resolved"),
        ("https://push.example/x", {"p256dh": "AAAA", "auth": "AAAA"}, "P-256"),
        ("https://push.example/x", {"p256dh": "!!!", "auth": "AAAA"}, "base64url"),
    ],
)
async def test_router_refuses_bad_subscriptions(
    push_api: tuple[httpx.AsyncClient, Gateway],
    endpoint: str,
    keys: dict[str, str] | None,
    reason: str,
) -> None:
    """Only https endpoints on allowed push services with public addresses, and well-formed
    keys, are stored (issue 17, item 3)."""
    client, gw = push_api
    sub = FakeBrowser(endpoint).subscription()
    if keys is not None:
        sub["keys"] = keys
    response = await client.post("/api/v1/push/subscriptions", json=sub, headers=_auth(gw, "anna"))
    assert response.status_code == 422
    assert reason in response.json()["detail"]


async def test_router_loopback_http_only_with_the_test_policy(tmp_path: Path,
                                                               prefix: str) -> None:
    """Plain-http loopback endpoints (the suite's fake push service) need the test-only
    policy, set in code; demo mode and the default policy refuse them."""
    org = OrgStore(tmp_path / "org.sqlite3")
    seed_small(org)
    try:
        gw = Gateway(settings_for(tmp_path, ("127.0.0.1", 1), prefix), org=org)
        assert gw.settings.demo
        sub = FakeBrowser("http://127.0.0.1:9/push/x").subscription()
        for policy, expected in ((None, 422), (PUSH_EXAMPLE, 422), (LOOPBACK, 201)):
            app = FastAPI()
            install_errors(app)
            app.include_router(create_push_router(
                gw, SubscriptionStore(tmp_path / SUBSCRIPTIONS_FILE), endpoints=policy))
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://gw") as client:
                response = await client.post("/api/v1/push/subscriptions", json=sub,
                                             headers=_auth(gw, "anna"))
                assert response.status_code == expected, (policy, response.text)
    finally:
        org.close()


async def test_router_serves_the_service_worker_in_app_scope(
    push_api: tuple[httpx.AsyncClient, Gateway],
) -> None:
    """The worker must come from /app/ to control the app pages."""
    client, _ = push_api
    response = await client.get("/app/sw.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert "addEventListener(\"push\"" in response.text


# -- the notifier ------------------------------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> VapidKeys:
    return VapidKeys.load_or_create(tmp_path / VAPID_KEY_FILE)


@pytest.fixture
def store(tmp_path: Path) -> SubscriptionStore:
    return SubscriptionStore(tmp_path / SUBSCRIPTIONS_FILE)


def _subscribe(store: SubscriptionStore, staff_id: str, browser: FakeBrowser) -> None:
    sub = browser.subscription()
    store.add(Subscription(sub["endpoint"], staff_id, sub["keys"]["p256dh"], sub["keys"]["auth"]))


async def test_notifier_sends_encrypted_vapid_signed_pushes(
    store: SubscriptionStore, keys: VapidKeys
) -> None:
    """A new alarm reaches every subscription of its staff; expired ones are removed."""
    async with fake_push_service(keys.public_key) as service:
        anna_phone = FakeBrowser(service.endpoint("anna-phone"))
        anna_old = FakeBrowser(service.endpoint("anna-old"))
        bo_phone = FakeBrowser(service.endpoint("bo-phone"))
        cleo_phone = FakeBrowser(service.endpoint("cleo-phone"))
        for staff_id, browser in (("anna", anna_phone), ("anna", anna_old),
                                  ("bo", bo_phone), ("cleo", cleo_phone)):
            _subscribe(store, staff_id, browser)
        service.status["anna-old"] = 410
        service.status["bo-phone"] = 500

        async with running(PushNotifier(store, keys, subject="mailto:drift@kommun.example",
                                        policy=LOOPBACK)) as notifier:
            notifier.notify(alarm_body("a1"), frozenset({"anna", "bo"}))
            await notifier.drain()

        assert sorted(r.name for r in service.received) == ["anna-old", "anna-phone", "bo-phone"]
        assert (notifier.stats.sent, notifier.stats.expired, notifier.stats.failed) == (1, 1, 1)
        assert [s.endpoint for s in store.for_staff({"anna"})] == [anna_phone.endpoint]

        delivered = next(r for r in service.received if r.name == "anna-phone")
        claims = service.check_vapid(delivered)
        assert claims["sub"] == "mailto:drift@kommun.example"
        assert delivered.headers["ttl"] == "600"
        assert delivered.headers["urgency"] == "high"
        assert delivered.headers["content-encoding"] == "aes128gcm"
        payload = anna_phone.decrypt(delivered.body)
        assert payload == push_payload(alarm_body("a1"))
        assert payload["alarm_id"] == "a1"
        # Nothing that identifies the person goes into a lock-screen notification.
        assert "Astrid" not in json.dumps(payload) and "Storgatan" not in json.dumps(payload)


async def test_notifier_pushes_each_alarm_once_and_only_while_unhandled(
    store: SubscriptionStore, keys: VapidKeys
) -> None:
    """Later changes of an alarm (receipts, accept, close) do not push again."""
    async with fake_push_service(keys.public_key) as service:
        _subscribe(store, "anna", FakeBrowser(service.endpoint("anna")))
        _subscribe(store, "bo", FakeBrowser(service.endpoint("bo")))
        async with running(PushNotifier(store, keys, policy=LOOPBACK)) as notifier:
            notifier.notify(alarm_body("a1"), frozenset({"anna"}))
            notifier.notify(alarm_body("a1", stage="delivered"), frozenset({"anna"}))
            notifier.notify(alarm_body("a2", owner="anna"), frozenset({"anna", "bo"}))
            notifier.notify(alarm_body("a3", state="closed"), frozenset({"anna", "bo"}))
            # Routed on to one more person (escalation): only the newcomer is pushed.
            notifier.notify(alarm_body("a1"), frozenset({"anna", "bo"}))
            await notifier.drain()
        assert sorted(r.name for r in service.received) == ["anna", "bo"]
        assert notifier.stats.queued == 2
        assert notifier.stats.sent == 2


async def test_notifier_queue_is_bounded_and_drops_with_a_count(
    store: SubscriptionStore, keys: VapidKeys, caplog: pytest.LogCaptureFixture
) -> None:
    """notify never blocks: beyond the bound a push is dropped, counted and logged."""
    notifier = PushNotifier(store, keys, queue_size=2)
    for n in range(5):
        notifier.notify(alarm_body(f"a{n}"), frozenset({"anna"}))
    assert (notifier.stats.queued, notifier.stats.dropped) == (2, 3)
    assert "web push queue full" in caplog.text


async def test_notifier_lifecycle(store: SubscriptionStore, keys: VapidKeys) -> None:
    """The sender runs under its owner: not re-entrant, gone after exit, reusable after."""
    notifier = PushNotifier(store, keys)
    async with running(notifier):
        with pytest.raises(RuntimeError):
            await notifier.__aenter__()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("test run")]
    async with running(notifier):
        pass


async def test_notifier_counts_unreachable_push_services(
    store: SubscriptionStore, keys: VapidKeys
) -> None:
    """A push service that refuses connections is a counted failure, not a crash."""
    async with fake_push_service() as service:
        dead = service.endpoint("x")
    _subscribe(store, "anna", FakeBrowser(dead))
    async with running(PushNotifier(store, keys, send_timeout_s=5,
                                    policy=LOOPBACK)) as notifier:
        notifier.notify(alarm_body("a1"), frozenset({"anna"}))
        await notifier.drain()
    assert (notifier.stats.sent, notifier.stats.failed) == (0, 1)
    assert store.count() == 1  # a network failure is not an expired subscription


async def test_notifier_never_sends_to_a_stored_endpoint_the_rules_refuse(
    store: SubscriptionStore, keys: VapidKeys
) -> None:
    """A subscription stored before the rules (an inside address) is not sent to: counted,
    logged and removed; the allowed one of the same alarm still goes out."""
    async with fake_push_service(keys.public_key) as service:
        _subscribe(store, "anna", FakeBrowser(service.endpoint("anna")))
        _subscribe(store, "bo", FakeBrowser("https://169.254.169.254/latest/meta-data/x"))
        _subscribe(store, "bo", FakeBrowser(service.endpoint("bo-old-loopback")))
        # The production policy: the loopback fake service is not a push service either.
        async with running(PushNotifier(store, keys, policy=EndpointPolicy())) as notifier:
            notifier.notify(alarm_body("a1"), frozenset({"anna", "bo"}))
            await notifier.drain()
        assert service.received == []
        assert (notifier.stats.sent, notifier.stats.refused) == (0, 3)
        assert store.count() == 0


async def test_sender_does_not_follow_redirects(store: SubscriptionStore,
                                                keys: VapidKeys) -> None:
    """A redirect (to an inside address, say) is a failed push, never a second request."""
    async with fake_push_service(keys.public_key) as service:
        service.redirect["anna"] = service.endpoint("inside")
        _subscribe(store, "anna", FakeBrowser(service.endpoint("anna")))
        async with running(PushNotifier(store, keys, policy=LOOPBACK)) as notifier:
            notifier.notify(alarm_body("a1"), frozenset({"anna"}))
            await notifier.drain()
        assert [r.name for r in service.received] == ["anna"]
        assert (notifier.stats.sent, notifier.stats.failed) == (0, 1)


async def test_sender_resolver_refuses_inside_addresses() -> None:
    """Every connection's addresses are checked, not only at registration (DNS rebinding)."""
    resolver = PublicResolver()
    try:
        with pytest.raises(OSError, match="non-public address"):
            await resolver.resolve("localhost", 443)
    finally:
        await resolver.close()


# -- through the gateway --------------------------------------------------------------------


@pytest.mark.network
async def test_alarm_over_mqtt_is_pushed_to_the_team(
    mosquitto: tuple[str, int], tmp_path: Path, prefix: str
) -> None:
    """Device → gateway → notifier → push service, for the team's subscribed phones only."""
    async with gateway_with_push(mosquitto, tmp_path / "gw", prefix) as (gw, notifier):
        base = f"http://127.0.0.1:{gw.http_port}"
        async with fake_push_service(notifier.keys.public_key) as service, \
                httpx.AsyncClient(base_url=base) as client:
            key = (await client.get("/api/v1/push/vapid-public-key")).json()["public_key"]
            assert key == notifier.keys.public_key
            phones = {sid: FakeBrowser(service.endpoint(sid)) for sid in ("anna", "bo", "cleo")}
            for sid, phone in phones.items():
                response = await client.post("/api/v1/push/subscriptions",
                                             json=phone.subscription(), headers=_auth(gw, sid))
                assert response.status_code == 201

            async with device(mosquitto, prefix, "dev-a") as dev:
                await dev.alarm("p1", "fall")
                assert (await dev.wait_ack("p1"))["status"] == "stored"
            await service.wait_for(2)
            await notifier.drain()

            assert sorted(r.name for r in service.received) == ["anna", "bo"]  # team-a only
            payloads = [phones[r.name].decrypt(r.body) for r in service.received]
            alarm_id = payloads[0]["alarm_id"]
            assert {p["alarm_id"] for p in payloads} == {alarm_id}
            assert gw.core.alarms[alarm_id].device_id == "dev-a"
            assert payloads[0]["type"] == "fall"


# -- the endpoint rules, pure ------------------------------------------------------------------


def test_allowed_host_patterns() -> None:
    from gateway.pushguard import DEFAULT_PUSH_HOSTS, host_allowed, url_problem

    for host in ("fcm.googleapis.com", "updates.push.services.mozilla.com",
                 "web.push.apple.com", "wns2-db5p.notify.windows.com"):
        assert host_allowed(host, DEFAULT_PUSH_HOSTS), host
    for host in ("push.apple.com", "notify.windows.com.evil.example", "evilpush.apple.com",
                 "fcm.googleapis.com.evil.example", "googleapis.com"):
        assert not host_allowed(host, DEFAULT_PUSH_HOSTS), host
    assert url_problem("https://fcm.googleapis.com./fcm/send/x", DEFAULT_PUSH_HOSTS) is None
    assert url_problem("https://FCM.googleapis.com/wp/x", DEFAULT_PUSH_HOSTS) is None
    assert url_problem("https://[fe80::1%25eth0]/x", DEFAULT_PUSH_HOSTS) is not None
    assert url_problem("https://fcm.googleapis.com:99999/x", DEFAULT_PUSH_HOSTS) is not None


@given(st.ip_addresses(v=4))
def test_mapped_ipv6_is_judged_as_its_ipv4(address: ipaddress.IPv4Address) -> None:
    from gateway.pushguard import public

    mapped = ipaddress.IPv6Address(f"::ffff:{address}")
    assert public(mapped) == public(address)
    if address.is_private or address.is_loopback or address.is_link_local:
        assert not public(address)
