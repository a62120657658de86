"""Live tail of one worker's log, with follow, pause and search.

Lines arrive from the supervisor's streamed ``/logs?follow=1`` (or, when a supervisor
does not stream, from polling ``/logs``) into a bounded buffer and are written to the
`Log` in batches every 250 ms, never one line per message.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.markup import escape
from textual.reactive import reactive
from textual.widgets import Input, Log, Static

from console.control import ControlError, SupervisorNotRunning
from console.tui import data

_NO_STREAM = (400, 404, 405, 501)  # the supervisor cannot follow: poll instead


class LogTail(Vertical):
    """The log of `worker`: ``f`` follow, ``p`` pause, ``/`` search (the screen binds them)."""

    DEFAULT_CSS = """
    LogTail { height: 1fr; }
    LogTail #log-status { height: 1; }
    LogTail #log-search { display: none; }
    LogTail.-searching #log-search { display: block; }
    LogTail Log { height: 1fr; }
    """
    SCOPED_CSS = False

    follow: reactive[bool] = reactive(True)
    paused: reactive[bool] = reactive(False)
    search_text: reactive[str] = reactive("")

    def __init__(self, worker: str, *, max_lines: int = 5000, poll_s: float = 2.0,
                 id: str | None = None) -> None:
        """Tail `worker`'s log keeping at most `max_lines` lines."""
        super().__init__(id=id)
        self.worker = worker
        self.poll_s = poll_s
        self.buffer: deque[str] = deque(maxlen=max_lines)
        self._pending: list[str] = []
        self._unseen = 0
        self.source = "connecting…"

    def compose(self) -> ComposeResult:
        """Status line, search input (hidden), the log."""
        yield Static("", id="log-status")
        yield Input(placeholder="search the log (Esc closes)", id="log-search")
        yield Log(max_lines=self.buffer.maxlen, auto_scroll=True, id="log-lines")

    def on_mount(self) -> None:
        """Start following and the batch writer."""
        self._status()
        self.set_interval(0.25, self._flush)
        self._feed()

    # -- the feed

    @work(exclusive=True, exit_on_error=False, group="log-feed")
    async def _feed(self) -> None:
        client = self.app.client  # type: ignore[attr-defined]
        first = True
        while True:
            received = 0
            try:
                async for line in data.follow_logs(client, self.worker):
                    if received == 0:
                        if not first:
                            self.replace([])  # the stream starts with the tail again
                        self._source("live")
                    received += 1
                    self._pending.append(line)
                self._source("stream ended; reconnecting" if received
                             else "no log for this worker yet; retrying")
            except ControlError as e:
                if e.status in _NO_STREAM:
                    await self._poll(client)
                    return
                self._source(f"error: {e.message}; retrying")
            except SupervisorNotRunning:
                self._source("supervisor not answering; retrying")
            first = first and received == 0
            await asyncio.sleep(self.poll_s)

    async def _poll(self, client: data.Client) -> None:
        last: list[str] | None = None
        while True:
            got = await data.fetch_logs(client, self.worker)
            if got.ok:
                self._source("polling")
                if got.value != last:
                    last = got.value
                    self.replace(got.value)
            else:
                self._source(f"error: {got.error}; retrying")
            await asyncio.sleep(self.poll_s)

    def _source(self, text: str) -> None:
        if text != self.source:
            self.source = text
            self._status()

    # -- buffer → view

    def append(self, lines: Iterable[str]) -> None:
        """Queue `lines` (written at the next batch)."""
        self._pending.extend(lines)

    def replace(self, lines: Iterable[str]) -> None:
        """Replace everything with `lines` (polling mode)."""
        self._pending.clear()
        self.buffer.clear()
        self.buffer.extend(lines)
        self._redraw()

    def _matches(self, line: str) -> bool:
        q = self.search_text.lower()
        return not q or q in line.lower()

    def _flush(self) -> None:
        if not self._pending:
            return
        new, self._pending = self._pending, []
        self.buffer.extend(new)
        if self.paused:
            self._unseen += len(new)
            self._status()
            return
        shown = [line for line in new if self._matches(line)]
        if shown:
            self.query_one(Log).write_lines(shown)
        self._status()

    def _redraw(self) -> None:
        log = self.query_one(Log)
        log.clear()
        log.write_lines([line for line in self.buffer if self._matches(line)])
        self._status()

    def visible_lines(self) -> list[str]:
        """The lines the log shows now."""
        return list(self.query_one(Log).lines)

    # -- controls

    def toggle_follow(self) -> None:
        """Follow (scroll to each new line) on/off."""
        self.follow = not self.follow

    def toggle_pause(self) -> None:
        """Freeze the view; new lines are kept and shown on resume."""
        self.paused = not self.paused

    def open_search(self) -> None:
        """Show and focus the search input."""
        self.add_class("-searching")
        self.query_one("#log-search", Input).focus()

    def close_search(self) -> None:
        """Clear and hide the search."""
        search = self.query_one("#log-search", Input)
        search.value = ""
        self.remove_class("-searching")
        self.query_one(Log).focus()

    @property
    def searching(self) -> bool:
        """Whether the search input is open."""
        return self.has_class("-searching")

    def watch_follow(self, follow: bool) -> None:
        if self.is_mounted:
            log = self.query_one(Log)
            log.auto_scroll = follow
            if follow:
                log.scroll_end(animate=False)
            self._status()

    def watch_paused(self, paused: bool) -> None:
        if self.is_mounted:
            if not paused:
                self._unseen = 0
                self._redraw()
            self._status()

    def watch_search_text(self, text: str) -> None:
        if self.is_mounted:
            self._redraw()

    @on(Input.Changed, "#log-search")
    def _search_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.search_text = event.value

    @on(Input.Submitted, "#log-search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.query_one(Log).focus()

    def _status(self) -> None:
        if not self.is_mounted:
            return
        parts = [f"[b]log[/] {escape(self.worker)}", escape(self.source)]
        parts.append("[$success]follow[/]" if self.follow else "[$warning]not following[/]")
        if self.paused:
            parts.append(f"[b $warning]PAUSED[/] ({self._unseen} new)")
        if self.search_text:
            n = sum(1 for line in self.buffer if self._matches(line))
            parts.append(f"search [b]{escape(self.search_text)}[/]: {n} lines")
        parts.append("[$foreground-muted]f follow · p pause · / search[/]")
        self.query_one("#log-status", Static).update(" · ".join(parts))
