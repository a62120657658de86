"""Full-screen live log of one worker (``l``): follow, pause, search."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Static

from console.tui.screens.detail import title_markup
from console.tui.widgets.log_tail import LogTail
from console.tui.widgets.panels import Banner, LiveStatic

if TYPE_CHECKING:
    from console.tui.app import EmbedopsApp


class LogsScreen(Screen[None]):
    """The log of one worker; worker actions still act on it."""

    AUTO_FOCUS = "#log-lines"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("f", "follow", "Follow"),
        Binding("p", "pause", "Pause"),
        Binding("slash", "search", "Search", key_display="/"),
    ]

    def __init__(self, worker: str) -> None:
        super().__init__(id="logs")
        self.worker_name = worker

    @property
    def eapp(self) -> EmbedopsApp:
        """The app, typed."""
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        """Title, banner, the log, footer."""
        yield LiveStatic("", id="detail-title")
        yield Banner(id="banner")
        yield LogTail(self.worker_name, id="logs-tail")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        """Render the title."""
        self.refresh_from_app()

    def selected_worker_name(self) -> str | None:
        """This screen's worker."""
        return self.worker_name

    def refresh_from_app(self, *, force: bool = False) -> None:
        """Title and banner from the snapshot."""
        app = self.eapp
        self.query_one(Banner).show(app.banner_message)
        if app.snapshot is not None:
            self.query_one("#detail-title", Static).update(
                title_markup(app.snapshot.worker(self.worker_name), self.worker_name))

    def action_back(self) -> None:
        """Close the search if open, else go back."""
        log = self.query_one(LogTail)
        if log.searching:
            log.close_search()
            return
        self.dismiss()

    def action_follow(self) -> None:
        """Toggle follow."""
        self.query_one(LogTail).toggle_follow()

    def action_pause(self) -> None:
        """Toggle pause."""
        self.query_one(LogTail).toggle_pause()

    def action_search(self) -> None:
        """Search."""
        self.query_one(LogTail).open_search()
