"""The staff app in a real headless Chromium (Debian's, driven by Playwright).

A real gateway on the real Mosquitto; devices publish alarms over MQTT; a staff member
works them in the browser. Every wait is on a selector or a server-side condition, never a
fixed sleep. Screenshots of the key screens go to ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import jwt
import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, async_playwright, expect

from alarms.model import Alarm, Hop
from gateway.auth import TokenError
from gateway.push import push_payload
from gateway.runtime import Gateway
from gateway.security import MIN_ACCESS_TTL_DEMO_S, SESSIONS_FILENAME, RefreshStore
from gateway.views import alarm_json
from tests.conftest import PASSWORD
from tests.helpers import device, login
from tests.test_push import gateway_with_push

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TIMEOUT_MS = 10_000
# Access tokens of the short-lived gateway: the shortest demo mode allows. The app refreshes
# at 70–85 % of the lifetime, so a refresh is due every 7–8.5 s.
SHORT_TTL_S = MIN_ACCESS_TTL_DEMO_S
EXPIRED = "Sessionen har gått ut – logga in igen"
EXPIRED_EN = "Session expired – log in again"

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
    ),
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium (never Playwright's own download)."""
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def gateway(
    mosquitto: tuple[str, int], tmp_path: Path, prefix: str
) -> AsyncIterator[Gateway]:
    """A seeded gateway with Web Push, on the real Mosquitto."""
    async with gateway_with_push(mosquitto, tmp_path / "gw", prefix) as (gw, _notifier):
        yield gw


@pytest.fixture
async def short_gateway(
    mosquitto: tuple[str, int], tmp_path: Path, prefix: str
) -> AsyncIterator[Gateway]:
    """As ``gateway``, with access tokens that expire after ``SHORT_TTL_S``."""
    async with gateway_with_push(mosquitto, tmp_path / "gw", prefix,
                                 security={"access_ttl_s": SHORT_TTL_S}) as (gw, _notifier):
        yield gw


def base_url(gw: Gateway) -> str:
    return f"http://127.0.0.1:{gw.http_port}"


async def phone(browser: Browser, gw: Gateway, **options: Any) -> BrowserContext:
    """A phone-sized browser context."""
    context = await browser.new_context(
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
        locale="sv-SE",
        base_url=base_url(gw),
        **options,
    )
    context.set_default_timeout(TIMEOUT_MS)
    return context


async def log_in(page: Page, username: str, screenshot: str | None = None) -> None:
    """Log in through the form and wait until the live feed is up."""
    await page.goto("/app/")
    await expect(page.get_by_role("heading", name="Logga in")).to_be_visible()
    await page.get_by_label("Användarnamn").fill(username)
    await page.get_by_label("Lösenord").fill(PASSWORD)
    if screenshot:
        await shot(page, screenshot)
    await page.get_by_role("button", name="Logga in").click()
    await expect(page.locator("#conn.on")).to_be_visible()
    await expect(page.locator("#list-view")).to_be_visible()


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=str(ARTIFACTS / f"staff-app-{name}.png"))


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Wait for a server-side condition (polled on the loop; not a sleep for correctness)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def alarm_of(gw: Gateway, device_id: str, ref: str) -> Alarm:
    alarm = gw.core.find(device_id, ref)
    assert alarm is not None, f"no alarm {device_id}/{ref}"
    return alarm


def hops(alarm: Alarm) -> list[tuple[str, str]]:
    return [(h.hop.value, h.actor) for h in alarm.hops]


async def raise_alarm(
    gw: Gateway, broker: tuple[str, int], prefix: str, ref: str, kind: str = "manual",
    device_id: str = "dev-a",
) -> Alarm:
    """A device publishes an alarm over MQTT; returns it once it is stored and acked."""
    async with device(broker, prefix, device_id) as dev:
        await dev.alarm(ref, kind)
        assert (await dev.wait_ack(ref))["status"] == "stored"
    return alarm_of(gw, device_id, ref)


