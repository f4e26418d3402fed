"""A newcomer's first ten minutes: the README's commands, declared dependencies, the demo."""

from __future__ import annotations

import ast
import re
import socket
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import httpx
import pytest

from alarms.model import EscalationKind
from gateway.cli import choose_port
from gateway.config import EscalationSettings
from gateway.demo import FIRST, LAST, demo_name, print_summary
from gateway.org import OrgStore
from tests.conftest import GatewayFactory

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("alarms", "devices", "gateway", "firmware-sim/firmware_sim", "dashboards")
FIRST_PARTY = {"alarms", "devices", "gateway", "firmware_sim", "dashboards", "tests"}


def _sh_blocks(markdown: str) -> list[str]:
    return [b.strip() for b in re.findall(r"^```sh\n(.*?)^```", markdown, re.M | re.S)]


def _commands(script: Path) -> list[str]:
    return [line.strip() for line in script.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_the_readme_commands() -> None:
    """No drift: CI runs the README's demo command (via scripts/newcomer) and its test command."""
    blocks = _sh_blocks((ROOT / "README.md").read_text())
    assert len(blocks) == 2, "the README has exactly two set-up commands"
    demo, tests = blocks
    assert "pip install -e ." in demo and "trygg demo" in demo
    assert "[test]" not in demo, "the first command installs no test extras"
    ci = _commands(ROOT / ".ci" / "run")
    assert "bash scripts/newcomer" in ci
    assert tests in ci, "CI calls the README's test command exactly"
    assert ci.index("bash scripts/newcomer") < ci.index(tests)
    # scripts/newcomer runs the README's first block itself rather than a copy of it.
    newcomer = (ROOT / "scripts" / "newcomer").read_text()
    assert "README.md" in newcomer and "```sh" in newcomer


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level modules imported anywhere in the shipped packages (lazy imports included)."""
    stdlib = set(sys.stdlib_module_names)
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top not in stdlib and top not in FIRST_PARTY:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_module_is_a_declared_dependency() -> None:
    """`pip install -e .` (no extras) must bring everything the gateway imports at run time."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        _normalise(re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0])
        for spec in project["dependencies"]
    }
    providers = packages_distributions()
    missing = {}
    for module, where in _third_party_imports().items():
        distributions = {_normalise(d) for d in providers.get(module, [])}
        if not distributions & declared:
            missing[module] = sorted(where)
    assert not missing, f"imported but not declared in [project] dependencies: {missing}"


def test_demo_names_are_unique() -> None:
    names = [demo_name(i) for i in range(len(FIRST) * len(LAST))]
    assert len(set(names)) == len(names)


def test_demo_summary_lists_every_url() -> None:
    urls = {key: f"http://x/{key}" for key in
            ("app", "console", "ops", "api", "docs", "redoc", "metrics", "healthz", "mqtt")}
    text = print_summary({"urls": urls, "mqtt": {"prefix": "trygg/v1"}, "staff": [],
                          "teams": [], "recipients": [], "devices": []})
    for key in ("app", "console", "ops", "docs", "redoc", "metrics", "healthz", "mqtt"):
        assert urls[key] in text


def test_no_centre_step_without_an_alarm_centre(tmp_path: Path) -> None:
    """An unconfigured centre is not a ladder step (no escalation to nobody, no warnings)."""
    org = OrgStore(tmp_path / "org.sqlite3")
    try:
        without = org.directory(EscalationSettings()).default_policy.ladder
        with_centre = org.directory(
            EscalationSettings(centre_url="http://127.0.0.1:9/centre")).default_policy.ladder
    finally:
        org.close()
    assert EscalationKind.CENTRE not in {step.kind for step in without}
    assert with_centre[-1].kind is EscalationKind.CENTRE


def _listening() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


def test_a_busy_default_port_is_replaced_by_a_free_one(capsys: pytest.CaptureFixture[str]) -> None:
    busy, port = _listening()
    with busy:
        chosen = choose_port(None, port, "--mqtt-port")
    assert chosen != port
    assert f"Port {port} is in use; using {chosen}" in capsys.readouterr().out


def test_a_busy_port_given_by_flag_is_one_clear_line(tmp_path: Path) -> None:
    busy, port = _listening()
    with busy:
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "demo", "--mqtt-port", str(port),
             "--data-dir", str(tmp_path), "--duration", "1"],
            capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
        )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(port) in lines[0] and "--mqtt-port" in lines[0]


async def test_api_docs_load_nothing_from_elsewhere(
    make_gateway: GatewayFactory, embedded_broker: tuple[str, int]
) -> None:
    """/docs and /redoc reference only this gateway's own files, and each of them loads."""
    async with make_gateway(embedded_broker) as gw:
        base = f"http://127.0.0.1:{gw.http_port}"
        async with httpx.AsyncClient(base_url=base) as client:
            for page in ("/docs", "/redoc"):
                answer = await client.get(page)
                assert answer.status_code == 200
                assert "cdn." not in answer.text and "https://" not in answer.text
                assets = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", answer.text)
                assert assets, f"{page} references no assets"
                for asset in assets:
                    assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
                    assert (await client.get(asset)).status_code == 200, asset
                assert "'unsafe-inline'" in answer.headers["content-security-policy"]
                assert "http" not in answer.headers["content-security-policy"]
