"""Keys → POSTs against a real control server: bodies, confirmations, read-only, demo."""

from __future__ import annotations

from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, DataTable, Input

from console.tui.actions import ACTIONS
from console.tui.app import EmbedopsApp
from console.tui.screens.dialogs import (
    AlertPicker,
    ConfirmDialog,
    RetuneDialog,
    TypedConfirmDialog,
    ValidateDialog,
)
from console.tui.screens.help import HelpScreen
from console.tui.screens.main import MainScreen
from console.tui.widgets.fleet_table import FleetTable
from tests.tui.conftest import AppFactory, wait_until
from tests.tui.static_supervisor import StaticSupervisor

ORDER = ["w1", "w2", "w3", "w4", "ext1"]


async def ready(pilot: Pilot[Any], app: EmbedopsApp) -> FleetTable:
    """Wait for the first snapshot to be on screen; return the fleet table."""
    await wait_until(pilot, lambda: app.snapshot is not None
                     and isinstance(app.screen, MainScreen)
                     and app.screen.query_one(FleetTable).row_count > 0, what="first snapshot")
    return app.screen.query_one(FleetTable)


async def select(pilot: Pilot[Any], app: EmbedopsApp, name: str) -> None:
    """Put the table cursor on worker `name`."""
    table = await ready(pilot, app)
    table.move_cursor(row=table.order.index(name))
    await pilot.pause()
    assert table.selected_name() == name


async def wait_posts(pilot: Pilot[Any], sup: StaticSupervisor, n: int) -> list[tuple[str, Any]]:
    """Wait until the server has received `n` action POSTs; return them."""
    await wait_until(pilot, lambda: len(sup.posted()) >= n, what=f"{n} POST(s)")
    return sup.posted()


async def settle(pilot: Pilot[Any], app: EmbedopsApp, polls: int = 2) -> None:
    """Let a few status polls go by (so anything that would be sent has been)."""
    start = app.polls
    await wait_until(pilot, lambda: app.polls >= start + polls, what="status polls")


# ---------------------------------------------------------------------------- simple keys


async def test_drain_key_posts_drain_for_selected_worker(make_app: AppFactory,
                                                         supervisor: StaticSupervisor) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w1")
        await pilot.press("d")
        assert await wait_posts(pilot, supervisor, 1) == [("/v1/workers/w1/drain", {})]


async def test_drain_key_on_draining_worker_undrains(make_app: AppFactory,
                                                     supervisor: StaticSupervisor) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w2")
        await pilot.press("d")
        assert await wait_posts(pilot, supervisor, 1) == [("/v1/workers/w2/undrain", {})]


async def test_drain_of_last_routed_worker_asks_first(make_app: AppFactory,
                                                      supervisor: StaticSupervisor) -> None:
    def only_w1_routed(s: dict[str, Any]) -> None:
        for w in s["workers"]:
            w["routed"] = w["name"] == "w1"
    supervisor.mutate(only_w1_routed)
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w1")
        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog), what="dialog")
        await pilot.press("escape")
        await settle(pilot, app)
        assert supervisor.posted() == []
        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog), what="dialog")
        await pilot.click("#confirm")
        assert await wait_posts(pilot, supervisor, 1) == [("/v1/workers/w1/drain", {})]


async def test_restart_confirmed_with_y(make_app: AppFactory,
                                        supervisor: StaticSupervisor) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w3")
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog), what="dialog")
        assert app.screen.focused is not None and app.screen.focused.id == "cancel"
        await pilot.press("y")
        assert await wait_posts(pilot, supervisor, 1) == [("/v1/workers/w3/restart", {})]


async def test_kill_needs_the_kill_button_and_sends_confirm(make_app: AppFactory,
                                                            supervisor: StaticSupervisor) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w1")
        await pilot.press("k")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog), what="dialog")
        assert app.screen.focused is not None and app.screen.focused.id == "cancel"
        await pilot.press("y")  # no shortcut for kill: y does nothing
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.click("#confirm")
        assert await wait_posts(pilot, supervisor, 1) == [
            ("/v1/workers/w1/kill", {"confirm": True})]


