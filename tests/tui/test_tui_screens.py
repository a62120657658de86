"""Screens against a real control server: table updates, filter, themes, detail, logs,
timeline, the unreachable-supervisor banner, announcements, rendering paused by dialogs."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.style import Style
from textual.widgets import DataTable, Input

from console.tui.screens.detail import DetailScreen
from console.tui.screens.dialogs import ConfirmDialog
from console.tui.screens.logs import LogsScreen
from console.tui.screens.main import MainScreen
from console.tui.screens.timeline import TimelineScreen
from console.tui.widgets.fleet_table import FleetTable
from console.tui.widgets.log_tail import LogTail
from console.tui.widgets.panels import AlertsStrip, Banner, GpuPanel
from console.tui.widgets.plot import Plot
from tests.tui.conftest import AppFactory, wait_until
from tests.tui.static_supervisor import T0, StaticSupervisor, log_lines
from tests.tui.test_tui_actions import ORDER, ready, select, settle


def _set(name: str, **values: Any) -> Callable[[dict[str, Any]], None]:
    """A snapshot mutation setting `values` on worker `name`."""
    def change(s: dict[str, Any]) -> None:
        for w in s["workers"]:
            if w["name"] == name:
                w.update(values)
    return change


# ---------------------------------------------------------------------------- table


async def test_table_shows_every_worker_with_symbol_and_state(make_app: AppFactory) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        table = await ready(pilot, app)
        assert table.order == ORDER
        assert table.cell_text("w1", "state") == "● ready"
        assert table.cell_text("w2", "state") == "▼ draining: 3 in flight"  # action progress
        assert table.cell_text("w3", "state") == "! degraded"
        assert table.cell_text("w4", "state") == "◌ backoff 8s"
        assert table.cell_text("ext1", "state") == "◇ unmanaged"
        assert table.cell_text("w3", "p95") == "1412"
        assert table.cell_text("w4", "p95") == "–"  # unknown, not 0
        assert table.cell_text("w3", "mem_fraction") == "0.40*"  # drift marked
        header = str(app.screen.query_one("#header").render())
        assert "demo" in header and "sglang-router" in header and "15.2" in header
        gpus = str(app.screen.query_one(GpuPanel).render())
        assert "70000/81559 MiB" in gpus and "w3 74.0G" in gpus
        alerts = str(app.screen.query_one(AlertsStrip).render())
        assert "FIRING" in alerts and "gpu_mem_and_p95 w3" in alerts and "(6m12s)" in alerts
        assert "pending" in alerts and "(45s)" in alerts


async def test_narrow_terminal_keeps_the_essential_columns(make_app: AppFactory) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        table = await ready(pilot, app)
        keys = table.column_keys
        assert {"name", "state", "p95", "gpu_mib"} <= set(keys)
        assert "pid" not in keys and "port" not in keys
        assert sum(c.get_render_width(table) for c in table.columns.values()) <= 80
        await pilot.resize_terminal(200, 40)
        await wait_until(pilot, lambda: "pid" in table.column_keys, what="wide columns")
        assert {"managed", "routed", "cuda_graph", "uptime", "port"} <= set(table.column_keys)


async def test_cursor_stays_on_its_worker_across_refreshes(
        make_app: AppFactory, supervisor: StaticSupervisor) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w3")
        table = app.screen.query_one(FleetTable)
        assert table.cursor_row == 2
        # values change: cells updated in place, no rebuild, cursor untouched
        supervisor.mutate(_set("w3", p95_ms=99.5))
        supervisor.mutate(_set("w1", state="degraded"))
        await wait_until(pilot, lambda: table.cell_text("w3", "p95") == "99.5", what="new P95")
        assert table.cell_text("w1", "state") == "! degraded"
        assert table.cursor_row == 2 and table.selected_name() == "w3"
        # order changes: rows rebuilt, cursor follows w3
        supervisor.mutate(lambda s: s["workers"].reverse())
        await wait_until(pilot, lambda: table.order == ORDER[::-1], what="reversed order")
        assert table.selected_name() == "w3"
        assert table.cursor_row == ORDER[::-1].index("w3")
        # a worker disappears: still on w3
        supervisor.mutate(lambda s: s["workers"].pop(0))
        await wait_until(pilot, lambda: "ext1" not in table.order, what="ext1 removed")
        assert table.selected_name() == "w3"


async def test_value_updates_do_not_rebuild_rows(make_app: AppFactory,
                                                 supervisor: StaticSupervisor) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w4")
        table = app.screen.query_one(FleetTable)
        rebuilds = 0
        original = table.clear

        def counting_clear(*args: Any, **kwargs: Any) -> Any:
            nonlocal rebuilds
            rebuilds += 1
            return original(*args, **kwargs)

        table.clear = counting_clear  # type: ignore[method-assign]
        def shows(text: str) -> Callable[[], bool]:
            return lambda: table.cell_text("w1", "rps") == text

        for i in range(3):
            supervisor.mutate(_set("w1", rps=float(20 + i)))
            await wait_until(pilot, shows(f"{20 + i}.0"), what="new rps")
        assert rebuilds == 0
        assert table.selected_name() == "w4"


async def test_filter_by_name_and_state(make_app: AppFactory) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        table = await ready(pilot, app)
        await pilot.press("slash")
        box = app.screen.query_one("#filter", Input)
        assert box.has_focus
        await pilot.press(*"w3")
        await wait_until(pilot, lambda: table.order == ["w3"], what="filtered by name")
        box.value = "DRAIN"
        await wait_until(pilot, lambda: table.order == ["w2"], what="filtered by state")
        box.value = "back"
        await wait_until(pilot, lambda: table.order == ["w4"], what="filtered by state")
        await pilot.press("enter")  # keeps the filter, back to the table
        await settle(pilot, app)
        assert table.order == ["w4"] and table.has_focus
        await pilot.press("escape")
        await wait_until(pilot, lambda: table.order == ORDER, what="filter cleared")


# ---------------------------------------------------------------------------- themes


async def test_theme_key_cycles_and_is_remembered(make_app: AppFactory,
                                                  _private_config: Path) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot, app)
        assert app.theme == "embedops-dark"
        await pilot.press("t")
        assert app.theme == "embedops-light"
        await pilot.press("t")
        assert app.theme == "embedops-ansi"
        assert app.current_theme.ansi
        table = app.screen.query_one(FleetTable)
        # an ANSI theme draws states in ANSI colours (the terminal's own palette)
        await pilot.pause()
        style = table.get_row("w1")[table.column_keys.index("state")].style
        assert isinstance(style, Style)
        colour = style.color
        assert colour is not None and colour.name == "color(2)"  # ANSI green
    saved = json.loads((_private_config / "embedops" / "ui.json").read_text())
    assert saved["theme"] == "embedops-ansi"
    again = make_app()
    async with again.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert again.theme == "embedops-ansi"
    chosen = make_app(theme="light")  # the short name --theme takes
    async with chosen.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert chosen.theme == "embedops-light"
    unknown = make_app(theme="no-such-theme")
    async with unknown.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert unknown.theme == "embedops-light"  # the saved one, with a warning


# ---------------------------------------------------------------------------- detail, logs


async def test_detail_screen_shows_plots_argv_drift_events(make_app: AppFactory,
                                                           supervisor: StaticSupervisor) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w3")
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, DetailScreen), what="detail")
        screen = app.screen
        assert isinstance(screen, DetailScreen) and screen.worker_name == "w3"
        plots = {p.id: p for p in screen.query(Plot)}
        await wait_until(pilot, lambda: all(p.data is not None for p in plots.values()),
                         what="plot data")
        mem = plots["plot-mem"].data
        assert mem is not None and mem.trend is not None
        assert "leak +7200 MiB/h" in mem.title and "full in ~" in mem.title
        p95 = plots["plot-p95"].data
        assert p95 is not None and len(p95.ys) == 89  # two unknown points dropped
        assert p95.xs[-1] == 0.0 and p95.xs[0] == -15.0
        drawn = str(plots["plot-mem"].render())
        assert "GPU memory" in drawn and "⠀" not in drawn[:0]  # rendered by plotext
        assert any(ch in drawn for ch in "⡀⡄⡆⡇⣀⣄⣆⣇⣿")  # braille marks: a plotted line
        argv = str(screen.query_one("#detail-argv").render())
        assert "--mem-fraction-static 0.40 ≠ config 0.42" in argv
        assert "--api-key ****" in argv
        drift = str(screen.query_one("#detail-drift").render())
        assert "mem_fraction_static: config 0.42 → running 0.4" in drift
        warnings = str(screen.query_one("#detail-warnings").render())
        assert "no effect for embedding models" in warnings
        events = str(screen.query_one("#detail-events").render())
        assert "retune mem_fraction_static 0.42 → 0.40 ok" in events and "w4" not in events
        # worker keys act on the detail's worker
        await pilot.press("d")
        await wait_until(pilot, lambda: supervisor.posted() == [("/v1/workers/w3/drain", {})],
                         what="drain w3")
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), what="back")


async def test_detail_w_widens_the_plot_window(make_app: AppFactory,
                                               supervisor: StaticSupervisor) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w1")
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, DetailScreen), what="detail")
        p95 = app.screen.query_one("#plot-p95", Plot)
        await wait_until(pilot, lambda: p95.data is not None, what="plot data")
        assert p95.data is not None and p95.data.window_min == 15
        assert supervisor.series_requests[-1]["window_s"] == "900"
        assert "-10m" in str(p95.render())
        for window_s, minutes, tick in ((3600, 60, "-40m"), (10800, 180, "-2h"),
                                        (900, 15, "-10m")):
            await pilot.press("w")
            await wait_until(pilot, lambda m=minutes: p95.data is not None  # type: ignore[misc]
                             and p95.data.window_min == m, what=f"{minutes} min window")
            assert supervisor.series_requests[-1]["window_s"] == str(window_s)
            assert tick in str(p95.render())


async def test_log_tail_follows_pauses_and_searches(make_app: AppFactory,
                                                    supervisor: StaticSupervisor) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w1")
        await pilot.press("l")
        await wait_until(pilot, lambda: isinstance(app.screen, LogsScreen), what="logs")
        tail = app.screen.query_one(LogTail)
        await wait_until(pilot, lambda: len(tail.visible_lines()) == 30, what="initial lines")
        assert tail.visible_lines() == log_lines("w1")
        assert supervisor.log_requests[-1] == {"lines": "200", "follow": "1"}
        supervisor.push_log("fresh line one")
        await wait_until(pilot, lambda: tail.visible_lines()[-1] == "fresh line one",
                         what="followed line")
        await pilot.press("p")
        assert tail.paused
        supervisor.push_log("while paused")
        await wait_until(pilot, lambda: "while paused" in tail.buffer, what="buffered")
        await pilot.pause(0.4)
        assert "while paused" not in tail.visible_lines()
        await pilot.press("p")
        assert tail.visible_lines()[-1] == "while paused"
        await pilot.press("slash")
        await pilot.press(*"error")
        await wait_until(pilot, lambda: len(tail.visible_lines()) == 4, what="search")
        assert all("ERROR" in line for line in tail.visible_lines())
        supervisor.push_log("another ERROR arrives")
        supervisor.push_log("ok line")
        await wait_until(pilot, lambda: len(tail.visible_lines()) == 5, what="search live")
        await pilot.press("escape")  # closes the search
        await wait_until(pilot, lambda: len(tail.visible_lines()) == 34, what="search closed")
        assert isinstance(app.screen, LogsScreen)
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), what="back")
        await wait_until(pilot, lambda: supervisor.following() == 0, what="stream closed")


# ---------------------------------------------------------------------------- timeline


async def test_timeline_merges_audit_and_events_newest_first(make_app: AppFactory) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot, app)
        await pilot.press("e")
        await wait_until(pilot, lambda: isinstance(app.screen, TimelineScreen), what="timeline")
        screen = app.screen
        assert isinstance(screen, TimelineScreen)
        table = screen.query_one(DataTable)
        await wait_until(pilot, lambda: table.row_count == 6, what="rows")
        times = [r.time for r in screen.rows]
        assert times == sorted(times, reverse=True)
        sources = [(r.source, r.what, r.worker) for r in screen.rows]
        assert ("audit", "retune", "w3") in sources and ("event", "state", "w4") in sources
        audit = next(r for r in screen.rows if r.source == "audit" and r.what == "retune")
        assert "by oncall" in audit.detail and "0.42" in audit.detail and audit.outcome == "ok"
        await pilot.press("slash")
        await pilot.press(*"w4")
        await wait_until(pilot, lambda: table.row_count == 2, what="filtered")
        await pilot.press("escape")
        await wait_until(pilot, lambda: table.row_count == 6, what="unfiltered")
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), what="back")


# ---------------------------------------------------------------------------- robustness


async def test_unreachable_supervisor_shows_banner_and_keeps_data(
        make_app: AppFactory, supervisor: StaticSupervisor) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        table = await ready(pilot, app)
        banner = app.screen.query_one(Banner)
        assert not banner.display
        supervisor.stop()
        await wait_until(pilot, lambda: banner.display, what="banner")
        text = str(banner.render())
        assert "supervisor not answering — retrying" in text
        assert table.order == ORDER  # last data kept...
        assert app.screen.has_class("-stale")  # ...and greyed
        polls = app.polls
        await wait_until(pilot, lambda: app.polls >= polls + 3, what="retries")
        supervisor.restart()
        await wait_until(pilot, lambda: not banner.display, what="banner gone")
        assert not app.screen.has_class("-stale")


async def test_console_starts_without_a_supervisor(make_app: AppFactory,
                                                   supervisor: StaticSupervisor) -> None:
    supervisor.stop()
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        banner = app.screen.query_one(Banner)
        await wait_until(pilot, lambda: banner.display, what="banner")
        assert "no control socket" in str(banner.render())
        await pilot.press("d", "r", "enter")  # nothing to act on; must not crash
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)
        supervisor.restart()
        await wait_until(pilot, lambda: app.snapshot is not None, what="connected")


async def test_finished_action_is_announced_once(make_app: AppFactory,
                                                 supervisor: StaticSupervisor) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await ready(pilot, app)
        await settle(pilot, app)
        assert not [n for n in app._notifications if "drain ok" in n.message]

        def drained(s: dict[str, Any]) -> None:
            s["events"].insert(0, {"time": T0 + 1, "kind": "action", "worker": "w2",
                                   "message": "drain ok: 0 in flight (5.1 s)", "outcome": "ok"})
            for w in s["workers"]:
                if w["name"] == "w2":
                    w.update(state="drained", action=None)
        supervisor.mutate(drained)
        table = app.screen.query_one(FleetTable)
        await wait_until(pilot, lambda: table.cell_text("w2", "state") == "⏸ drained",
                         what="drained")
        await settle(pilot, app, polls=3)
        announced = [n for n in app._notifications if "drain ok" in n.message]
        assert len(announced) == 1 and announced[0].message.startswith("w2: ")


async def test_rendering_pauses_while_a_dialog_is_open(make_app: AppFactory,
                                                       supervisor: StaticSupervisor) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w1")
        table = app.screen.query_one(FleetTable)
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog), what="dialog")
        supervisor.mutate(_set("w1", p95_ms=77.7))
        await settle(pilot, app, polls=3)
        w1 = app.snapshot.worker("w1") if app.snapshot is not None else None
        assert w1 is not None and w1.p95_ms == 77.7
        assert table.cell_text("w1", "p95") == "14.0"  # not re-rendered under the dialog
        await pilot.press("escape")
        await wait_until(pilot, lambda: table.cell_text("w1", "p95") == "77.7",
                         what="rendered on resume")
        assert supervisor.posted() == []


async def test_console_exits_when_the_terminal_is_gone(make_app: AppFactory,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot, app)
        import console.tui.app as app_module

        real_open = os.open
        opened: list[str] = []

        def tty_present(path: str, flags: int, *args: Any) -> int:
            opened.append(path)
            return real_open(os.devnull, os.O_RDWR)

        monkeypatch.setattr(app_module.os, "open", tty_present)
        app._check_tty()
        await settle(pilot, app)
        assert opened == ["/dev/tty"] and app.return_code is None  # still running

        def tty_gone(path: str, flags: int, *args: Any) -> int:
            raise OSError(6, "No such device or address")

        monkeypatch.setattr(app_module.os, "open", tty_gone)
        app._check_tty()
        await pilot.pause()
    assert app.return_code == 0
