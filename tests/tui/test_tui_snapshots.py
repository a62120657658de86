"""SVG snapshots of the main screen, the worker detail and a dialog, in the dark and the
ANSI themes, at 120×40 and 80×24. Data and clock are frozen, so the pictures are stable.

Update after an intended change: ``.venv/bin/python -m pytest tests/tui/test_tui_snapshots.py
--snapshot-update`` and review the SVGs in tests/tui/__snapshots__/.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from textual.pilot import Pilot

from console.tui.screens.detail import DetailScreen
from console.tui.screens.dialogs import ConfirmDialog
from console.tui.screens.main import MainScreen
from console.tui.widgets.fleet_table import FleetTable
from console.tui.widgets.log_tail import LogTail
from console.tui.widgets.plot import Plot
from tests.tui.conftest import AppFactory, screen_text, wait_until

SIZES = [pytest.param((120, 40), id="120x40"), pytest.param((80, 24), id="80x24")]
THEMES = ["embedops-dark", "embedops-ansi"]
SLOW = 3600.0  # no refresh during the picture: the first snapshot is the one shown


async def _main_ready(pilot: Pilot[Any]) -> None:
    app = pilot.app
    await wait_until(pilot, lambda: isinstance(app.screen, MainScreen)
                     and app.screen.query_one(FleetTable).row_count == 5, what="fleet")
    await pilot.pause()


async def _detail_ready(pilot: Pilot[Any]) -> None:
    await _main_ready(pilot)
    app = pilot.app
    table = app.screen.query_one(FleetTable)
    table.move_cursor(row=table.order.index("w3"))
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(app.screen, DetailScreen), what="detail")
    screen = app.screen
    await wait_until(pilot, lambda: all(p.data is not None for p in screen.query(Plot)),
                     what="plots")
    tail = screen.query_one(LogTail)
    await wait_until(pilot, lambda: len(tail.visible_lines()) == 30, what="log lines")
    await pilot.pause(0.3)


async def _dialog_ready(pilot: Pilot[Any]) -> None:
    await _main_ready(pilot)
    app = pilot.app
    table = app.screen.query_one(FleetTable)
    table.move_cursor(row=table.order.index("w3"))
    await pilot.press("r")
    await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog), what="dialog")
    await pilot.pause()


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("size", SIZES)
def test_main_screen(snap_compare: Any, make_app: AppFactory, theme: str,
                     size: tuple[int, int]) -> None:
    app = make_app(theme=theme, refresh_s=SLOW)
    assert snap_compare(app, terminal_size=size, run_before=_main_ready)


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("size", SIZES)
def test_detail_screen(snap_compare: Any, make_app: AppFactory, theme: str,
                       size: tuple[int, int]) -> None:
    app = make_app(theme=theme, refresh_s=SLOW)
    assert snap_compare(app, terminal_size=size, run_before=_detail_ready)


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("size", SIZES)
def test_restart_dialog(snap_compare: Any, make_app: AppFactory, theme: str,
                        size: tuple[int, int]) -> None:
    app = make_app(theme=theme, refresh_s=SLOW)
    assert snap_compare(app, terminal_size=size, run_before=_dialog_ready)


ESSENTIAL_80x24 = {
    "main": [
        # every worker, its state (what a running action is doing), P95 and GPU memory
        r"w1 +● ready .* 14\.0 .* 34000", r"w2 +▼ draining: 3 in", r"w3 +! degraded .* 1412 .* 75800",
        r"w4 +◌ backoff 8s", r"ext1 +◇ unmanaged",
        r"GPU0 .* 70000/81559 MiB", r"GPU1 .* 78100/81559 MiB",  # the GPU panel
        r"▲ FIRING +gpu_mem_and_p95 w3", r"△ pending crash_loop w4",  # the alerts
        r"embedops demo · .* P95 15\.2 ms",  # the header: fleet, balancer, fleet P95
        r"^\? Help q Quit d Drain r Restart",  # help and quit always in the footer
    ],
    "detail": [
        r"w3 ! degraded · GPU1", r"P95 latency \(ms\)", r"throughput \(req/s\)",
        r"full in ~2\.7h",  # the leak horizon survives the narrow plot
        r"⚠ --disable-cuda-graph has no", r"! mem_fraction_static: config 0\.42",
        r"log w3 · live", r"CUDA out of memory|batch=\d",
    ],
    "dialog": [r"Restart w3\?", r"Restart \(y\)", r"Cancel \(esc\)", r"In-flight requests \(1\)"],
}


@pytest.mark.parametrize("screen", list(ESSENTIAL_80x24))
async def test_nothing_essential_cut_at_80x24(make_app: AppFactory, screen: str) -> None:
    app = make_app(theme="embedops-ansi", refresh_s=SLOW)
    ready = {"main": _main_ready, "detail": _detail_ready, "dialog": _dialog_ready}[screen]
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        text = screen_text(app)
    missing = [p for p in ESSENTIAL_80x24[screen] if not re.search(p, text, re.MULTILINE)]
    assert not missing, f"{missing} not on the 80x24 {screen} screen:\n{text}"