async def test_retune_sends_validated_value(make_app: AppFactory,
                                            supervisor: StaticSupervisor) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w1")
        await pilot.press("m")
        await wait_until(pilot, lambda: isinstance(app.screen, RetuneDialog), what="dialog")
        box = app.screen.query_one("#value", Input)
        assert box.value == "0.42"  # the current value is offered
        for bad in ("1.5", "0", "1", "abc", "0.42", "-0.2"):
            box.value = bad
            await pilot.pause()
            assert app.screen.query_one("#confirm", Button).disabled, bad
            await pilot.press("enter")
            await pilot.pause()
            assert isinstance(app.screen, RetuneDialog), bad
        assert supervisor.posted() == []
        box.value = "0.5"
        await pilot.pause()
        assert not app.screen.query_one("#confirm", Button).disabled
        await pilot.press("enter")
        assert await wait_posts(pilot, supervisor, 1) == [
            ("/v1/workers/w1/retune", {"mem_fraction_static": 0.5})]


async def test_cuda_graph_toggle_shows_warning_and_sends_new_value(
        make_app: AppFactory, supervisor: StaticSupervisor) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w3")  # cuda_graph off, with an "ignored" warning
        await pilot.press("g")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog), what="dialog")
        body = str(app.screen.query_one(".dialog-body").render())
        assert "no effect for embedding models" in body
        await pilot.click("#confirm")
        assert await wait_posts(pilot, supervisor, 1) == [
            ("/v1/workers/w3/retune", {"cuda_graph": True})]


async def test_rollout_needs_the_fleet_name_typed(make_app: AppFactory,
                                                  supervisor: StaticSupervisor) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot, app)
        await pilot.press("R")
        await wait_until(pilot, lambda: isinstance(app.screen, TypedConfirmDialog),
                         what="dialog")
        await pilot.press(*"dem", "enter")
        await pilot.pause()
        assert isinstance(app.screen, TypedConfirmDialog)
        assert app.screen.query_one("#confirm", Button).disabled
        assert supervisor.posted() == []
        await pilot.press("o", "enter")
        assert await wait_posts(pilot, supervisor, 1) == [("/v1/rollout", {})]


async def test_adopt_posts_the_pid_of_the_unmanaged_worker(
        make_app: AppFactory, supervisor: StaticSupervisor) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w1")  # managed: refused locally
        await pilot.press("a")
        await settle(pilot, app)
        assert not isinstance(app.screen, ConfirmDialog)
        await select(pilot, app, "ext1")
        await pilot.press("a")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog), what="dialog")
        await pilot.click("#confirm")
        assert await wait_posts(pilot, supervisor, 1) == [("/v1/adopt", {"pid": 5555})]


async def test_validate_posts_target_and_shows_checks(make_app: AppFactory,
                                                      supervisor: StaticSupervisor) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w3")
        await pilot.press("v")
        await wait_until(pilot, lambda: isinstance(app.screen, ValidateDialog), what="dialog")
        dialog = app.screen
        assert isinstance(dialog, ValidateDialog)
        await wait_until(pilot, lambda: dialog.checks is not None, what="check results")
        assert supervisor.posted() == [("/v1/validate", {"target": "w3"})]
        assert dialog.checks is not None
        assert [(c.name, c.ok) for c in dialog.checks] == [
            ("bilingual", True), ("long_text_32k", True), ("empty_input_400", False),
            ("dimensions", True)]
        assert dialog.query_one("#checks", DataTable).row_count == 4
        assert "3/4 checks passed" in str(dialog.query_one("#status").render())
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)


async def test_silence_preselects_the_selected_workers_alert(
        make_app: AppFactory, supervisor: StaticSupervisor) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w4")
        await pilot.press("s")
        await wait_until(pilot, lambda: isinstance(app.screen, AlertPicker), what="picker")
        await pilot.press("enter")
        posts = await wait_posts(pilot, supervisor, 1)
        # the key holds a '/', sent escaped as one path segment
        assert posts == [("/v1/alerts/crash_loop%2Fw4/silence", {"for_s": 1800})]


DEMO_FAULTS = [
    ("H", {"hang": True}), ("C", {"crash_after_s": 0}), ("L", {"leak_mib_s": 200}),
    ("S", {"slow_ms": 1500}), ("E", {"error_rate": 1.0}), ("X", {"clear": True}),
]


