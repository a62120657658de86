"""The main screen: header, banner, fleet table, GPU panel, alerts strip, filter, footer."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.events import Resize, ScreenResume
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input

from console.tui.data import select_workers
from console.tui.widgets.fleet_table import FleetTable
from console.tui.widgets.panels import AlertsStrip, Banner, FleetHeader, GpuPanel

if TYPE_CHECKING:
    from console.tui.app import EmbedopsApp


class MainScreen(Screen[None]):
    """The fleet at a glance. Actions act on the worker under the table cursor."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "clear_filter", "Clear filter", show=False)]

    def __init__(self) -> None:
        super().__init__(id="main")
        self.filter_text = ""

    @property
    def eapp(self) -> EmbedopsApp:
        """The app, typed."""
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        """Lay out the panels."""
        yield FleetHeader(id="header")
        yield Banner(id="banner")
        yield FleetTable(id="fleet")
        gpus = GpuPanel(id="gpus")
        gpus.border_title = "GPU"
        yield gpus
        alerts = AlertsStrip(id="alerts")
        alerts.border_title = "Alerts"
        yield alerts
        yield Input(placeholder="filter by name or state (Enter keeps, Esc clears)", id="filter")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        """Draw whatever is known (nothing yet, on a fresh start)."""
        self.query_one(FleetTable).focus()
        self.refresh_from_app()

    # -- what actions act on

    def selected_worker_name(self) -> str | None:
        """The worker under the cursor."""
        return self.query_one(FleetTable).selected_name()

    # -- rendering

    def refresh_from_app(self, *, force: bool = False) -> None:
        """Render the app's latest snapshot (kept, greyed, while the supervisor is away)."""
        app = self.eapp
        snap = app.snapshot
        self.query_one(FleetHeader).show(snap, read_only=app.read_only, demo=app.demo_active)
        self.query_one(Banner).show(app.banner_message)
        self.set_class(app.stale, "-stale")
        if snap is None:
            return
        table = self.query_one(FleetTable)
        table.show(select_workers(snap.workers, self.filter_text), snap.time, force=force)
        self.query_one(GpuPanel).show(snap.gpus, self.size.width or app.size.width)
        self.query_one(AlertsStrip).show(snap.alerts, snap.time)

    def on_screen_resume(self, event: ScreenResume) -> None:
        """Back from a dialog or another screen: show the newest data at once."""
        self.refresh_from_app()

    def on_resize(self, event: Resize) -> None:
        """Re-fit the table's columns."""
        if self.eapp.snapshot is not None:
            self.refresh_from_app()

    # -- filter

    def open_filter(self) -> None:
        """Show the filter input."""
        box = self.query_one("#filter", Input)
        box.add_class("-open")
        box.focus()

    def action_clear_filter(self) -> None:
        """Clear and hide the filter."""
        box = self.query_one("#filter", Input)
        if not box.has_class("-open") and not self.filter_text:
            return
        box.value = ""
        box.remove_class("-open")
        self.filter_text = ""
        self.query_one(FleetTable).focus()
        self.refresh_from_app()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self.refresh_from_app()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        self.query_one(FleetTable).focus()

    # -- open a worker

    @on(DataTable.RowSelected, "#fleet")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.eapp.open_detail(str(event.row_key.value))
