"""Progress bars on long commands: drawn on a terminal, absent from pipes, files and journald."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.journal import SqliteJournal
from gateway.org import OrgStore
from gateway.privacy import ERASED_NAME
from gateway.progress import SILENT, progress
from tests.conftest import seed_small
from tests.test_orgfile import ORG


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_a_bar_is_drawn_only_on_a_terminal() -> None:
    pipe, terminal = io.StringIO(), Terminal()
    with progress("import", 3, stream=pipe) as tracker:
        assert tracker is SILENT
        tracker.advance()
    assert pipe.getvalue() == ""
    with progress("import", 3, stream=terminal) as tracker:
        tracker.describe("staff")
        tracker.advance(3)
    assert "staff" in terminal.getvalue()
    assert "\x1b[" in terminal.getvalue()


def noise(text: str) -> bool:
    """Carriage returns or escape codes: what a bar leaves in a log."""
    return "\r" in text or "\x1b" in text


def test_org_import_output_has_no_progress_noise_when_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "org.toml"
    path.write_text(ORG)
    assert main(["org", "import", str(path), "--data-dir", str(tmp_path / "data")]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert json.loads(out) == {"teams": 2, "staff": 2, "recipients": 1, "devices": 1,
                               "rosters": 1}
    assert not noise(out)


def test_org_import_draws_a_bar_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    path = tmp_path / "org.toml"
    path.write_text(ORG)
    assert main(["org", "import", str(path), "--data-dir", str(tmp_path / "data")]) == 0
    assert "import org.toml" in terminal.getvalue()
    out, _ = capsys.readouterr()
    assert not noise(out)  # the bar is on stderr; stdout stays the JSON


def make_data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    org = OrgStore(data / "org.sqlite3")
    seed_small(org)
    org.close()

    async def create_journal() -> None:
        async with SqliteJournal(data / "journal.sqlite3"):
            pass

    asyncio.run(create_journal())
    return data


def test_erase_from_the_command_line_is_quiet_audited_and_complete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_data_dir(tmp_path)
    assert main(["org", "erase", "r-a", "r-b", "--data-dir", str(data),
                 "--actor", "dpo"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert not noise(out)
    done = json.loads(out)
    assert [d["recipient_id"] for d in done] == ["r-a", "r-b"]
    assert done[0]["devices_unbound"] == ["dev-a"]
    org = OrgStore(data / "org.sqlite3")
    try:
        assert org.recipients["r-a"].name == ERASED_NAME
        assert org.recipients["r-a"].address == ""
        assert org.devices["dev-a"].recipient_id is None
        assert org.recipients["r-sim-000"].name == "Sim 0"
    finally:
        org.close()
    with sqlite3.connect(data / "audit.sqlite3") as conn:
        kinds = conn.execute("SELECT kind, actor, subject FROM audit").fetchall()
    assert ("privacy_erase", "dpo", "r-a") in kinds


def test_erase_refuses_everything_when_one_recipient_is_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_data_dir(tmp_path)
    assert main(["org", "erase", "r-a", "r-nobody", "--data-dir", str(data)]) == 1
    _, err = capsys.readouterr()
    assert err.strip() == "erasure refused, nothing erased: no such recipient: r-nobody"
    org = OrgStore(data / "org.sqlite3")
    try:
        assert org.recipients["r-a"].name == "Astrid A"
    finally:
        org.close()
    (data / "journal.sqlite3").unlink()
    assert main(["org", "erase", "r-a", "--data-dir", str(data)]) == 1
    assert "PostgreSQL" in capsys.readouterr().err


def test_erase_refuses_a_recipient_with_an_open_alarm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from alarms.model import AlarmType, Hop
    from alarms.records import AlarmOpened, HopAdded

    data = make_data_dir(tmp_path)

    async def open_alarm() -> None:
        async with SqliteJournal(data / "journal.sqlite3") as journal:
            await journal.append([
                AlarmOpened("alarm-1", "dev-b", "ref-1", AlarmType.MANUAL, 2, "r-b", "team-b",
                            1, None),
                HopAdded("alarm-1", Hop.RAISED, 1.0, "dev-b"),
                HopAdded("alarm-1", Hop.STORED, 1.0, "gateway"),
            ])

    asyncio.run(open_alarm())
    assert main(["org", "erase", "r-a", "r-b", "--data-dir", str(data)]) == 1
    assert capsys.readouterr().err.strip().endswith("open alarms, close them first: r-b")
