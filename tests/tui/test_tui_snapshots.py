"""SVG snapshots of the main screen, the worker detail and a dialog, in the dark and the
ANSI themes, at 120×40 and 80×24. Data and clock are frozen, so the pictures are stable.

Update after an intended change: ``.venv/bin/python -m pytest tests/tui/test_tui_snapshots.py
--snapshot-update`` and review the SVGs in tests/tui/__snapshots__/.
"""

from __future__ import annotations

from typing import Any

import pytest
from textual.pilot import Pilot

from console.tui.screens.detail import DetailScreen
from console.tui.screens.dialogs import ConfirmDialog
from console.tui.screens.main import MainScreen
from console.tui.widgets.fleet_table import FleetTable
from console.tui.widgets.log_tail import LogTail
from console.tui.widgets.plot import Plot
from tests.tui.conftest import AppFactory, wait_until

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