async def list_ids(page: Page) -> list[str]:
    ids: list[str] = await page.locator("#alarms li[data-alarm-id]").evaluate_all(
        "items => items.map(item => item.dataset.alarmId)"
    )
    return ids


async def test_staff_works_an_alarm_from_list_to_close(
    browser: Browser, gateway: Gateway, mosquitto: tuple[str, int], prefix: str
) -> None:
    """Login → live alarm (red) → detail → accept (yellow) → on site → close (green)."""
    gw = gateway
    context = await phone(browser, gw)
    page = await context.new_page()
    await log_in(page, "anna", screenshot="login")

    alarm = await raise_alarm(gw, mosquitto, prefix, "b1", "fall")
    item = page.locator(f'#alarm-list li[data-alarm-id="{alarm.id}"]')
    await expect(item).to_have_attribute("data-state", "new")
    await expect(item).to_contain_text("Fall")
    await expect(item).to_contain_text("Astrid A, Storgatan 1")
    await expect(item).to_contain_text("Ej hanterat")
    # The app confirmed receipt over the socket: the `delivered` hop is anna's.
    await until(lambda: ("delivered", "anna") in hops(alarm_of(gw, "dev-a", "b1")))
    assert int(await page.evaluate("document.documentElement.dataset.alerts")) >= 1
    await shot(page, "list")

    await item.get_by_role("link").click()
    detail = page.locator("#detail-view")
    await expect(detail).to_have_attribute("data-state", "new")
    await expect(detail.locator("dd.recipient")).to_have_text("Astrid A")
    await expect(detail.locator("dd.address")).to_have_text("Storgatan 1")
    # Forwarding is for whoever has the alarm: not offered before it is accepted.
    await expect(detail.locator('button[data-action="forward"]')).to_have_count(0)

    await detail.get_by_role("button", name="Ta larmet").click()
    await expect(detail).to_have_attribute("data-state", "handling")
    await expect(detail.locator(".detail-head")).to_contain_text("Hanteras – Anna")
    await detail.get_by_role("button", name="På plats").click()
    await expect(detail).to_have_attribute("data-state", "on_site")

    await detail.get_by_role("button", name="Avsluta", exact=False).first.click()
    form = page.locator("#close-form")
    await expect(form).to_be_visible()
    await form.get_by_label("fall – hjälpt upp").check()
    await form.get_by_label("Anteckning").fill("Hjälpt upp från golvet, inga skador.")
    await form.get_by_role("button", name="Avsluta larmet").click()
    await expect(detail).to_have_attribute("data-state", "done")
    await expect(form).to_be_hidden()

    timeline = detail.locator("#timeline li")
    expected = ["raised", "stored", "routed", "delivered", "accepted", "on_site", "closed"]
    await expect(timeline).to_have_count(len(expected))
    assert await timeline.evaluate_all("items => items.map(i => i.dataset.hop)") == expected
    await expect(detail.locator("dd.cause")).to_have_text("fall – hjälpt upp")
    await shot(page, "detail")

    closed = alarm_of(gw, "dev-a", "b1")
    assert [h for h, _ in hops(closed)] == expected
    assert closed.state == "closed"
    assert closed.cause == "fall – hjälpt upp"
    assert closed.note == "Hjälpt upp från golvet, inga skador."

    # Back in the list the alarm is green (done) until the next resync.
    await detail.get_by_role("button", name="Tillbaka").click()
    await expect(item).to_have_attribute("data-state", "done")
    await context.close()


