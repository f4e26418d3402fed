"""The staff app in a real headless Chromium (Debian's, driven by Playwright).

A real gateway on the real Mosquitto; devices publish alarms over MQTT; a staff member
works them in the browser. Every wait is on a selector or a server-side condition, never a
fixed sleep. Screenshots of the key screens go to ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, async_playwright, expect

from alarms.model import Alarm, Hop
from gateway.push import push_payload
from gateway.runtime import Gateway
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
    ids: list[str] = await page.locator("#alarm-list li[data-alarm-id]").evaluate_all(
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
    await expect(item).to_have_class("alarm new")
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
    await expect(detail.locator('button[data-action="forward"]')).to_be_disabled()

    await detail.get_by_role("button", name="Ta larmet").click()
    await expect(detail).to_have_attribute("data-state", "handling")
    await expect(detail.locator(".detail-head")).to_contain_text("Hanteras – anna")
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
    await expect(item).to_have_class("alarm done")
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
    await expect(page.locator("#action-error")).to_contain_text("already accepted by anna")
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
    await expect(page.locator(f'li[data-alarm-id="{second.id}"]')).to_have_class("alarm handling")
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
