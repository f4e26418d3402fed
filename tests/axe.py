"""axe-core in the browser tests: inject the npm package's script and collect violations.

The package is installed into ``tests/node_modules`` from ``tests/package.json`` by
``scripts/test`` (``npm ci --prefix tests``); a test run without it installs it the same way.
The pages' CSP allows only same-origin scripts, so the script is not added as a tag: it is
evaluated through the DevTools protocol, which the CSP does not govern.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page

TESTS = Path(__file__).resolve().parent
AXE = TESTS / "node_modules" / "axe-core" / "axe.min.js"
# Findings that fail a test. Moderate and minor ones are reported by axe but left to review.
FAILING = frozenset({"serious", "critical"})


@cache
def axe_source() -> str:
    """The axe-core script, installed from the npm registry if it is not there yet."""
    if not AXE.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("axe-core needs npm (apt-get install npm; scripts/test does it)")
        subprocess.run([npm, "ci", "--prefix", str(TESTS), "--no-audit", "--no-fund",
                        "--loglevel=error"], check=True, timeout=300)
    return AXE.read_text(encoding="utf-8")


async def violations(page: Page, *, include: str | None = None) -> list[dict[str, Any]]:
    """Serious and critical axe findings on the page as it is now (or within ``include``)."""
    if not await page.evaluate("() => typeof window.axe === 'object'"):
        await page.evaluate(axe_source() + "\n;true")
    found: list[dict[str, Any]] = await page.evaluate(
        """async (include) => {
            const result = await axe.run(include ? document.querySelector(include) : document,
                                         { resultTypes: ["violations"] });
            return result.violations.map((v) => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.map((n) => ({ target: n.target.join(" "),
                                            summary: n.failureSummary })),
            }));
        }""",
        include,
    )
    return [v for v in found if v["impact"] in FAILING]


async def assert_accessible(page: Page, where: str, *, include: str | None = None) -> None:
    """Fail with axe's own words if the page has a serious or critical finding."""
    found = await violations(page, include=include)
    assert not found, f"axe on {where}: " + "; ".join(
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']]}"
        for v in found)