async def test_conflict_is_shown(
    browser: Browser, gateway: Gateway, mosquitto: tuple[str, int], prefix: str
) -> None:
    """Two staff accept at once: the loser sees the server's reason (409)."""
    gw = gateway
    alarm = await raise_alarm(gw, mosquitto, prefix, "c1")
    anna = await login(base_url(gw), "anna")
    context = await phone(browser, gw)
    page = await context.new_page()
    await log_in(page, "bo")
    await page.locator(f'li[data-alarm-id="{alarm.id}"] a').click()

    async def anna_wins(route: Route) -> None:
        # anna's accept lands while bo's request is on its way.
        assert (await anna.post(f"/alarms/{alarm.id}/accept")).status_code == 200
        await route.continue_()

    await page.route(f"**/api/v1/alarms/{alarm.id}/accept", anna_wins)
    await page.locator("#detail-view").get_by_role("button", name="Ta larmet").click()
    # In words, with the colleague's name (the server's reason speaks in ids).
    await expect(page.locator("#action-error")).to_contain_text("redan taget av Anna")
    await expect(page.locator("#detail-view")).to_have_attribute("data-state", "handling")
    await anna.http.aclose()
    await context.close()


async def test_network_drop_reconnects_and_resyncs_without_duplicates(
    browser: Browser, gateway: Gateway, mosquitto: tuple[str, int], prefix: str
) -> None:
    """Offline banner with its start time; after reconnect the list is exact, no duplicates."""
    gw = gateway
    context = await phone(browser, gw)
    page = await context.new_page()
    await log_in(page, "anna")
    first = await raise_alarm(gw, mosquitto, prefix, "d1")
    await expect(page.locator(f'li[data-alarm-id="{first.id}"]')).to_be_visible()

    await context.set_offline(True)
    banner = page.locator("#offline")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("Ingen anslutning")
    await expect(banner).to_contain_text("sedan")
    await expect(page.locator("#conn.off")).to_be_visible()
    await shot(page, "offline")

    # Meanwhile: a new alarm arrives (another recipient of team-a: one from the same home
    # would be attached to the open alarm), and the first one is handled on another phone.
    second = await raise_alarm(gw, mosquitto, prefix, "d2", device_id="sim-001")
    anna_other_phone = await login(base_url(gw), "anna")
    assert (await anna_other_phone.post(f"/alarms/{first.id}/accept")).status_code == 200
    closing = {"cause": "ingen åtgärd"}
    assert (await anna_other_phone.post(f"/alarms/{first.id}/close", json=closing)).status_code == 200
    await anna_other_phone.http.aclose()
    assert second.id not in await list_ids(page)  # still offline: nothing got through
    assert first.id in await list_ids(page)

    open_now = {a.id for a in gw.visible_alarms("anna", "open")}
    synced_before = await page.evaluate("document.documentElement.dataset.synced")
    await context.set_offline(False)
    await expect(banner).to_be_hidden()
    await page.wait_for_function(
        "before => document.documentElement.dataset.synced !== before", arg=synced_before
    )
    await expect(page.locator(f'li[data-alarm-id="{second.id}"]')).to_have_count(1)
    ids = await list_ids(page)
    assert len(ids) == len(set(ids)), ids  # no duplicates
    assert first.id not in ids  # closed meanwhile: dropped on resync
    # Every alarm the server had open for anna is there (supervision may add technical
    # alarms of its own at any moment, so only a superset can be asserted race-free).
    assert open_now <= set(ids), (open_now, ids)
    # The new alarm was confirmed by the reconnected app.
    await until(lambda: ("delivered", "anna") in hops(alarm_of(gw, "sim-001", "d2")))

    # A later live update of the same alarm replaces it in place.
    anna = await login(base_url(gw), "anna")
    assert (await anna.post(f"/alarms/{second.id}/accept")).status_code == 200
    await anna.http.aclose()
    await expect(page.locator(f'li[data-alarm-id="{second.id}"]')).to_have_attribute(
        "data-state", "handling")
    ids = await list_ids(page)
    assert ids.count(second.id) == 1 and len(ids) == len(set(ids))
    await context.close()


