"""The console's keys against a REAL supervisor and sim fleet (no canned data).

One module-scoped `tests.chaos.fleet.Fleet` (in-process supervisor, real sim workers
behind a real sglang-router, real control socket) serves every test. Each key is
pressed through `Pilot` and the effect is read back from the supervisor itself
(``GET /v1/status`` from another client, the audit log, the sim worker's own fault
switches), never from what the console believes.

Read-only is checked at both layers: with ``--read-only`` the write keys are not
bound; and a console that connects as another user (uid ``nobody``, through a tiny
relay forked here that drops its rights before connecting) is told by the supervisor
that it is read-only, unbinds the keys by itself, and is refused (403) if it sends
anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import selectors
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from textual.pilot import Pilot
from textual.widgets import Button, DataTable, Input

import console.daemon
from console.api import install_routes
from console.control import ControlClient, ControlServer
from console.supervisor import Supervisor
from console.tui import data
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
from console.tui.screens.logs import LogsScreen
from console.tui.screens.main import MainScreen
from console.tui.widgets.fleet_table import FleetTable
from console.tui.widgets.log_tail import LogTail
from tests.chaos.fleet import Fleet, row
from tests.tui.conftest import wait_until

# restarts take seconds each, and much longer on a loaded box
pytestmark = pytest.mark.timeout(300)

NAMES = ["w1", "w2", "w3"]
NOBODY = 65534
REFRESH_S = 0.25
SETTLE_S = 90.0
"""Bound for anything the fleet does (restart, retune); generous for a loaded box."""

# A rule that is pending at once on every worker (it never fires within a test), so
# that `s` has something real to silence. remediation = "none": it never acts.
ALERT_RULE = """
[[alerts]]
name = "test_gpu_in_use"
when = [{ metric = "gpu_memory_pct", op = ">", value = 0 }]
for = "1h"
severity = "warning"
summary = "the test's always-pending rule"
remediation = "none"
"""


# ---------------------------------------------------------------------------- the fleet


def _relay_as_nobody(listener: socket.socket, upstream: str) -> int:
    """Fork a relay that accepts on `listener` and forwards each connection to
    `upstream`, connecting as uid nobody (the supervisor's SO_PEERCRED check then sees
    nobody). Only stdlib socket/select calls in the child (it is forked from a threaded
    process); it exits when its parent goes away. Returns the child's pid."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        while os.getppid() == parent:
            for key, _ in sel.select(timeout=1.0):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                if sock is listener:
                    a, _ = listener.accept()
                    b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    try:
                        b.connect(upstream)
                    except OSError:
                        a.close()
                        b.close()
                        continue
                    peers[a], peers[b] = b, a
                    sel.register(a, selectors.EVENT_READ)
                    sel.register(b, selectors.EVENT_READ)
                    continue
                other = peers.get(sock)
                if other is None:
                    continue
                try:
                    chunk = sock.recv(65536)
                    if chunk:
                        other.sendall(chunk)
                except OSError:
                    chunk = b""
                if not chunk:
                    for s in (sock, other):
                        sel.unregister(s)
                        peers.pop(s, None)
                        s.close()
    except BaseException:  # noqa: BLE001 - the child must never return into pytest
        code = 1
    finally:
        os._exit(code)


