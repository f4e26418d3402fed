"""``trygg config check``: problems one per line, effective settings with secrets masked."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load
from gateway.configcheck import MASK, check, mask_credentials
from gateway.org import OrgStore
from tests.conftest import TEST_SECRET

SAFE = f'''
gateway_id = "gw1"
secret_key = "{TEST_SECRET}"
journal_dsn = "host=127.0.0.1 dbname=trygg user=gw password=hunter2-db"
[mqtt]
username = "gw1"
password = "hunter2-mqtt"
[influx]
url = "https://influx.example:8086"
token = "hunter2-influx"
'''


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trygg.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n{text}')
    return path


@pytest.fixture(autouse=True)
def _no_trygg_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("TRYGG_"):
            monkeypatch.delenv(name)


def test_a_safe_file_passes_and_prints_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, SAFE)
    assert main(["config", "check", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert 'mqtt.username = "gw1"' in out
    assert f'mqtt.password = "{MASK}"' in out
    assert f'secret_key = "{MASK}"' in out
    assert f'influx.token = "{MASK}"' in out
    assert f"password={MASK}" in out
    for secret in ("hunter2", TEST_SECRET):
        assert secret not in out


def test_unknown_keys_and_wrong_types_one_line_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, SAFE + '[http]\nprot = 8080\nport = "eighty"\n')
    monkeypatch.setenv("TRYGG_MQTT_PORT", "1884")  # one underscore: names no setting
    assert main(["config", "check", "--config", str(config)]) == 1
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert "http.prot: unknown key" in lines
    assert any(line.startswith("http.port: ") and "integer" in line for line in lines)
    assert any(line.startswith("TRYGG_MQTT_PORT: ") for line in lines)
    assert lines[-1] == f"3 problem(s) in {config}"
    assert "hunter2" not in out + err


def test_unsafe_production_settings_are_each_named(tmp_path: Path) -> None:
    config = write(tmp_path, '''
journal_dsn = "host=db.example dbname=trygg user=gw"
[mqtt]
host = "broker.example"
[http]
host = "0.0.0.0"
[influx]
url = "http://influx.example:8086"
''')
    result = check(config)
    assert result.settings is not None  # printed although it would not start
    where = [p.where for p in result.problems]
    assert where == ["secret_key", "mqtt.tls", "http.host", "journal_dsn", "influx.url"]


def test_a_weak_secret_and_short_tokens_are_both_reported(tmp_path: Path) -> None:
    config = write(tmp_path, 'secret_key = "short"\n[security]\naccess_ttl_s = 10\n')
    where = [p.where for p in check(config).problems]
    assert where == ["secret_key", "security.access_ttl_s"]


def test_the_environment_overrides_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path, 'secret_key = "changethis"\n')
    monkeypatch.setenv("TRYGG_SECRET_KEY", TEST_SECRET)
    assert check(config).ok
    monkeypatch.setenv("TRYGG_HTTP__PORT", "not-a-port")
    assert [p.where for p in check(config).problems] == ["http.port"]


def test_demo_data_and_demo_accounts_are_refused(tmp_path: Path) -> None:
    from gateway.demo import seed

    config = write(tmp_path, f'secret_key = "{TEST_SECRET}"\n')
    data = tmp_path / "data"
    data.mkdir()
    org = OrgStore(data / "org.sqlite3")
    seed(org, recipients=1)
    org.close()
    assert [p.where for p in check(config).problems] == ["data_dir"]
    (data / "demo.json").write_text("{}")
    (problem,) = check(config).problems
    assert "demo.json" in problem.message
    # The check read the organisation without writing to it.
    with sqlite3.connect(data / "org.sqlite3") as conn:
        assert conn.execute("SELECT count(*) FROM staff").fetchone()[0] > 0


def test_demo_mode_cannot_be_switched_on_by_the_file(tmp_path: Path) -> None:
    config = write(tmp_path, f'secret_key = "{TEST_SECRET}"\ndemo = true\n')
    (problem,) = check(config).problems
    assert "demo" in problem.message
    assert check(tmp_path / "missing.toml").problems[0].message.startswith("cannot be read")
    (tmp_path / "broken.toml").write_text("[mqtt\n")
    assert "not valid TOML" in check(tmp_path / "broken.toml").problems[0].message


def test_load_refuses_a_missing_file_and_reads_toml_with_pydantic_settings(
    tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.toml", demo=True)
    config = write(tmp_path, '[mqtt]\nport = 1999\n[[serial]]\nname = "a"\nurl = "loop://"\n')
    settings = load(config, demo=True)
    assert settings.mqtt.port == 1999
    assert [line.name for line in settings.serial] == ["a"]


@pytest.mark.parametrize(("text", "expected"), [
    ("host=db user=gw password=s3cret dbname=x", f"host=db user=gw password={MASK} dbname=x"),
    ("host=db password='with space' x=1", f"host=db password={MASK} x=1"),
    ("postgresql://gw:s3cret@db/trygg", f"postgresql://gw:{MASK}@db/trygg"),
    ("https://influx.example:8086/path", "https://influx.example:8086/path"),
])
def test_credentials_in_strings_are_masked(text: str, expected: str) -> None:
    assert mask_credentials(text) == expected