async def test_service_worker_push_records_the_delivered_hop(
    browser: Browser, gateway: Gateway, mosquitto: tuple[str, int], prefix: str
) -> None:
    """A push woken service worker shows a notification and posts the receipt itself."""
    gw = gateway
    base = base_url(gw)
    context = await phone(browser, gw)
    await context.grant_permissions(["notifications"], origin=base)
    page = await context.new_page()
    await log_in(page, "anna")
    scope = await page.evaluate("navigator.serviceWorker.ready.then(r => r.scope)")
    assert scope == f"{base}/app/"

    # The app is closed: no socket can confirm anything, only the worker.
    await page.goto("/healthz")
    await until(lambda: "anna" not in gw.hub.connected_staff())
    alarm = await raise_alarm(gw, mosquitto, prefix, "e1", "smoke")
    assert not alarm.reached(Hop.DELIVERED)

    cdp = await context.new_cdp_session(page)
    registrations: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
    cdp.on("ServiceWorker.workerRegistrationUpdated",
           lambda event: registrations.put_nowait(event["registrations"]))
    await cdp.send("ServiceWorker.enable")
    registration_id = None
    async with asyncio.timeout(10):
        while registration_id is None:
            for registration in await registrations.get():
                if registration["scopeURL"] == f"{base}/app/" and not registration["isDeleted"]:
                    registration_id = registration["registrationId"]

    payload = push_payload(alarm_json(alarm, gw.org))
    await cdp.send("ServiceWorker.deliverPushMessage", {
        "origin": base, "registrationId": registration_id, "data": json.dumps(payload)})

    await until(lambda: ("delivered", "anna") in hops(alarm_of(gw, "dev-a", "e1")))
    worker = context.service_workers[0]
    titles = await worker.evaluate(
        "self.registration.getNotifications().then(list => list.map(n => n.title))"
    )
    assert titles == ["Larm: Brandlarm"]
    await cdp.detach()
    await context.close()


# -- the session: short access tokens, rotating refresh tokens ---------------------------------

STORED_SESSION = "import('/static/js/idb.js').then(idb => idb.kvGet('session')).then(s => s ?? null)"


async def stored_session(page: Page) -> dict[str, Any] | None:
    """The session the app keeps in IndexedDB (shared with the service worker)."""
    session: dict[str, Any] | None = await page.evaluate(STORED_SESSION)
    return session


def refresh_rows(gw: Gateway, staff_id: str) -> list[tuple[int, int]]:
    """(used, revoked) of every refresh token the gateway issued to ``staff_id``."""
    with closing(sqlite3.connect(gw.settings.data_dir / SESSIONS_FILENAME)) as conn:
        rows: list[tuple[int, int]] = conn.execute(
            "SELECT used, revoked FROM refresh WHERE staff_id = ?", (staff_id,)).fetchall()
    return rows


def issued_at(gw: Gateway, staff_id: str) -> list[float]:
    """When each refresh token of ``staff_id`` was issued (login, then every refresh)."""
    with closing(sqlite3.connect(gw.settings.data_dir / SESSIONS_FILENAME)) as conn:
        rows = conn.execute("SELECT expires_at FROM refresh WHERE staff_id = ? ORDER BY rowid",
                            (staff_id,)).fetchall()
    return [expires - gw.settings.security.refresh_ttl_s for (expires,) in rows]


def rotations(gw: Gateway, staff_id: str) -> int:
    """How many refresh tokens of ``staff_id`` have been spent (= refreshes)."""
    return sum(used for used, _ in refresh_rows(gw, staff_id))


def revoked(gw: Gateway, staff_id: str) -> bool:
    return any(flag for _, flag in refresh_rows(gw, staff_id))


def valid(gw: Gateway, token: str) -> bool:
    try:
        gw.tokens.check(token)
    except TokenError:
        return False
    return True


def socket_token(url: str) -> str:
    return parse_qs(urlparse(url).query)["token"][0]


