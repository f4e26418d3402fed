"""``--log-format json``: one JSON object per line, with the ids an operator searches by."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import load
from gateway.logformat import configure, log_ids
from tests.conftest import GatewayFactory
from tests.helpers import device


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The trygg handler writing into a buffer; the root logger restored afterwards."""
    root = logging.getLogger()
    level = root.level
    buffer = io.StringIO()
    yield buffer
    for handler in root.handlers[:]:
        if handler.get_name() == "trygg":
            root.removeHandler(handler)
    root.setLevel(level)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_json_lines_carry_level_logger_message_and_ids(stream: io.StringIO) -> None:
    configure("INFO", "json", stream)
    log = logging.getLogger("trygg.test")
    log.info("plain %s", "one")
    with log_ids(alarm_id="a-1", device_id="dev-a"):
        log.warning("bound\nover two lines")
        log.warning("explicit", extra={"hop": "stored", "device_id": "dev-b"})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.warning("failed", exc_info=True)  # (an ERROR with a traceback fails the suite)
    log.debug("not at INFO")
    first, bound, explicit, failed = lines(stream)
    assert first["message"] == "plain one"
    assert first["level"] == "INFO"
    assert first["logger"] == "trygg.test"
    assert str(first["time"]).endswith("Z")
    assert "alarm_id" not in first
    assert bound["message"] == "bound\nover two lines"
    assert (bound["alarm_id"], bound["device_id"]) == ("a-1", "dev-a")
    assert (explicit["alarm_id"], explicit["device_id"], explicit["hop"]) == (
        "a-1", "dev-b", "stored")
    assert failed["level"] == "WARNING"
    assert "RuntimeError: boom" in str(failed["exception"])


def test_text_stays_the_default(stream: io.StringIO) -> None:
    configure("INFO", stream=stream)
    logging.getLogger("trygg.test").info("hello", extra={"device_id": "dev-a"})
    (line,) = stream.getvalue().splitlines()
    assert line.endswith(" INFO    trygg.test: hello")
    with pytest.raises(ValueError):
        json.loads(line)


def test_configuring_again_replaces_only_its_own_handler(stream: io.StringIO) -> None:
    root = logging.getLogger()
    before = len(root.handlers)
    configure("INFO", "text", io.StringIO())
    configure("INFO", "json", stream)
    assert len(root.handlers) == before + 1
    logging.getLogger("trygg.test").info("once")
    assert [line["message"] for line in lines(stream)] == ["once"]


def test_log_format_is_a_setting(tmp_path: Path) -> None:
    config = tmp_path / "trygg.toml"
    config.write_text('log_format = "json"\n')
    assert load(config, demo=True).log_format == "json"
    config.write_text('log_format = "xml"\n')
    with pytest.raises(ValueError, match="log_format"):
        load(config, demo=True)


@pytest.mark.network
async def test_a_running_gateway_logs_json_with_the_device_id(
    stream: io.StringIO, mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    configure("INFO", "json", stream)
    async with make_gateway(mosquitto) as gw, device(mosquitto, prefix, "dev-a") as dev:
        await dev.publish("alarm", {"ref": "r", "ts": 1, "type": "alien"})
        assert (await dev.wait_ack("r"))["status"] == "rejected"
        async with asyncio.timeout(10):
            while gw.ingest.rejected < 1:
                await asyncio.sleep(0.05)
    records = lines(stream)  # every line parses: nothing but JSON was written
    assert records
    rejected = [r for r in records if str(r["message"]).startswith("rejected device message")]
    assert rejected
    assert rejected[0]["device_id"] == "dev-a"
    assert rejected[0]["level"] == "WARNING"