@dataclass
class Live:
    """The running fleet and the doors the tests use."""

    fleet: Fleet
    sup: Supervisor
    relay_path: Path
    """A socket whose connections reach the supervisor as uid nobody (read-only)."""

    def app(self, *, via_relay: bool = False, **opts: Any) -> EmbedopsApp:
        """A console on this fleet (as root, or as nobody through the relay)."""
        path = self.relay_path if via_relay else self.fleet.sd.socket_path
        opts.setdefault("refresh_s", REFRESH_S)
        opts.setdefault("remember_theme", False)
        return EmbedopsApp(ControlClient(path, timeout=10.0), close_client=True, **opts)

    async def status(self) -> dict[str, Any]:
        """The supervisor's own snapshot (off the app's loop)."""
        return await asyncio.to_thread(self.fleet.status)

    async def worker(self, name: str) -> dict[str, Any]:
        """One worker as the supervisor sees it."""
        return row(await self.status(), name)

    async def audit(self) -> list[dict[str, Any]]:
        """The audit log, newest first."""
        def read() -> list[dict[str, Any]]:
            with self.fleet.client() as c:
                return list(c.get("/v1/audit", params={"limit": 500})["entries"])
        return await asyncio.to_thread(read)

    async def sim_faults(self, name: str) -> dict[str, Any]:
        """The fault switches the sim worker itself reports."""
        port = next(d.port for d in self.fleet.defs if d.name == name)
        async with httpx.AsyncClient(timeout=5.0) as http:
            r = await http.get(f"http://127.0.0.1:{port}/_sim/faults")
        r.raise_for_status()
        return dict(r.json())

    async def wait(self, pilot: Pilot[Any], cond: Callable[[dict[str, Any]], Any], *,
                   what: str, timeout: float = SETTLE_S) -> dict[str, Any]:
        """Let the app run until the supervisor's snapshot satisfies `cond`."""
        deadline = time.monotonic() + timeout
        snap: dict[str, Any] = {}
        while time.monotonic() < deadline:
            snap = await self.status()
            if cond(snap):
                return snap
            await pilot.pause(0.2)
        rows = [(w["name"], w["state"], w["routed"], w.get("action")) for w in snap["workers"]]
        raise AssertionError(f"timed out after {timeout}s waiting for {what}: {rows}")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The fleet, plus a read-only door for uid nobody and the relay to it."""
    made: list[Supervisor] = []

    class Recorded(Supervisor):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            made.append(self)

    fleet = Fleet(tmp_path_factory.mktemp("tui-live"), 3, extra=ALERT_RULE)
    public = Path(tempfile.mkdtemp(prefix="eo-tui-"))  # traversable by nobody
    os.chmod(public, 0o711)
    relay_pid: int | None = None
    ro_server: ControlServer | None = None
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(console.daemon, "Supervisor", Recorded)
            fleet.start()
        assert len(made) == 1 and fleet._loop is not None
        # the same supervisor behind a second socket that admits nobody read-only
        ro_server = ControlServer(public / "ro" / "control.sock", read_only_uids={NOBODY})
        install_routes(ro_server, made[0])
        asyncio.run_coroutine_threadsafe(ro_server.start(), fleet._loop).result(15)
        relay_path = public / "relay.sock"
        listener.bind(str(relay_path))
        listener.listen(16)
        relay_pid = _relay_as_nobody(listener, str(ro_server.socket_path))
        yield Live(fleet, made[0], relay_path)
    finally:
        listener.close()
        if relay_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(relay_pid, signal.SIGKILL)  # our own forked child, by its pid
            os.waitpid(relay_pid, 0)
        if ro_server is not None and fleet.running and fleet._loop is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(ro_server.stop(), fleet._loop).result(15)
        fleet.close()
        shutil.rmtree(public, ignore_errors=True)


@pytest.fixture(autouse=True)
def all_routed(live: Live) -> None:
    """Each test starts from a healthy fleet."""
    live.fleet.wait_routed(NAMES, timeout_s=SETTLE_S)


# ---------------------------------------------------------------------------- helpers


async def table_of(pilot: Pilot[Any], app: EmbedopsApp) -> FleetTable:
    """The fleet table once the first snapshot is on screen."""
    await wait_until(pilot, lambda: app.snapshot is not None and isinstance(app.screen, MainScreen)
                     and set(NAMES) <= set(app.screen.query_one(FleetTable).order),
                     what="first snapshot", timeout=20)
    return app.screen.query_one(FleetTable)


async def select(pilot: Pilot[Any], app: EmbedopsApp, name: str) -> FleetTable:
    """Put the cursor on `name`."""
    table = await table_of(pilot, app)
    table.move_cursor(row=table.order.index(name))
    await pilot.pause()
    assert table.selected_name() == name
    return table


async def dialog(pilot: Pilot[Any], app: EmbedopsApp, kind: type) -> Any:
    """Wait for a dialog of `kind` to be on top; return it."""
    await wait_until(pilot, lambda: isinstance(app.screen, kind), what=kind.__name__)
    return app.screen


async def polls(pilot: Pilot[Any], app: EmbedopsApp, n: int = 3) -> None:
    """Let `n` status polls go by (whatever a key would have sent has been sent)."""
    start = app.polls
    await wait_until(pilot, lambda: app.polls >= start + n, what=f"{n} polls")


def routed(snap: dict[str, Any], name: str) -> bool:
    """`name` is ready (or degraded) and in the balancer."""
    r = row(snap, name)
    return r["state"] in ("ready", "degraded") and bool(r["routed"]) and r["action"] is None


def announced(app: EmbedopsApp, text: str) -> list[str]:
    """Notifications (toasts) that contain `text`."""
    return [n.message for n in app._notifications if text in n.message]


def identity(w: dict[str, Any]) -> tuple[Any, ...]:
    """What a restart or retune would change."""
    return (w["pid"], w["restarts"], w["mem_fraction_static"], w["cuda_graph"], w["state"])


def identities(snap: dict[str, Any]) -> list[tuple[Any, ...]]:
    """`identity` of each of the fleet's own workers."""
    return [identity(row(snap, n)) for n in NAMES]