async def test_access_token_is_refreshed_before_it_expires_and_the_feed_survives(
    browser: Browser, short_gateway: Gateway, mosquitto: tuple[str, int], prefix: str
) -> None:
    """Short access tokens: the app refreshes them on its timer, reconnects its socket with
    the new one, receives and works alarms; logging out revokes the refresh token."""
    gw = short_gateway
    context = await phone(browser, gw)
    page = await context.new_page()
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    await log_in(page, "anna")
    first = await stored_session(page)
    assert first is not None and first["refresh_token"]
    assert socket_token(sockets[0]) == first["access_token"]

    # Refreshed by the timer before the token ran out, then the old token expires.
    await until(lambda: rotations(gw, "anna") >= 1, timeout=SHORT_TTL_S)
    expires = jwt.decode(first["access_token"], options={"verify_signature": False})["exp"]
    assert issued_at(gw, "anna")[1] < expires
    await until(lambda: not valid(gw, first["access_token"]), timeout=SHORT_TTL_S + 2)
    await expect(page.locator("#conn.on")).to_be_visible()
    renewed = await stored_session(page)
    assert renewed is not None and renewed["access_token"] != first["access_token"]
    assert valid(gw, renewed["access_token"])

    # The socket reconnects with the new token at once (no 4401 round first).
    await context.set_offline(True)
    await expect(page.locator("#conn.off")).to_be_visible()
    await context.set_offline(False)
    await expect(page.locator("#conn.on")).to_be_visible()
    assert len(sockets) == 2, sockets
    assert socket_token(sockets[1]) != first["access_token"]
    assert valid(gw, socket_token(sockets[1]))

    alarm = await raise_alarm(gw, mosquitto, prefix, "t1")
    item = page.locator(f'#alarm-list li[data-alarm-id="{alarm.id}"]')
    await expect(item).to_have_attribute("data-state", "new")
    await until(lambda: ("delivered", "anna") in hops(alarm_of(gw, "dev-a", "t1")))

    # Another refresh later the API still answers (with whatever token is current).
    done = rotations(gw, "anna")
    await until(lambda: rotations(gw, "anna") > done, timeout=SHORT_TTL_S)
    await item.get_by_role("link").click()
    await page.locator("#detail-view").get_by_role("button", name="Ta larmet").click()
    await expect(page.locator("#detail-view")).to_have_attribute("data-state", "handling")
    assert not revoked(gw, "anna")
    # The service worker reads the same store: it has the current token.
    latest = await stored_session(page)
    assert latest is not None and valid(gw, latest["access_token"])

    # Logging out revokes the session at the gateway.
    await page.get_by_role("button", name="Logga ut").click()
    await expect(page.get_by_role("heading", name="Logga in")).to_be_visible()
    await expect(page.locator("#login-error")).to_have_text("")
    assert await stored_session(page) is None
    await until(lambda: revoked(gw, "anna"))
    async with httpx.AsyncClient(base_url=base_url(gw)) as client:
        refused = await client.post("/api/v1/auth/refresh",
                                    json={"refresh_token": latest["refresh_token"]})
    assert refused.status_code == 401
    await context.close()


async def test_service_worker_refreshes_the_token_for_a_push_receipt(
    browser: Browser, short_gateway: Gateway, mosquitto: tuple[str, int], prefix: str
) -> None:
    """The app is closed and its access token expired: the worker refreshes it to post the
    push receipt, and the app opened again carries on with the worker's tokens."""
    gw = short_gateway
    base = base_url(gw)
    context = await phone(browser, gw)
    await context.grant_permissions(["notifications"], origin=base)
    page = await context.new_page()
    await log_in(page, "anna")
    await page.evaluate("navigator.serviceWorker.ready")
    cdp = await context.new_cdp_session(page)
    registrations: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
    cdp.on("ServiceWorker.workerRegistrationUpdated",
           lambda event: registrations.put_nowait(event["registrations"]))
    await cdp.send("ServiceWorker.enable")
    registration_id = None
    async with asyncio.timeout(10):
        while registration_id is None:
            for registration in await registrations.get():
                if registration["scopeURL"] == f"{base}/app/" and not registration["isDeleted"]:
                    registration_id = registration["registrationId"]

    await page.goto("/healthz")  # the app is closed: no timer refreshes anything now
    await until(lambda: "anna" not in gw.hub.connected_staff())
    closed_with = await stored_session(page)
    assert closed_with is not None
    await until(lambda: not valid(gw, closed_with["access_token"]), timeout=SHORT_TTL_S + 2)
    before = rotations(gw, "anna")

    alarm = await raise_alarm(gw, mosquitto, prefix, "w1", "smoke")
    payload = push_payload(alarm_json(alarm, gw.org))
    await cdp.send("ServiceWorker.deliverPushMessage", {
        "origin": base, "registrationId": registration_id, "data": json.dumps(payload)})
    await until(lambda: ("delivered", "anna") in hops(alarm_of(gw, "dev-a", "w1")))
    assert rotations(gw, "anna") == before + 1
    assert not revoked(gw, "anna")

    # Back in the app: it picks up the worker's tokens; nothing was spent twice.
    await page.goto("/app/")
    await expect(page.locator("#conn.on")).to_be_visible()
    await expect(page.locator(f'li[data-alarm-id="{alarm.id}"]')).to_be_visible()
    assert not revoked(gw, "anna")
    await cdp.detach()
    await context.close()


