"""The timeline: audit log entries and events, newest first, filterable (``e``)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from console.tui import data, fmt
from console.tui.data import AuditEntry, Event, Fetched
from console.tui.widgets.style import theme_style

if TYPE_CHECKING:
    from console.tui.app import EmbedopsApp


@dataclass(frozen=True)
class Row:
    """One timeline row, from either source."""

    time: float
    source: str  # "audit" or "event"
    what: str
    worker: str
    outcome: str
    detail: str

    @property
    def key(self) -> str:
        """A row key stable across reloads."""
        return f"{self.time:.3f}|{self.source}|{self.what}|{self.worker}|{self.detail}"

    def matches(self, query: str) -> bool:
        """Whether any column contains `query` (case-insensitive)."""
        q = query.strip().lower()
        return not q or any(q in s.lower() for s in
                            (self.source, self.what, self.worker, self.outcome, self.detail))


def _short(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


def audit_row(e: AuditEntry) -> Row:
    """A timeline row from an audit entry: who, what, before → after, how it ended."""
    parts = [f"by {e.user}"]
    if e.before is not None or e.after is not None:
        parts.append(f"{_short(e.before)} → {_short(e.after)}")
    if e.detail:
        parts.append(_short(e.detail))
    if e.duration_s is not None:
        parts.append(f"({e.duration_s:.1f}s)")
    return Row(e.time, "audit", e.action, e.worker or "", e.outcome, " ".join(parts))


def event_row(e: Event) -> Row:
    """A timeline row from an event."""
    return Row(e.time, "event", e.kind, e.worker or "", e.outcome or "", e.message)


def merge(audit: list[AuditEntry], events: list[Event]) -> list[Row]:
    """Both sources in one list, newest first."""
    rows = [audit_row(a) for a in audit] + [event_row(e) for e in events]
    return sorted(rows, key=lambda r: r.time, reverse=True)


class TimelineScreen(Screen[None]):
    """Audit log and events; ``/`` filters, Esc clears the filter or goes back."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("slash", "filter", "Filter", key_display="/"),
    ]

    class Loaded(Message):
        """Both sources were read."""

        def __init__(self, audit: Fetched, events: Fetched) -> None:
            super().__init__()
            self.audit = audit
            self.events = events

    def __init__(self, *, every_s: float = 2.0) -> None:
        super().__init__(id="timeline")
        self.every_s = every_s
        self.rows: list[Row] = []
        self.filter_text = ""
        self._shown: list[str] = []

    @property
    def eapp(self) -> EmbedopsApp:
        """The app, typed."""
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        """Filter, status, table, footer."""
        yield Static("[b]Timeline[/] audit log and events, newest first", id="timeline-title")
        yield Input(placeholder="filter: worker, action, outcome, text…", id="timeline-filter")
        yield Static("loading…", id="timeline-status")
        yield DataTable(id="timeline-table", cursor_type="row")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        """Columns, then the first load."""
        table = self.query_one(DataTable)
        snap = self.eapp.snapshot
        longest = max((len(w.name) for w in snap.workers), default=8) if snap else 8
        for key, label, width in (("time", "time", 8), ("age", "age", 7), ("source", "src", 5),
                                  ("what", "what", 12), ("worker", "worker", min(24, longest)),
                                  ("outcome", "outcome", 11), ("detail", "detail", None)):
            table.add_column(label, key=key, width=width)
        table.focus()
        self._load()

    def selected_worker_name(self) -> str | None:
        """The worker of the selected row, so worker keys act on it."""
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        for r in self.rows:
            if r.key == row_key.value:
                return r.worker or None
        return None

    @work(exclusive=True, exit_on_error=False, group="timeline")
    async def _load(self) -> None:
        client = self.eapp.client
        audit = await data.fetch_audit(client, clock=self.eapp.clock)
        events = await data.fetch_events(client, clock=self.eapp.clock)
        self.post_message(self.Loaded(audit, events))

    @on(Loaded)
    def _loaded(self, message: Loaded) -> None:
        try:
            audit = message.audit.value if message.audit.ok else []
            events = message.events.value if message.events.ok else []
            if not message.events.ok and self.eapp.snapshot is not None:
                events = list(self.eapp.snapshot.events)
            errors = [f"{name}: {f.error}" for name, f in
                      (("audit", message.audit), ("events", message.events)) if not f.ok]
            self.rows = merge(audit, events)
            self._show()
            status = f"{len(self.rows)} entries"
            if errors:
                status += " · [$error]" + "; ".join(errors) + "[/]"
            self.query_one("#timeline-status", Static).update(status)
        finally:
            self.set_timer(self.every_s, self._load)

    def _now(self) -> float:
        snap = self.eapp.snapshot
        return snap.time if snap is not None else self.eapp.clock()

    def _show(self) -> None:
        rows = [r for r in self.rows if r.matches(self.filter_text)]
        keys = [r.key for r in rows]
        if keys == self._shown:
            return
        table = self.query_one(DataTable)
        selected = None
        if table.row_count:
            selected = table.coordinate_to_cell_key(table.cursor_coordinate)[0].value
        now = self._now()
        table.clear()
        seen: set[str] = set()
        for r in rows:
            if r.key in seen:
                continue
            seen.add(r.key)
            colour = fmt.OUTCOME_COLOURS.get(r.outcome)
            outcome = Text(r.outcome, style=theme_style(self.app, colour) if colour else "")
            table.add_row(time.strftime("%H:%M:%S", time.localtime(r.time)),
                          fmt.age(r.time, now), r.source, r.what, r.worker, outcome, r.detail,
                          key=r.key)
        self._shown = keys
        if selected in seen:
            table.move_cursor(row=table.get_row_index(selected), animate=False)

    @on(Input.Changed, "#timeline-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self._show()

    @on(Input.Submitted, "#timeline-filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        self.query_one(DataTable).focus()

    def action_filter(self) -> None:
        """Focus the filter."""
        self.query_one("#timeline-filter", Input).focus()

    def action_back(self) -> None:
        """Clear the filter if set, else go back."""
        box = self.query_one("#timeline-filter", Input)
        if box.value:
            box.value = ""
            self.query_one(DataTable).focus()
            return
        self.dismiss()

    def refresh_from_app(self, *, force: bool = False) -> None:
        """Nothing to do per snapshot (the timeline polls its own sources)."""
