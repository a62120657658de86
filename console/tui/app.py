"""The embedops console: a Textual client of the supervisor's control socket.

It polls ``GET /v1/status`` (one request at a time, the next scheduled only after the
previous one was handled), renders the snapshot, and sends operator actions as POSTs.
Closing it changes nothing for the fleet.

Keys come from one table (`console.tui.actions`); in read-only mode actions that change
the fleet are not bound at all (and the supervisor refuses them too).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import quote

from textual import on, work
from textual.app import App, ScreenStackError
from textual.binding import Binding, BindingsMap
from textual.markup import escape
from textual.message import Message
from textual.notifications import SeverityLevel
from textual.screen import ModalScreen, Screen
from textual.theme import Theme
from textual.timer import Timer

from console.tui import data, fmt
from console.tui.actions import ACTIONS, BOUND_BY_WIDGET, BY_ID, ActionSpec, available
from console.tui.commands import ActionCommands
from console.tui.data import Fetched, Snapshot, Worker
from console.tui.prefs import load_prefs, save_prefs
from console.tui.screens.detail import DetailScreen
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
from console.tui.screens.timeline import TimelineScreen
from themes import DEFAULT_THEME, STYLESHEET, THEMES, next_theme, resolve_theme

SILENCE_FOR_S = 1800
FOOTER_FIRST = ("help", "quit")
"""Actions shown first in the footer (always visible, however narrow the terminal)."""


class ConsoleClient(data.Client, data.Streaming, Protocol):
    """What the console needs from `console.control.ControlClient`."""


class EmbedopsApp(App[None]):
    """The operations console."""

    CSS_PATH = str(STYLESHEET)
    TITLE = "embedops"
    COMMANDS = App.COMMANDS | {ActionCommands}
    ENABLE_COMMAND_PALETTE = True

    class StatusFetched(Message):
        """A status poll finished (with a snapshot or an error)."""

        def __init__(self, result: Fetched) -> None:
            super().__init__()
            self.result = result

    def __init__(self, client: ConsoleClient, *, read_only: bool = False,
                 theme: str | None = None, demo: bool = False, refresh_s: float = 1.0,
                 clock: Callable[[], float] = time.time, close_client: bool = False,
                 watch_tty: bool = False, remember_theme: bool = True) -> None:
        """Create the console.

        Args:
            client: a connected `ControlClient` (or anything with its get/post/stream).
            read_only: bind no key that changes the fleet.
            theme: theme name (``dark``, ``light``, ``ansi``, their full names
                ``embedops-dark``..., or a Textual built-in); None uses the saved
                preference, then the default.
            demo: offer the fault-injection keys (only while the engine is ``sim``).
            refresh_s: seconds between status polls.
            clock: wall clock (for "last data N s ago"); ages inside the snapshot are
                computed from the snapshot's own ``time``.
            close_client: close `client` when the app exits (`run_console` owns it).
            watch_tty: exit when the controlling terminal goes away.
            remember_theme: save the chosen theme in the user's ui.json.
        """
        super().__init__()
        self.client = client
        self.read_only_flag = read_only
        self.demo = demo
        self.refresh_s = refresh_s
        self.clock = clock
        self.close_client = close_client
        self.watch_tty = watch_tty
        self.remember_theme = remember_theme
        self.requested_theme = theme
        self.snapshot: Snapshot | None = None
        self.last_ok_at: float | None = None
        self.error: str | None = None
        self.unreachable = False
        self.polls = 0
        self._poll_timer: Timer | None = None
        self._seen_events: set[tuple[float, str, str | None, str]] | None = None
        self._base_bindings = self._bindings.copy()
        self._bound_for: tuple[bool, bool] | None = None
        self._warned_demo = False
        self._install_bindings()

    # ------------------------------------------------------------------ modes

    @property
    def read_only(self) -> bool:
        """Read-only by flag, or because the supervisor says this client is."""
        return self.read_only_flag or (self.snapshot is not None and self.snapshot.read_only)

    @property
    def demo_active(self) -> bool:
        """Demo keys are live: asked for, and the fleet runs simulated workers."""
        return self.demo and self.snapshot is not None and self.snapshot.engine == "sim"

    def offered_actions(self) -> tuple[ActionSpec, ...]:
        """The actions bound now (the read-only and demo filters applied)."""
        return tuple(available(ACTIONS, read_only=self.read_only, demo=self.demo_active))

    def _install_bindings(self) -> None:
        mode = (self.read_only, self.demo_active)
        if mode == self._bound_for:
            return
        self._bound_for = mode
        # help and quit lead the footer: on an 80-column terminal the tail is cut, and
        # `?` lists everything that was cut
        offered = sorted(self.offered_actions(), key=lambda a: a.id not in FOOTER_FIRST)
        mine = [Binding(a.key, f"act('{a.id}')", a.label, show=a.footer,
                        key_display=a.display, tooltip=a.help, id=f"embedops.{a.id}")
                for a in offered if a.id not in BOUND_BY_WIDGET]
        self._bindings = BindingsMap.merge([self._base_bindings, BindingsMap(mine)])
        if self.is_running:
            self.refresh_bindings()

    def bound_keys(self) -> set[str]:
        """Keys bound at app level now (for tests and the help screen)."""
        return set(self._bindings.key_to_bindings)

    # ------------------------------------------------------------------ lifecycle

    def get_default_screen(self) -> Screen[Any]:
        """The fleet screen."""
        return MainScreen()

    def on_mount(self) -> None:
        """Themes, the first poll, the TTY watch."""
        for t in THEMES.values():
            self.register_theme(t)
        self.theme = self._pick_theme()
        self.theme_changed_signal.subscribe(self, self._theme_changed)
        if self.watch_tty:
            self.set_interval(5.0, self._check_tty)
        self.poll_status()

    async def on_unmount(self) -> None:
        """Close the client if we own it."""
        if self.close_client:
            aclose = getattr(self.client, "aclose", None)
            if aclose is not None:
                await aclose()

    def _pick_theme(self) -> str:
        wanted = self.requested_theme
        full = resolve_theme(wanted)
        if full is not None:
            if self.remember_theme:
                save_prefs({"theme": full})
            return full
        saved = load_prefs().get("theme")
        choice = resolve_theme(saved if isinstance(saved, str) else None) or DEFAULT_THEME
        if wanted:
            names = ", ".join(THEMES)
            self.notify(f"unknown theme {wanted!r}; using {choice} (ours: {names})",
                        severity="warning")
        return choice

    def _check_tty(self) -> None:
        """Exit once the controlling terminal is gone (SSH dropped): no orphan polling."""
        try:
            fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
        except OSError:
            self.exit(return_code=0)
            return
        os.close(fd)

    # ------------------------------------------------------------------ polling

    def poll_status(self) -> None:
        """Start one status poll (an exclusive worker: a newer one cancels the older)."""
        self._poll_once()

    # `work` hands Textual the method, not a coroutine: a poll cancelled before it
    # starts (at exit) leaves no coroutine behind that was never awaited
    @work(group="status", exclusive=True, exit_on_error=False)
    async def _poll_once(self) -> None:
        result = await data.fetch_status(self.client, clock=self.clock)
        self.post_message(self.StatusFetched(result))

    def poll_now(self) -> None:
        """Poll at once (after an action), keeping one timer only."""
        if self._poll_timer is not None:
            self._poll_timer.stop()
            self._poll_timer = None
        self.poll_status()

    @on(StatusFetched)
    def _status_fetched(self, message: StatusFetched) -> None:
        try:
            self._apply(message.result)
        finally:
            if self._poll_timer is not None:
                self._poll_timer.stop()
            self._poll_timer = self.set_timer(self.refresh_s, self.poll_status)

    def _apply(self, result: Fetched) -> None:
        self.polls += 1
        if result.ok:
            snap: Snapshot = result.value
            self.snapshot = snap
            self.last_ok_at = result.at
            self.error = None
            self.unreachable = False
            self._install_bindings()
            self._announce(snap)
            if self.demo and snap.engine != "sim" and not self._warned_demo:
                self._warned_demo = True
                self.notify(f"demo keys are off: this fleet's engine is {snap.engine}, not sim",
                            severity="warning")
        else:
            self.error = result.error
            self.unreachable = result.unreachable
        self.render_screen()

    @property
    def stale(self) -> bool:
        """The data shown is the last good snapshot, not a current one."""
        return self.error is not None and self.snapshot is not None

    @property
    def banner_message(self) -> str | None:
        """What the banner says, or None when all is well."""
        if self.error is None:
            return None
        head = ("supervisor not answering — retrying" if self.unreachable
                else "supervisor error — retrying")
        tail = ""
        if self.last_ok_at is not None:
            tail = f"; data shown is {fmt.duration(self.clock() - self.last_ok_at)} old"
        return f"{head} ({self.error}){tail}"

    def render_screen(self, *, force: bool = False) -> None:
        """Render the top screen, unless a dialog is open (it re-renders on resume)."""
        try:
            screen = self.screen
        except ScreenStackError:  # a poll that lands while the app shuts down
            return
        if isinstance(screen, ModalScreen):
            return
        refresh: Callable[..., None] | None = getattr(screen, "refresh_from_app", None)
        if refresh is not None and screen.is_mounted:
            refresh(force=force)

    def _announce(self, snap: Snapshot) -> None:
        """Notify each action outcome that appeared since the last snapshot."""
        current = {e.identity for e in snap.events}
        if self._seen_events is None:
            self._seen_events = current
            return
        fresh = [e for e in snap.events if e.identity not in self._seen_events]
        self._seen_events = current
        for e in reversed(fresh):  # oldest first
            if e.kind != "action":
                continue
            severity: SeverityLevel = ("error" if e.outcome == "failed" else
                        "warning" if e.outcome in ("rolled_back", "refused") else "information")
            who = f"{e.worker}: " if e.worker else ""
            self.notify(f"{who}{e.message}", title="action finished", severity=severity)

    def _theme_changed(self, theme: Theme) -> None:
        for screen in self.screen_stack:
            refresh = getattr(screen, "refresh_from_app", None)
            if refresh is not None and screen.is_mounted and not isinstance(screen, ModalScreen):
                refresh(force=True)

    # ------------------------------------------------------------------ actions

    def selected_worker_name(self) -> str | None:
        """The worker actions apply to: the top non-dialog screen's selection."""
        for screen in reversed(self.screen_stack):
            if isinstance(screen, ModalScreen):
                continue
            pick = getattr(screen, "selected_worker_name", None)
            return pick() if pick is not None else None
        return None

    def _worker(self, name: str | None) -> Worker | None:
        """The worker called `name` in the latest snapshot (act on the model, not the view)."""
        if name is None or self.snapshot is None:
            return None
        return self.snapshot.worker(name)

    def action_act(self, action_id: str) -> None:
        """A key of the action table was pressed."""
        self.perform(action_id, None)

    def perform(self, action_id: str, worker: str | None) -> None:
        """Run `action_id` on `worker` (None: the selected one), confirming as it requires."""
        spec = BY_ID.get(action_id)
        if spec is None:
            return
        if spec not in self.offered_actions() and spec.id not in BOUND_BY_WIDGET:
            reason = "read-only" if spec.writes and self.read_only else "not available"
            self.notify(f"{spec.label}: {reason}", severity="warning")
            return
        name = worker or self.selected_worker_name()
        if spec.scope == "view":
            self._view(spec, name)
            return
        self.run_worker(self._flow(spec, name), group="actions", exit_on_error=False)

    def _view(self, spec: ActionSpec, name: str | None) -> None:
        if spec.id == "quit":
            self.exit(return_code=0)
        elif spec.id == "help":
            if not isinstance(self.screen, HelpScreen):
                self.push_screen(HelpScreen(read_only=self.read_only, demo=self.demo_active))
        elif spec.id == "theme":
            self.cycle_theme()
        elif spec.id == "filter":
            if isinstance(self.screen, MainScreen):
                self.screen.open_filter()
        elif spec.id == "timeline":
            self._open(TimelineScreen(every_s=max(2.0, self.refresh_s)))
        elif spec.id in ("detail", "logs"):
            if name is None:
                self.notify("select a worker first", severity="warning")
            elif spec.id == "detail":
                self.open_detail(name)
            else:
                self._open(LogsScreen(name))

    def _open(self, screen: Screen[Any]) -> None:
        if not isinstance(self.screen, MainScreen) and len(self.screen_stack) > 1:
            self.pop_screen()
        self.push_screen(screen)

    def open_detail(self, name: str) -> None:
        """Open the detail screen of worker `name`."""
        self._open(DetailScreen(name, series_every_s=max(2.0, self.refresh_s)))

    def cycle_theme(self) -> None:
        """Next theme; remembered."""
        self.theme = next_theme(self.theme)
        if self.remember_theme:
            save_prefs({"theme": self.theme})
        self.notify(f"theme: {self.theme}", timeout=2)

    async def _flow(self, spec: ActionSpec, name: str | None) -> None:
        snap = self.snapshot
        if spec.scope == "fleet":
            await getattr(self, f"_flow_{spec.id}")(spec, snap, name)
            return
        w = self._worker(name)
        if w is None or snap is None:
            self.notify(f"{spec.label}: select a worker first", severity="warning")
            return
        if spec.scope == "demo":
            await self._send(spec, w.name, f"/v1/sim/{quote(w.name, safe='')}/fault", spec.fault or {})
            return
        await getattr(self, f"_flow_{spec.id}")(spec, snap, w)

    async def _send(self, spec: ActionSpec, target: str | None, path: str, body: Any,
                    verb: str | None = None) -> data.ActionResult:
        result = await data.send(self.client, path, body)
        what = f"{verb or spec.label.lower()}{f' {target}' if target else ''}"
        if result.ok:
            outcome = result.body.get("outcome") if isinstance(result.body, dict) else None
            self.notify(f"{what}: {outcome or 'accepted'}", timeout=3)
        else:
            severity: SeverityLevel = "warning" if result.status == 409 else "error"
            self.notify(f"{what} refused: {result.message}", severity=severity)
        self.poll_now()
        return result

    async def _confirm(self, dialog: ModalScreen[Any]) -> Any:
        return await self.push_screen_wait(dialog)

    async def _flow_drain(self, spec: ActionSpec, snap: Snapshot, w: Worker) -> None:
        if w.state in ("draining", "drained"):
            await self._send(spec, w.name, f"{data.worker_path(w.name)}/undrain", {},
                             verb="undrain")
            return
        others = [x for x in snap.workers if x.name != w.name and x.routed
                  and x.state in ("ready", "degraded")]
        if w.routed and not others:
            ok = await self._confirm(ConfirmDialog(
                f"Drain {w.name}?",
                f"[b $warning]{w.name} is the last routed worker[/]: after the drain the "
                "balancer has nowhere to send requests and clients get errors.",
                "Drain", variant="warning"))
            if not ok:
                return
        await self._send(spec, w.name, f"{data.worker_path(w.name)}/drain", {})

    async def _flow_restart(self, spec: ActionSpec, snap: Snapshot, w: Worker) -> None:
        ok = await self._confirm(ConfirmDialog(
            f"Restart {w.name}?",
            f"drain → stop → start → wait until ready → undrain.\n"
            f"In-flight requests ({fmt.count(w.running, 'N/A')}) finish first; the fleet "
            "serves with one worker fewer until it is ready again.",
            "Restart", confirm_key="y", variant="warning"))
        if ok:
            await self._send(spec, w.name, f"{data.worker_path(w.name)}/restart", {})

    async def _flow_kill(self, spec: ActionSpec, snap: Snapshot, w: Worker) -> None:
        ok = await self._confirm(ConfirmDialog(
            f"Kill {w.name} now?",
            f"[b $error]No drain[/]: SIGTERM to its process group, SIGKILL after the grace "
            f"period. Requests in flight ({fmt.count(w.running, 'N/A')} running, "
            f"{fmt.count(w.queued, 'N/A')} queued) fail.",
            "Kill", variant="error"))
        if ok:
            await self._send(spec, w.name, f"{data.worker_path(w.name)}/kill", {"confirm": True})

    async def _flow_retune(self, spec: ActionSpec, snap: Snapshot, w: Worker) -> None:
        total = next((g.total_mib for g in snap.gpus if g.index == w.gpu), None)
        value = await self._confirm(RetuneDialog(w.name, w.mem_fraction_static, total))
        if value is not None:
            await self._send(spec, w.name, f"{data.worker_path(w.name)}/retune",
                             {"mem_fraction_static": value}, verb="retune mem-fraction")

    async def _flow_cuda_graph(self, spec: ActionSpec, snap: Snapshot, w: Worker) -> None:
        current = w.cuda_graph is not False  # unknown = SGLang's default, on
        new = not current
        notes = "".join(f"\n[b $warning]⚠ {escape(x)}[/]" for x in w.warnings)
        ok = await self._confirm(ConfirmDialog(
            f"Turn CUDA graph {'on' if new else 'off'} for {w.name}?",
            f"Restarts {w.name} with CUDA graph {'enabled' if new else 'disabled'} "
            "(drain first; rolled back if it does not become ready)." + notes,
            "Apply (restart)", variant="warning"))
        if ok:
            await self._send(spec, w.name, f"{data.worker_path(w.name)}/retune",
                             {"cuda_graph": new}, verb=f"CUDA graph {'on' if new else 'off'}")

    async def _flow_adopt(self, spec: ActionSpec, snap: Snapshot, w: Worker) -> None:
        if w.managed:
            self.notify(f"{w.name} is already managed", severity="warning")
            return
        if w.pid is None:
            self.notify(f"{w.name}: pid unknown, cannot adopt", severity="error")
            return
        ok = await self._confirm(ConfirmDialog(
            f"Adopt {w.name} (pid {w.pid})?",
            "It is drained, stopped, and relaunched under supervision with the same "
            "arguments; from then on it is restarted and tuned like the others.",
            "Adopt", variant="warning"))
        if ok:
            await self._send(spec, w.name, "/v1/adopt", {"pid": w.pid})

    async def _flow_validate(self, spec: ActionSpec, snap: Snapshot, w: Worker) -> None:
        await self._confirm(ValidateDialog(w.name))

    async def _flow_rollout(self, spec: ActionSpec, snap: Snapshot | None,
                            name: str | None) -> None:
        if snap is None:
            self.notify("no fleet data yet", severity="warning")
            return
        ok = await self._confirm(TypedConfirmDialog(
            f"Rolling restart of fleet {snap.fleet}",
            f"Every worker ({len(snap.workers)}) is restarted one at a time "
            "(drain → stop → start → ready → undrain), never below N−1 ready.",
            snap.fleet, "Restart all"))
        if ok:
            await self._send(spec, snap.fleet, "/v1/rollout", {}, verb="rolling restart")

    async def _flow_silence(self, spec: ActionSpec, snap: Snapshot | None,
                            name: str | None) -> None:
        if snap is None or not snap.alerts:
            self.notify("no alerts to silence")
            return
        pre = next((a.key for a in snap.alerts if name and a.worker == name), None)
        key = await self._confirm(AlertPicker(snap.alerts, pre, snap.time, SILENCE_FOR_S))
        if key:
            await self._send(spec, key, f"{data.alert_path(key)}/silence",
                             {"for_s": SILENCE_FOR_S})


def run_console(socket_path: str | os.PathLike[str], *, read_only: bool = False,
                theme: str | None = None, demo: bool = False, refresh_s: float = 1.0) -> int:
    """Run the console against the supervisor on `socket_path` until the operator quits.

    Returns the exit status. The fleet keeps running after the console exits.
    """
    from console.control import ControlClient

    client = ControlClient(socket_path, timeout=max(3.0, 3 * refresh_s))
    app = EmbedopsApp(client, read_only=read_only, theme=theme, demo=demo, refresh_s=refresh_s,
                      close_client=True, watch_tty=True)
    app.run()
    return app.return_code or 0