async def test_concurrent_401s_in_two_tabs_refresh_once(
    browser: Browser, gateway: Gateway, mosquitto: tuple[str, int], prefix: str
) -> None:
    """Two tabs whose calls get 401 at the same moment: one refresh between them (a second
    one with the same refresh token would revoke the session), and both retry and succeed."""
    gw = gateway
    alarm = await raise_alarm(gw, mosquitto, prefix, "x1")
    anna = await login(base_url(gw), "anna")
    assert (await anna.post(f"/alarms/{alarm.id}/accept")).status_code == 200
    closing_body = {"cause": "ingen åtgärd"}
    assert (await anna.post(f"/alarms/{alarm.id}/close", json=closing_body)).status_code == 200
    await anna.http.aclose()
    before = rotations(gw, "anna")

    context = await phone(browser, gw)
    tabs = [await context.new_page(), await context.new_page()]
    await log_in(tabs[0], "anna")
    await tabs[1].goto("/app/")  # the second tab picks up the same session
    await expect(tabs[1].locator("#conn.on")).to_be_visible()

    # The closed alarm is not in the live list, so opening it calls the API. Both calls are
    # held until both have arrived, then both are refused as if the token had expired.
    held: list[Route] = []
    both = asyncio.Event()

    async def refuse_both(route: Route) -> None:
        if both.is_set():
            await route.continue_()
            return
        held.append(route)
        if len(held) < 2:
            return
        both.set()
        for waiting in held:
            await waiting.fulfill(status=401, json={"detail": "invalid or expired token"},
                                  headers={"WWW-Authenticate": "Bearer"})

    await context.route(f"**/api/v1/alarms/{alarm.id}", refuse_both)
    await asyncio.gather(*(tab.evaluate("id => { location.hash = `#/alarm/${id}`; }", alarm.id)
                           for tab in tabs))
    for tab in tabs:
        await expect(tab.locator("#detail-view dd.cause")).to_have_text("ingen åtgärd")
        await expect(tab.locator("#login-view")).to_be_hidden()
    assert both.is_set()
    assert rotations(gw, "anna") == before + 1
    assert not revoked(gw, "anna")

    # Within one tab: three calls refused at once (a token the server does not take) share
    # one refresh as well.
    first = await tabs[0].evaluate("""async () => {
      const { Api } = await import("/static/js/api.js");
      const { Session, sharedStore } = await import("/static/js/session.js");
      const stored = await sharedStore.load();
      await sharedStore.save({ ...stored, access_token: "not-a-token" });
      const session = new Session(sharedStore, { lock: "trygg-auth" });
      await session.resume();
      const api = new Api(() => { throw new Error("logged out"); }, session);
      const answers = await Promise.all([api.get("/me"), api.get("/me"), api.get("/alarms")]);
      return answers[0].id;
    }""")
    assert first == "anna"
    assert rotations(gw, "anna") == before + 2
    assert not revoked(gw, "anna")
    await context.close()


