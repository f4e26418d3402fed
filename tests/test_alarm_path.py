"""The alarm path end to end, against real Mosquitto and against the embedded broker."""

from __future__ import annotations

import json
import time

import httpx

from alarms.events import AcceptRequested, CloseRequested
from alarms.model import AlarmType
from gateway.runtime import Gateway
from tests.conftest import GatewayFactory
from tests.helpers import device, login, next_alarm


async def test_button_to_closed_with_seven_hops(
    broker: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    async with make_gateway(broker) as gw:
        base = f"http://127.0.0.1:{gw.http_port}"
        anna = await login(base, "anna")
        async with anna.socket() as ws, device(broker, prefix, "dev-a") as dev:
            hello = json.loads(await ws.recv())
            assert hello == {"type": "hello", "staff_id": "anna"}
            assert json.loads(await ws.recv()) == {"type": "sync", "open": []}

            await dev.alarm("ref-1", "fall")
            ack = await dev.wait_ack("ref-1")
            assert ack == {"ref": "ref-1", "status": "stored"}

            alarm = await next_alarm(ws)
            assert (alarm["device_id"], alarm["ref"], alarm["type"]) == ("dev-a", "ref-1", "fall")
            assert [h["hop"] for h in alarm["hops"]] == ["raised", "stored", "routed"]
            assert alarm["recipient"]["name"] == "Astrid A"
            await ws.send(json.dumps({"type": "receipt", "alarm_id": alarm["id"]}))
            delivered = await next_alarm(ws)
            assert delivered["hops"][-1]["hop"] == "delivered"
            assert delivered["hops"][-1]["actor"] == "anna"

            accepted = await anna.post(f"/alarms/{alarm['id']}/accept")
            assert accepted.status_code == 200, accepted.text
            on_site = await anna.post(f"/alarms/{alarm['id']}/on-site")
            assert on_site.status_code == 200, on_site.text
            no_cause = await anna.post(f"/alarms/{alarm['id']}/close", json={})
            assert no_cause.status_code == 422
            closed = await anna.post(
                f"/alarms/{alarm['id']}/close", json={"cause": "hjälp given", "note": "ok"}
            )
            assert closed.status_code == 200, closed.text

        final = (await anna.get(f"/alarms/{alarm['id']}")).json()
        assert [h["hop"] for h in final["hops"]] == [
            "raised", "stored", "routed", "delivered", "accepted", "on_site", "closed"]
        assert [h["actor"] for h in final["hops"]][3:] == ["anna"] * 4
        assert final["state"] == "closed" and final["cause"] == "hjälp given"
        assert (await anna.get("/alarms", params={"state": "open"})).json() == []
        assert [a["id"] for a in (await anna.get("/alarms?state=closed")).json()] == [alarm["id"]]
        # The response times are Prometheus histograms too.
        for hop in ("delivered", "accepted", "on_site", "closed"):
            count = gw.metrics.registry.get_sample_value(
                "trygg_response_seconds_count", {"hop": hop, "team": "team-a"})
            assert count == 1, hop
        await anna.http.aclose()


async def test_conflicting_accept_is_409_with_owner(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto) as gw, device(mosquitto, prefix, "dev-a") as dev:
        base = f"http://127.0.0.1:{gw.http_port}"
        anna, bo, cleo = [await login(base, name) for name in ("anna", "bo", "cleo")]
        await dev.alarm("x1")
        await dev.wait_ack("x1")
        alarm_id = (await anna.get("/alarms")).json()[0]["id"]
        # cleo is in another team: she does not even see it.
        assert (await cleo.get(f"/alarms/{alarm_id}")).status_code == 404
        assert (await cleo.get("/alarms")).json() == []
        assert (await anna.post(f"/alarms/{alarm_id}/accept")).status_code == 200
        conflict = await bo.post(f"/alarms/{alarm_id}/accept")
        assert conflict.status_code == 409
        assert "anna" in conflict.json()["detail"]
        for staff in (anna, bo, cleo):
            await staff.http.aclose()


async def test_resent_alarm_is_stored_and_shown_once(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto) as gw, device(mosquitto, prefix, "dev-a") as dev:
        for _ in range(5):
            await dev.alarm("same-ref")
        await dev.wait_ack("same-ref")
        # Messages from one client on one topic are processed in order: once a later
        # alarm is acked, every copy before it has been handled.
        await dev.alarm("after")
        await dev.wait_ack("after")
        assert _sample(gw, "trygg_duplicate_alarms_total") == 4
        base = f"http://127.0.0.1:{gw.http_port}"
        anna = await login(base, "anna")
        alarms = (await anna.get("/alarms?state=all")).json()
        # A further alarm from the same recipient while one is open attaches to it.
        assert [a["ref"] for a in alarms] == ["same-ref"]
        assert [r["ref"] for r in alarms[0]["attached"]] == ["after"]
        await anna.http.aclose()


def _sample(gw: Gateway, name: str) -> float:
    value = gw.metrics.registry.get_sample_value(name)
    return float(value or 0.0)


async def test_bad_input_is_rejected_counted_and_others_still_flow(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto) as gw, device(mosquitto, prefix, "dev-a") as dev:
        await dev.publish("alarm", b"{not json")
        await dev.publish("alarm", {"ts": 1, "type": "manual"})  # no ref
        await dev.publish("alarm", {"ref": "r", "ts": "yesterday", "type": "manual"})
        await dev.publish("alarm", {"ref": "r", "ts": 1, "type": "alien"})
        # An alarm whose ref could be read is answered: rejected, with the reason.
        refused_type = await dev.wait_ack("r")
        assert refused_type["status"] == "rejected"
        assert refused_type["reason"].startswith("bad_field")
        await dev.publish("alarm", b"[" * 70_000)
        await dev.client.publish(f"{prefix}/dev-a/alarm/extra", b"{}", qos=1)
        async with device(mosquitto, prefix, "ghost") as ghost:
            await ghost.alarm("g1")
            refused = await ghost.wait_ack("g1")
            assert refused == {"ref": "g1", "status": "rejected", "reason": "unknown device"}
        await dev.alarm("good")
        assert (await dev.wait_ack("good"))["status"] == "stored"

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
            text = (await http.get("/metrics")).text
            health = (await http.get("/healthz")).json()
        for reason in ("bad_json", "missing_field", "bad_field", "unknown_type", "oversize",
                       "unknown_device"):
            assert f'trygg_rejected_messages_total{{reason="{reason}"}} 1.0' in text, reason
        assert 'trygg_alarms{state="open"} 1.0' in text
        assert "trygg_journal_commit_seconds_count" in text
        assert health["status"] == "ok"


async def test_telemetry_is_stored_separately_and_queryable(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto) as gw, device(mosquitto, prefix, "dev-a") as dev:
        start = int(time.time() * 1000) - 10_000
        for n in range(5):
            await dev.publish(
                "telemetry",
                {"ref": f"t{n}", "ts": start + n * 1000, "metric": "temperature",
                 "value": 20.0 + n, "unit": "C"},
            )
        await dev.alarm("after-telemetry")
        await dev.wait_ack("after-telemetry")  # in-order: every sample was offered by now
        await gw.telemetry.flush()
        anna = await login(f"http://127.0.0.1:{gw.http_port}", "anna")
        series = await anna.get("/devices/dev-a/series", params={"metric": "temperature"})
        assert series.status_code == 200, series.text
        values = [v for _, v in series.json()["points"]]
        assert values == [20.0, 21.0, 22.0, 23.0, 24.0]
        cleo = await login(f"http://127.0.0.1:{gw.http_port}", "cleo")
        assert (await cleo.get("/devices/dev-a/series", params={"metric": "temperature"})
                ).status_code == 404
        assert gw.telemetry.stats.written == 5
        for staff in (anna, cleo):
            await staff.http.aclose()


async def test_a_device_that_restarts_its_ref_counter_loses_no_alarm(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    """Issue 18.1 on MQTT: the same ref with another device time is another message."""
    async with make_gateway(mosquitto) as gw, device(mosquitto, prefix, "dev-a") as dev:
        await dev.alarm("1", ts=1_800_000_000_000)
        await dev.wait_ack("1")
        [first] = gw.core.open_alarms()
        await gw.act(AcceptRequested(first.id, "anna"))
        await gw.act(CloseRequested(first.id, "anna", "hjälp given"))
        dev.acks.clear()
        # The device rebooted: its counter starts again at 1, for a new smoke alarm.
        await dev.alarm("1", "smoke", ts=1_800_000_900_000)
        assert (await dev.wait_ack("1"))["status"] == "stored"
        [second] = gw.core.open_alarms()
        assert second.id != first.id and second.type is AlarmType.SMOKE and second.ref == "1"


async def test_an_alarm_position_reaches_staff_with_map_links(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto) as gw, device(mosquitto, prefix, "dev-a") as dev:
        fix = {"lat": 59.3293, "lon": 18.0686, "accuracy": 12, "ts": 1_800_000_000_000}
        await dev.publish("alarm", {"ref": "m1", "ts": 1_800_000_000_000, "type": "manual",
                                    "position": fix})
        await dev.wait_ack("m1")
        # The person moves on: the resent alarm carries the new position.
        await dev.publish("alarm", {"ref": "m1", "ts": 1_800_000_000_000, "type": "manual",
                                    "position": {**fix, "lat": 59.33, "ts": 1_800_000_060_000}})
        await dev.alarm("after")
        await dev.wait_ack("after")
        anna = await login(f"http://127.0.0.1:{gw.http_port}", "anna")
        [alarm] = (await anna.get("/alarms")).json()
        assert [p["lat"] for p in alarm["positions"]] == [59.3293, 59.33]
        position = alarm["position"]
        assert position["geo_uri"] == "geo:59.330000,18.068600;u=12"
        assert position["map_url"].startswith("https://www.openstreetmap.org/?mlat=59.330000")
        assert position["fixed_at"] == "2027-01-15T08:01:00.000+00:00"
        assert position["source"] == "device"
        # A malformed position refuses the message, with the reason, as any bad field does.
        await dev.publish("alarm", {"ref": "bad", "ts": 1, "type": "manual",
                                    "position": {"lat": 91, "lon": 0}})
        assert (await dev.wait_ack("bad"))["status"] == "rejected"
        await anna.http.aclose()
