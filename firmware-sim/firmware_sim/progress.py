"""Live progress display of a running fleet (rich), for ``trygg sim``."""

from __future__ import annotations

import asyncio
from typing import NoReturn

from rich.console import Console
from rich.live import Live
from rich.table import Table

from .fleet import Fleet, FleetStats

# Twice a second is smooth enough for people and costs nothing next to the fleet itself.
REFRESH_S = 0.5


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def render(stats: FleetStats, elapsed: float, duration: float | None) -> Table:
    """One table: devices, messages, alarms (sent/acked/pending) and ack latency."""
    horizon = f" / {duration:.0f} s" if duration else ""
    table = Table(title=f"trygg sim  {elapsed:.0f} s{horizon}", show_header=False,
                  expand=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("devices alive / total", f"{stats.alive} / {stats.devices}"),
        ("connections up / total", f"{stats.connected} / {stats.connections}"),
        ("heartbeats / telemetry / status",
         f"{stats.heartbeats} / {stats.telemetry} / {stats.status}"),
        ("alarms raised", str(stats.alarms_raised)),
        ("alarm sends (resends)", f"{stats.alarm_sends} ({stats.resends})"),
        ("acked / refused / pending",
         f"{stats.alarms_acked} / {stats.alarms_refused} / {stats.alarms_pending}"),
        ("ack latency p50 / p90 / p99",
         f"{_ms(stats.latency_p50_s)} / {_ms(stats.latency_p90_s)} / {_ms(stats.latency_p99_s)}"),
        ("max latency", _ms(stats.latency_max_s)),
        ("commands / malformed / dropped",
         f"{stats.commands} / {stats.malformed} / {stats.dropped}"),
        ("reconnects", str(stats.reconnects)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


async def show_progress(fleet: Fleet, console: Console, duration: float | None) -> NoReturn:
    """Redraw the table every ``REFRESH_S`` until cancelled."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    with Live(render(fleet.stats(), 0.0, duration), console=console, auto_refresh=False,
              transient=False) as live:
        while True:
            await asyncio.sleep(REFRESH_S)
            live.update(render(fleet.stats(), loop.time() - start, duration), refresh=True)