def ours(names: list[str]) -> list[str]:
    """The fleet's own workers among `names` (the supervisor also lists SGLang servers
    it finds running on the box as unmanaged: other tests' sim workers)."""
    return [n for n in names if n in NAMES]


# ---------------------------------------------------------------------------- keys


async def test_d_drains_then_undrains_in_the_supervisor(live: Live) -> None:
    app = live.app()
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        table = await select(pilot, app, "w1")
        await pilot.press("d")
        await live.wait(pilot, lambda s: row(s, "w1")["state"] == "drained"
                        and not row(s, "w1")["routed"], what="w1 drained")
        await wait_until(pilot, lambda: "drained" in table.cell_text("w1", "state"),
                         what="drained on its row")
        await wait_until(pilot, lambda: bool(announced(app, "drained: out of the balancer")),
                         what="outcome announced")
        await pilot.press("d")  # on a drained worker: undrain
        await live.wait(pilot, lambda s: routed(s, "w1"), what="w1 back in the balancer")
        await wait_until(pilot, lambda: table.cell_text("w1", "state").endswith("ready"),
                         what="ready on its row")
    actions = [(e["action"], e["worker"], e["outcome"]) for e in await live.audit()]
    assert ("drain", "w1", "ok") in actions and ("undrain", "w1", "ok") in actions


async def test_r_and_k_cancelled_change_nothing_k_kills_r_restarts(live: Live) -> None:
    before = await live.worker("w3")
    app = live.app()
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        table = await select(pilot, app, "w3")
        for key, cancel in (("r", "enter"), ("r", "escape"), ("k", "enter"), ("k", "n")):
            await pilot.press(key)
            await dialog(pilot, app, ConfirmDialog)
            assert app.screen.focused is not None and app.screen.focused.id == "cancel", key
            if key == "k":
                await pilot.press("y")  # kill has no shortcut: still asking
                await pilot.pause()
                assert isinstance(app.screen, ConfirmDialog)
            await pilot.press(cancel)  # Enter hits the focused Cancel
            await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), what="closed")
        await polls(pilot, app)
        assert identity(await live.worker("w3")) == identity(before)

        await pilot.press("k")
        await dialog(pilot, app, ConfirmDialog)
        await pilot.click("#confirm")
        await live.wait(pilot, lambda s: row(s, "w3")["state"] == "stopped", what="w3 stopped")
        await wait_until(pilot, lambda: "stopped" in table.cell_text("w3", "state"),
                         what="stopped on its row")
        await wait_until(pilot, lambda: bool(announced(app, "killed")), what="kill announced")

        await pilot.press("r")
        await dialog(pilot, app, ConfirmDialog)
        await pilot.press("y")
        seen: set[str] = set()
        deadline = time.monotonic() + SETTLE_S
        while True:
            seen.add(table.cell_text("w3", "state"))
            snap = await live.status()
            if row(snap, "w3")["pid"] not in (None, before["pid"]) and routed(snap, "w3"):
                break
            assert time.monotonic() < deadline, row(snap, "w3")
            await pilot.pause(0.1)
        # the running action was visible on its row while it ran
        assert any(re.search(r"starting \d+:\d\d", s) for s in seen), seen
        await wait_until(pilot, lambda: bool(announced(app, "restarted: pid")),
                         what="restart outcome announced")
        assert table.selected_name() == "w3"


