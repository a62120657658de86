"""Worker detail: plots of the last 15 minutes (``w``: 1 h, 3 h), launch arguments with
drift, events, log.

The series is polled by its own self-rescheduling worker (every 2 s by default); the
rest comes from the app's snapshot. Worker actions (d, r, k, m, g, ...) act on this
worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, VerticalScroll
from textual.events import ScreenResume
from textual.markup import escape
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static

from console.audit import mask_secrets
from console.tui import data, fmt
from console.tui.data import Event, Fetched, Series, Snapshot, Worker
from console.tui.widgets.log_tail import LogTail
from console.tui.widgets.panels import Banner, LiveStatic
from console.tui.widgets.plot import Plot, PlotData, points, tick_label, trend_line

if TYPE_CHECKING:
    from console.tui.app import EmbedopsApp

WINDOW_S = 900
WINDOWS_S = (900, 3600, 3 * 3600)
"""Plot windows ``w`` cycles through (the supervisor keeps 3 h of series)."""


def flag_for(field_name: str) -> str:
    """The SGLang flag of a spec field (``mem_fraction_static`` → ``--mem-fraction-static``)."""
    return "--" + field_name.replace("_", "-")


def argv_markup(argv: Sequence[str], drift: dict[str, dict[str, object]]) -> str:
    """The argv one flag per line, drifted flags highlighted with the configured value.

    Secrets are masked again here, whatever the supervisor sent.
    """
    argv = [str(a) for a in mask_secrets(list(argv))]
    drifted = {flag_for(k): v for k, v in drift.items()}
    if "cuda_graph" in drift:
        drifted.setdefault("--disable-cuda-graph", drift["cuda_graph"])
    if not argv:
        return "[$foreground-muted]argv not known[/]"
    lines: list[str] = []
    i = 0
    head: list[str] = []
    while i < len(argv) and not argv[i].startswith("--"):
        head.append(argv[i])
        i += 1
    if head:
        lines.append(escape(" ".join(head)))
    while i < len(argv):
        flag = argv[i]
        value = []
        i += 1
        while i < len(argv) and not argv[i].startswith("--"):
            value.append(argv[i])
            i += 1
        text = escape(" ".join([flag, *value]))
        name = flag.split("=", 1)[0]
        if name in drifted:
            conf = drifted[name].get("config") if isinstance(drifted[name], dict) else None
            lines.append(f"  [b $warning]{text}[/] [$warning]≠ config {escape(str(conf))}[/]")
        else:
            lines.append(f"  {text}")
    missing = [f for f in drifted if f not in {a.split('=', 1)[0] for a in argv}]
    for f in missing:
        conf = drifted[f].get("config") if isinstance(drifted[f], dict) else None
        lines.append(f"  [b $warning](no {escape(f)})[/] [$warning]≠ config {escape(str(conf))}[/]")
    return "\n".join(lines)


def drift_markup(drift: dict[str, dict[str, object]]) -> str:
    """One line per drifted field: config value → running value."""
    if not drift:
        return "[$success]✓ running arguments match the config[/]"
    rows = [f"[b $warning]! {escape(k)}[/]: config {escape(str(v.get('config')))} → "
            f"running {escape(str(v.get('current')))}" for k, v in sorted(drift.items())]
    return "[b $warning]Drift from config[/] (restart to apply the config)\n" + "\n".join(rows)


def events_markup(events: Sequence[Event], worker: str, now: float, limit: int = 8) -> str:
    """The worker's last events, newest first, with their age."""
    mine = [e for e in events if e.worker == worker][:limit]
    if not mine:
        return "[$foreground-muted]no events yet[/]"
    out = []
    for e in mine:
        colour = fmt.OUTCOME_COLOURS.get(e.outcome or "", "foreground")
        out.append(f"[$foreground-muted]{fmt.age(e.time, now):>6}[/] {escape(e.kind):<6} "
                   f"[${colour}]{escape(e.message)}[/]")
    return "\n".join(out)


def title_markup(w: Worker | None, name: str) -> str:
    """The detail screen's title line."""
    if w is None:
        return f"[b]{escape(name)}[/] [$error]not in the fleet any more[/]"
    colour = fmt.state_colour(w.state)
    where = f"GPU{w.gpu}" if w.gpu is not None else "GPU ?"
    return (f"[b]{escape(w.name)}[/] [b ${colour}]{fmt.state_label(w.state)}[/] · {where} · "
            f"port {fmt.count(w.port)} · pid {fmt.count(w.pid)} · "
            f"P50 {fmt.ms(w.p50_ms)} P95 {fmt.ms(w.p95_ms)} ms · {fmt.rate(w.rps)} req/s · "
            f"GPU {fmt.mib(w.gpu_mem_mib)} MiB · mem-fraction {fmt.fraction(w.mem_fraction_static)}"
            f" · CUDA graph {fmt.yes_no(w.cuda_graph, 'on', 'off')} · restarts {fmt.count(w.restarts)}")


def plots_from(series: Series, window_s: float = WINDOW_S
               ) -> tuple[PlotData, PlotData, PlotData]:
    """P95, throughput and GPU memory plots over `window_s` (with the leak trend when
    memory grows)."""
    window = window_s / 60
    xs, ys = points(series.t, series.p95_ms)
    p95 = PlotData("P95 latency (ms)", xs, ys, colour="primary", window_min=window)
    xs, ys = points(series.t, series.rps)
    rps = PlotData("throughput (req/s)", xs, ys, colour="success", window_min=window)
    xs, ys = points(series.t, series.gpu_mem_mib)
    leak = series.leak
    title = "GPU memory (MiB)"
    short = None
    trend = None
    if leak.slope_mib_per_h is not None and leak.slope_mib_per_h > 0:
        trend = trend_line(xs, ys, leak.slope_mib_per_h)
        title += f" · leak +{leak.slope_mib_per_h:.0f} MiB/h"
        short = f"GPU MiB +{leak.slope_mib_per_h:.0f}/h"
        if leak.time_to_full_s is not None:
            title += f" · full in {fmt.hours(leak.time_to_full_s)}"
            short += f" · full in {fmt.hours(leak.time_to_full_s)}"
    mem = PlotData(title, xs, ys, colour="accent", trend=trend, window_min=window,
                   short_title=short)
    return p95, rps, mem