async def test_socket_refusing_its_token_refreshes_and_reconnects(
    browser: Browser, gateway: Gateway
) -> None:
    """A socket closed with 4401 (its token refused): the app refreshes and reconnects
    instead of logging out."""
    gw = gateway
    context = await phone(browser, gw)
    page = await context.new_page()
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    await log_in(page, "anna")
    before = rotations(gw, "anna")

    # While offline, the stored session gets an access token the gateway will refuse (as
    # after a phone slept past its expiry) and the app is told, as after another tab's
    # refresh. Back online, the socket reconnects with it first.
    await context.set_offline(True)
    await expect(page.locator("#conn.off")).to_be_visible()
    await page.evaluate("""async () => {
      const { sharedStore } = await import("/static/js/session.js");
      const stored = await sharedStore.load();
      await sharedStore.save({ ...stored, access_token: "not-a-token", issued_at: Date.now() });
      new BroadcastChannel("trygg-auth").postMessage({ type: "tokens" });
    }""")
    await page.wait_for_function("""() => import("/static/js/session.js")
      .then(m => m.sharedStore.load()).then(s => s.access_token === "not-a-token")""")
    await context.set_offline(False)
    await expect(page.locator("#conn.on")).to_be_visible()
    assert [socket_token(url) for url in sockets][-2] == "not-a-token"
    assert valid(gw, socket_token(sockets[-1]))
    assert rotations(gw, "anna") == before + 1
    assert not revoked(gw, "anna")
    await expect(page.locator("#login-view")).to_be_hidden()
    await context.close()


async def test_refused_refresh_returns_to_the_login_screen(
    browser: Browser, short_gateway: Gateway
) -> None:
    """The session was revoked at the gateway: the next refresh is refused and the app
    shows the login screen, saying why."""
    gw = short_gateway
    context = await phone(browser, gw)
    page = await context.new_page()
    await log_in(page, "anna")
    # E.g. an administrator reset anna's password: every session of hers is revoked.
    RefreshStore(gw.settings.data_dir / SESSIONS_FILENAME, 3600).revoke_staff("anna")

    # Nothing else calls the gateway meanwhile: it is the refresh timer that finds out.
    await expect(page.get_by_role("heading", name="Logga in")).to_be_visible(
        timeout=(SHORT_TTL_S + 5) * 1000)
    await expect(page.locator("#login-error")).to_contain_text(EXPIRED)
    await expect(page.locator("#login-error")).to_contain_text(EXPIRED_EN)
    await expect(page.locator("#list-view")).to_be_hidden()
    await expect(page.locator("#offline")).to_be_hidden()
    await expect(page.locator("#logout")).to_be_hidden()
    assert await stored_session(page) is None
    await until(lambda: "anna" not in gw.hub.connected_staff())
    await shot(page, "session-expired")
    await context.close()


async def test_api_docs_render_offline(browser: Browser, gateway: Gateway) -> None:
    """/docs and /redoc render with every request off this gateway refused (no internet)."""
    base = f"http://127.0.0.1:{gateway.http_port}"
    context = await browser.new_context()
    elsewhere: list[str] = []

    async def only_local(route: Route) -> None:
        if route.request.url.startswith(base):
            await route.continue_()
        else:
            elsewhere.append(route.request.url)
            await route.abort()

    await context.route("**/*", only_local)
    page = await context.new_page()
    try:
        await page.goto(f"{base}/docs")
        # One operation block per API operation: the spec was fetched, parsed and shown.
        await expect(page.locator(".opblock").first).to_be_visible(timeout=TIMEOUT_MS)
        assert await page.locator(".opblock").count() > 20
        await page.goto(f"{base}/redoc")
        await expect(page.get_by_text("/api/v1/auth/token").first).to_be_attached(
            timeout=TIMEOUT_MS)
    finally:
        await context.close()
    assert elsewhere == []