async def test_demo_keys_inject_faults(make_app: AppFactory,
                                       supervisor: StaticSupervisor) -> None:
    app = make_app(demo=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w1")
        await wait_until(pilot, lambda: app.demo_active, what="demo keys")
        for i, (key, _body) in enumerate(DEMO_FAULTS, start=1):
            await pilot.press(key)
            await wait_posts(pilot, supervisor, i)
        assert supervisor.posted() == [("/v1/sim/w1/fault", body) for _, body in DEMO_FAULTS]


async def test_demo_keys_not_bound_without_demo_or_on_real_engine(
        make_app: AppFactory, supervisor: StaticSupervisor) -> None:
    app = make_app(demo=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w1")
        assert not {"H", "C", "L", "S", "E", "X"} & app.bound_keys()
        await pilot.press("C", "L")
        await settle(pilot, app)
    supervisor.mutate(lambda s: s.update(engine="sglang"))
    app = make_app(demo=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w1")
        assert not app.demo_active
        assert "C" not in app.bound_keys()
        await pilot.press("C")
        await settle(pilot, app)
    assert supervisor.posted() == []


# ---------------------------------------------------------------------------- cancelling


@pytest.mark.parametrize("key,dialog,cancel", [
    ("r", ConfirmDialog, ["enter"]),          # Enter hits the focused Cancel
    ("r", ConfirmDialog, ["escape"]),
    ("k", ConfirmDialog, ["enter"]),
    ("k", ConfirmDialog, ["n"]),
    ("g", ConfirmDialog, ["escape"]),
    ("m", RetuneDialog, ["escape"]),
    ("R", TypedConfirmDialog, ["escape"]),
    ("s", AlertPicker, ["escape"]),
])
async def test_cancelled_confirmations_send_nothing(
        make_app: AppFactory, supervisor: StaticSupervisor, key: str, dialog: type,
        cancel: list[str]) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w3")
        await pilot.press(key)
        await wait_until(pilot, lambda: isinstance(app.screen, dialog), what="dialog")
        await pilot.press(*cancel)
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), what="dialog closed")
        await settle(pilot, app)
        assert supervisor.posted() == []


async def test_adopt_cancelled_sends_nothing(make_app: AppFactory,
                                             supervisor: StaticSupervisor) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "ext1")
        await pilot.press("a")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmDialog), what="dialog")
        await pilot.click("#cancel")
        await settle(pilot, app)
        assert supervisor.posted() == []


# ---------------------------------------------------------------------------- read-only


WRITE_KEYS = [a.key for a in ACTIONS if a.writes]


async def test_read_only_binds_no_write_key_and_sends_nothing(
        make_app: AppFactory, supervisor: StaticSupervisor) -> None:
    app = make_app(read_only=True, demo=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w3")
        assert not set(WRITE_KEYS) & app.bound_keys()
        assert {"q", "question_mark", "slash", "l", "t"} <= app.bound_keys()
        for key in WRITE_KEYS:
            await pilot.press(key)
            await pilot.pause()
            assert isinstance(app.screen, MainScreen), key
        await settle(pilot, app)
        assert supervisor.posted() == []
        footer_keys = {b.binding.key for b in app.screen.active_bindings.values()
                       if b.binding.show}
        assert "d" not in footer_keys and "q" in footer_keys


async def test_read_only_reported_by_supervisor_unbinds_write_keys(
        make_app: AppFactory, supervisor: StaticSupervisor) -> None:
    supervisor.mutate(lambda s: s.update(read_only=True))
    app = make_app()
    assert "d" in app.bound_keys()  # before the supervisor said so
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w1")
        assert app.read_only
        assert "d" not in app.bound_keys()
        await pilot.press("d", "r")
        await settle(pilot, app)
        assert supervisor.posted() == []
        assert isinstance(app.screen, MainScreen)


async def test_help_lists_every_key_and_marks_read_only(make_app: AppFactory) -> None:
    app = make_app(read_only=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot, app)
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        text = str(app.screen.query_one("#help-text").render())
        for spec in ACTIONS:
            assert spec.help.split(":")[0][:30] in text, spec.id
        assert "off: read-only" in text
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)


# ---------------------------------------------------------------------------- palette, quit


async def test_palette_runs_the_same_actions(make_app: AppFactory,
                                             supervisor: StaticSupervisor) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w1")
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        await pilot.press(*"Drain w3")
        await pilot.pause(0.5)
        await pilot.press("enter")
        assert await wait_posts(pilot, supervisor, 1) == [("/v1/workers/w3/drain", {})]


async def test_quit_leaves_the_fleet_alone(make_app: AppFactory,
                                           supervisor: StaticSupervisor) -> None:
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await ready(pilot, app)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0
    assert supervisor.posted() == []