class DetailScreen(Screen[None]):
    """Everything about one worker."""

    AUTO_FOCUS = "#log-lines"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("f", "follow", "Follow"),
        Binding("p", "pause", "Pause log"),
        Binding("slash", "search", "Search log", key_display="/"),
        Binding("w", "window", "Window"),
    ]

    class SeriesFetched(Message):
        """A series poll finished."""

        def __init__(self, result: Fetched, window_s: int) -> None:
            super().__init__()
            self.result = result
            self.window_s = window_s

    def __init__(self, worker: str, *, series_every_s: float = 2.0) -> None:
        super().__init__(id="detail")
        self.worker_name = worker
        self.series_every_s = series_every_s
        self.series: Series | None = None
        self.series_error: str | None = None
        self.window_s: int = WINDOWS_S[0]

    @property
    def eapp(self) -> EmbedopsApp:
        """The app, typed."""
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        """Title, banner, plots | warnings, drift, events, arguments; log tail, footer."""
        yield LiveStatic("", id="detail-title")
        yield Banner(id="banner")
        with Grid(id="detail-top"):
            yield Plot(id="plot-p95")
            yield Plot(id="plot-rps")
            yield Plot(id="plot-mem")
            with VerticalScroll(id="detail-side"):
                yield LiveStatic("", id="detail-warnings")
                yield LiveStatic("", id="detail-drift")
                events = LiveStatic("", id="detail-events")
                events.border_title = "last events"
                yield events
                argv = LiveStatic("", id="detail-argv")
                argv.border_title = "launch arguments"
                yield argv
        yield LogTail(self.worker_name, id="detail-log")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        """Render the snapshot and start polling the series."""
        self.refresh_from_app()
        self._poll_series()

    def selected_worker_name(self) -> str | None:
        """This screen's worker."""
        return self.worker_name

    # -- series poll (self-rescheduling, never overlapping)

    @work(exclusive=True, exit_on_error=False, group="series")
    async def _poll_series(self) -> None:
        window = self.window_s
        result = await data.fetch_series(self.eapp.client, self.worker_name, window,
                                         clock=self.eapp.clock)
        self.post_message(self.SeriesFetched(result, window))

    @on(SeriesFetched)
    def _series_fetched(self, message: SeriesFetched) -> None:
        if message.window_s != self.window_s:
            return  # asked for before `w` changed the window; a new poll is on its way
        try:
            if message.result.ok:
                self.series = message.result.value
                self.series_error = None
                self._show_plots()
            else:
                self.series_error = message.result.error
        finally:
            self.set_timer(self.series_every_s, self._poll_series)

    def _show_plots(self) -> None:
        if self.series is None:
            return
        p95, rps, mem = plots_from(self.series, self.window_s)
        self.query_one("#plot-p95", Plot).data = p95
        self.query_one("#plot-rps", Plot).data = rps
        self.query_one("#plot-mem", Plot).data = mem

    # -- snapshot

    def refresh_from_app(self, *, force: bool = False) -> None:
        """Render the parts that come from the snapshot."""
        app = self.eapp
        snap: Snapshot | None = app.snapshot
        self.query_one(Banner).show(app.banner_message)
        self.set_class(app.stale, "-stale")
        if force:
            for plot in self.query(Plot):
                plot.refresh()
        if snap is None:
            return
        w = snap.worker(self.worker_name)
        self.query_one("#detail-title", Static).update(title_markup(w, self.worker_name))
        warnings = self.query_one("#detail-warnings", Static)
        if w is not None and w.warnings:
            warnings.update("\n".join(f"[b $warning]⚠ {escape(x)}[/]" for x in w.warnings))
            warnings.display = True
        else:
            warnings.display = False
        drift = w.drift if w else {}
        self.query_one("#detail-drift", Static).update(drift_markup(drift))
        self.query_one("#detail-argv", Static).update(argv_markup(w.argv if w else (), drift))
        self.query_one("#detail-events", Static).update(
            events_markup(snap.events, self.worker_name, snap.time))

    def on_screen_resume(self, event: ScreenResume) -> None:
        """Back from a dialog: newest data at once."""
        self.refresh_from_app()

    # -- keys

    def action_back(self) -> None:
        """Close the search if open, else go back to the fleet."""
        log = self.query_one(LogTail)
        if log.searching:
            log.close_search()
            return
        self.dismiss()

    def action_follow(self) -> None:
        """Toggle log follow."""
        self.query_one(LogTail).toggle_follow()

    def action_pause(self) -> None:
        """Toggle log pause."""
        self.query_one(LogTail).toggle_pause()

    def action_search(self) -> None:
        """Search the log."""
        self.query_one(LogTail).open_search()

    def action_window(self) -> None:
        """Next plot window (15 min → 1 h → 3 h → 15 min); fetched at once."""
        i = WINDOWS_S.index(self.window_s) if self.window_s in WINDOWS_S else -1
        self.window_s = WINDOWS_S[(i + 1) % len(WINDOWS_S)]
        self.notify(f"plots: last {tick_label(-self.window_s / 60)[1:]}", timeout=2)
        self._poll_series()