async def test_m_retunes_after_validation_and_g_toggles_cuda_graph(live: Live) -> None:
    w1, w2 = await live.worker("w1"), await live.worker("w2")
    assert w1["cuda_graph"] is not False
    app = live.app()
    async with app.run_test(size=(160, 40), notifications=True) as pilot:  # every column
        await select(pilot, app, "w2")
        await pilot.press("m")
        retune = await dialog(pilot, app, RetuneDialog)
        box = retune.query_one("#value", Input)
        assert box.value == f"{w2['mem_fraction_static']:g}"  # the current value is offered
        effect = str(retune.query_one("#effect").render())
        for bad in ("1.5", "0", "abc"):
            box.value = bad
            await pilot.pause()
            assert retune.query_one("#confirm", Button).disabled, bad
            await pilot.press("enter")
            await pilot.pause()
            assert app.screen is retune, bad
        box.value = "0.25"
        await pilot.pause()
        effect = str(retune.query_one("#effect").render())
        assert "new value 0.25" in effect and "MiB" in effect  # the expected effect
        await pilot.press("enter")

        await select(pilot, app, "w1")
        await pilot.press("g")
        confirm = await dialog(pilot, app, ConfirmDialog)
        body = str(confirm.query_one(".dialog-body").render())
        assert "CUDA graph disabled" in body
        await pilot.click("#confirm")
        # while two rows change state on every refresh, the cursor stays on its worker
        table = await select(pilot, app, "w3")

        def retuned(s: dict[str, Any]) -> bool:
            assert table.selected_name() == "w3"
            return (routed(s, "w1") and routed(s, "w2")
                    and row(s, "w2")["mem_fraction_static"] == 0.25
                    and row(s, "w1")["cuda_graph"] is False)

        await live.wait(pilot, retuned, what="both retuned")
        await wait_until(pilot, lambda: len(announced(app, "retuned")) >= 2,
                         what="both outcomes announced")
        assert table.selected_name() == "w3"
        await wait_until(pilot, lambda: table.cell_text("w2", "mem_fraction").startswith("0.25")
                         and table.cell_text("w1", "cuda_graph").startswith("off"),
                         what="new values on the rows")
    after = await live.status()
    assert row(after, "w2")["pid"] != w2["pid"] and row(after, "w1")["pid"] != w1["pid"]
    assert row(after, "w3")["mem_fraction_static"] == w2["mem_fraction_static"]  # untouched


async def test_v_runs_the_real_checks(live: Live) -> None:
    app = live.app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w3")
        await pilot.press("v")
        dlg = await dialog(pilot, app, ValidateDialog)
        await wait_until(pilot, lambda: dlg.checks is not None, what="check results", timeout=60)
        assert dlg.checks and all(c.ok for c in dlg.checks), dlg.checks
        assert dlg.query_one("#checks", DataTable).row_count == len(dlg.checks)
        assert f"{len(dlg.checks)}/{len(dlg.checks)} checks passed" in \
            str(dlg.query_one("#status").render())
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), what="closed")
    entries = [e for e in await live.audit() if e["action"] == "validate"]
    assert entries and entries[0]["worker"] == "w3" and entries[0]["outcome"] == "ok"


async def test_l_shows_the_workers_real_log(live: Live) -> None:
    log = live.fleet.sd.worker_log("w1")
    app = live.app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w1")
        await pilot.press("l")
        await wait_until(pilot, lambda: isinstance(app.screen, LogsScreen), what="logs")
        tail = app.screen.query_one(LogTail)
        await wait_until(pilot, lambda: len(tail.visible_lines()) > 3, what="log lines")
        on_disk = set(log.read_text(errors="replace").splitlines())
        shown = tail.visible_lines()
        assert set(shown) <= on_disk, set(shown) - on_disk
        await pilot.press("escape")
        await wait_until(pilot, lambda: isinstance(app.screen, MainScreen), what="back")


async def test_filter_and_theme(live: Live) -> None:
    app = live.app()
    async with app.run_test(size=(120, 40)) as pilot:
        table = await select(pilot, app, "w2")
        await pilot.press("slash")
        await pilot.press(*"w3")
        await wait_until(pilot, lambda: table.order == ["w3"], what="filtered to w3")
        await polls(pilot, app, 2)
        assert table.order == ["w3"]  # refreshes keep the filter
        await pilot.press("enter", "escape")
        await wait_until(pilot, lambda: ours(table.order) == NAMES, what="filter cleared")

        first = app.theme
        await pilot.press("t")
        await wait_until(pilot, lambda: app.theme != first, what="theme changed")
        assert app.theme.startswith("embedops-")


async def test_s_silences_the_selected_workers_alert(live: Live) -> None:
    key = "test_gpu_in_use[w2]"
    snap = await live.status()
    assert any(a["key"] == key and a["silenced_until"] is None for a in snap["alerts"])
    app = live.app()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w2")
        await pilot.press("s")
        await dialog(pilot, app, AlertPicker)
        await pilot.press("escape")  # cancelled: nothing silenced
        await polls(pilot, app)
        assert all(a["silenced_until"] is None for a in (await live.status())["alerts"])
        await pilot.press("s")
        await dialog(pilot, app, AlertPicker)
        await pilot.press("enter")  # the selected worker's alert is preselected
        snap = await live.wait(pilot, lambda s: any(
            a["key"] == key and a["silenced_until"] for a in s["alerts"]), what="silenced")
    others = [a for a in snap["alerts"] if a["key"] != key]
    assert others and all(a["silenced_until"] is None for a in others)


async def test_demo_fault_keys_reach_the_sim_worker(live: Live) -> None:
    app = live.app(demo=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w3")
        await wait_until(pilot, lambda: app.demo_active, what="demo keys on")
        await pilot.press("question_mark")
        helper = await dialog(pilot, app, HelpScreen)
        text = str(helper.query_one("#help-text").render())
        for spec in (a for a in ACTIONS if a.scope == "demo"):
            assert spec.help in text and "off:" not in text.split(spec.help)[1].split("\n")[0]
        await pilot.press("escape")
        for key, field, value in (("E", "error_rate", 1.0), ("L", "leak_mib_s", 200.0),
                                  ("S", "slow_ms", 1500.0)):
            await pilot.press(key)
            deadline = time.monotonic() + 20
            while (await live.sim_faults("w3"))[field] != value:
                assert time.monotonic() < deadline, f"{key}: {field} never became {value}"
                await pilot.pause(0.1)
        await pilot.press("X")
        deadline = time.monotonic() + 20
        while (await live.sim_faults("w3"))["error_rate"] != 0.0:
            assert time.monotonic() < deadline, "X did not clear the faults"
            await pilot.pause(0.1)
        faults = await live.sim_faults("w3")
        assert faults["leak_mib_s"] == 0.0 and faults["slow_ms"] == 0.0
    sent = [e["worker"] for e in await live.audit() if e["action"] == "sim_fault"]
    assert sent[:4] == ["w3"] * 4


async def test_read_only_flag_binds_no_write_key(live: Live) -> None:
    before = await live.status()
    app = live.app(read_only=True, demo=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w1")
        write_keys = [a.key for a in ACTIONS if a.writes]
        assert not set(write_keys) & app.bound_keys()
        await pilot.press(*write_keys)
        await polls(pilot, app)
        assert isinstance(app.screen, MainScreen)
    after = await live.status()
    assert identities(after) == identities(before)


async def test_other_user_is_read_only_and_refused_by_the_supervisor(live: Live) -> None:
    before = await live.status()
    app = live.app(via_relay=True)  # asked for write access; the supervisor says no
    assert "d" in app.bound_keys()
    async with app.run_test(size=(120, 40)) as pilot:
        await select(pilot, app, "w1")
        assert app.snapshot is not None and app.snapshot.read_only and app.read_only
        assert "d" not in app.bound_keys() and "k" not in app.bound_keys()
        await pilot.press("d", "k", "R")
        await polls(pilot, app)
        assert isinstance(app.screen, MainScreen)
        # and if it sent anyway, the supervisor refuses
        result = await data.send(app.client, data.worker_path("w1") + "/drain", {})
        assert not result.ok and result.status == 403 and result.code == "read_only"
    after = await live.status()
    assert identities(after) == identities(before)


async def test_R_needs_the_fleet_name_and_rolls_every_worker(live: Live) -> None:
    before = {w["name"]: w for w in (await live.status())["workers"]}
    app = live.app()
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        table = await table_of(pilot, app)
        await pilot.press("R")
        typed = await dialog(pilot, app, TypedConfirmDialog)
        await pilot.press(*"chao", "enter")  # not the name: nothing
        await pilot.pause()
        assert app.screen is typed and typed.query_one("#confirm", Button).disabled
        await pilot.press("escape")
        await polls(pilot, app)
        assert not [e for e in await live.audit() if e["action"] == "rollout"]
        await pilot.press("R")
        await dialog(pilot, app, TypedConfirmDialog)
        await pilot.press(*live.fleet.cfg.name, "enter")
        seen: set[str] = set()

        def rolled(s: dict[str, Any]) -> bool:
            for name in NAMES:
                seen.add(table.cell_text(name, "state"))
            return all(row(s, n)["restarts"] > before[n]["restarts"] and routed(s, n)
                       for n in NAMES)

        await live.wait(pilot, rolled, what="every worker restarted")
        await wait_until(pilot, lambda: bool(announced(app, "rolled ")),
                         what="rollout outcome announced")
    assert any("starting" in s or "draining" in s for s in seen), seen


async def test_q_quits_and_the_fleet_keeps_running(live: Live) -> None:
    before = await live.status()
    app = live.app()
    async with app.run_test(size=(120, 40)) as pilot:
        await table_of(pilot, app)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0 and not app.is_running
    await asyncio.sleep(2 * REFRESH_S)
    assert live.fleet.running
    after = await live.status()
    assert identities(after) == identities(before)
    assert all(routed(after, n) for n in NAMES)
