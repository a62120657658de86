"""The fleet table: one row per worker, keyed by worker name, updated cell by cell.

Refreshing never moves the cursor or the scroll: cells change in place with
`update_cell`; rows are rebuilt only when the set or order of workers changes (or the
width calls for other columns), and then the cursor is put back on the same worker.
Columns are chosen by priority to fit the width: name, state, P95 and GPU MiB always.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.widgets import DataTable

from console.tui import fmt
from console.tui.data import Worker
from console.tui.widgets.style import theme_style


@dataclass(frozen=True)
class Cell:
    """A cell's text and look; compared to skip unchanged updates."""

    text: str
    colour: str | None = None
    bold: bool = False
    dim: bool = False


@dataclass(frozen=True)
class Column:
    """A fleet-table column."""

    key: str
    label: str
    width: int
    priority: int
    """Lower is kept longer when the terminal is narrow."""
    cell: Callable[[Worker, float], Cell]
    right: bool = True


STATE_MIN = 14
STATE_WIDE = 23
"""State width that reads "▼ draining: 3 in flight" in full; taken before the columns
of priority `STATE_WIDE_PRIORITY` and up."""
STATE_WIDE_PRIORITY = 4
STATE_MAX = 30
NAME_MIN, NAME_MAX = 6, 16


def state_text(w: Worker, now: float) -> str:
    """Symbol plus state, or plus what the running action is doing right now."""
    sym = fmt.state_symbol(w.state)
    if w.action is not None:
        return f"{sym} {fmt.activity(w.action.name, w.action.progress, w.action.started_at, now)}"
    if w.state == "backoff" and w.next_start_in_s is not None:
        return f"{sym} backoff {fmt.duration(w.next_start_in_s)}"
    if w.state in ("starting", "restarting") and w.uptime_s is not None:
        return f"{sym} {w.state} {fmt.clock(w.uptime_s)}"
    return f"{sym} {w.state}"


def _state(w: Worker, now: float) -> Cell:
    return Cell(state_text(w, now), fmt.state_colour(w.state), bold=w.state in ("crashed", "failed"))


def _p95(w: Worker, now: float) -> Cell:
    colour = None
    if w.last_probe_ok is False:
        colour = "error"
    return Cell(fmt.ms(w.p95_ms), colour)


def _errors(w: Worker, now: float) -> Cell:
    return Cell(fmt.count(w.errors), "error" if w.errors else None)


def _drift_cell(text: str, drifted: bool) -> Cell:
    return Cell(text + ("*" if drifted else ""), "warning" if drifted else None)


COLUMNS: tuple[Column, ...] = (
    Column("name", "name", NAME_MIN, 0, lambda w, n: Cell(w.name, bold=True), right=False),
    Column("state", "state", STATE_MIN, 0, _state, right=False),
    Column("managed", "mgd", 3, 7, lambda w, n: Cell("yes" if w.managed else "no",
                                                      None if w.managed else "accent"),
           right=False),
    Column("routed", "routed", 6, 5, lambda w, n: Cell(fmt.yes_no(w.routed),
                                                       "warning" if w.routed is False else None),
           right=False),
    Column("gpu", "GPU", 3, 4, lambda w, n: Cell(fmt.count(w.gpu))),
    Column("port", "port", 5, 6, lambda w, n: Cell(fmt.count(w.port))),
    Column("pid", "pid", 7, 8, lambda w, n: Cell(fmt.count(w.pid), dim=True)),
    Column("p50", "P50", 6, 3, lambda w, n: Cell(fmt.ms(w.p50_ms))),
    Column("p95", "P95", 6, 0, _p95),
    Column("rps", "req/s", 5, 1, lambda w, n: Cell(fmt.rate(w.rps))),
    Column("running", "run", 3, 3, lambda w, n: Cell(fmt.count(w.running))),
    Column("queued", "queue", 5, 2, lambda w, n: Cell(fmt.count(w.queued),
                                                      "warning" if w.queued else None)),
    Column("errors", "err", 4, 2, _errors),
    Column("gpu_mib", "GPU MiB", 7, 0, lambda w, n: Cell(fmt.mib(w.gpu_mem_mib))),
    Column("mem_fraction", "mem", 5, 4,
           lambda w, n: _drift_cell(fmt.fraction(w.mem_fraction_static),
                                    "mem_fraction_static" in w.drift)),
    Column("cuda_graph", "graph", 5, 6,
           lambda w, n: _drift_cell(fmt.yes_no(w.cuda_graph, "on", "off"), "cuda_graph" in w.drift),
           right=False),
    Column("restarts", "rst", 3, 3, lambda w, n: Cell(fmt.count(w.restarts),
                                                      "warning" if w.restarts else None)),
    Column("uptime", "uptime", 6, 5, lambda w, n: Cell(fmt.duration(w.uptime_s))),
)
"""Every column, in display order."""

PADDING = 2  # DataTable's cell padding, one cell each side


def fit_columns(width: int, name_width: int) -> list[tuple[Column, int]]:
    """The columns that fit in `width` cells, with their widths, in display order.

    Columns are taken by priority until one does not fit; the state column widens to `STATE_WIDE` (a running
    action's progress in full) before the columns of `STATE_WIDE_PRIORITY` and up are
    taken, then takes what is left, up to `STATE_MAX`.
    """
    widths = {c.key: c.width for c in COLUMNS}
    widths["name"] = max(NAME_MIN, min(NAME_MAX, name_width))
    widths["state"] = STATE_MIN
    chosen: set[str] = set()
    used = 0
    widened = full = False
    for col in sorted(COLUMNS, key=lambda c: c.priority):
        if not widened and col.priority >= STATE_WIDE_PRIORITY:
            widened = True
            if used + STATE_WIDE - STATE_MIN <= width:
                used += STATE_WIDE - STATE_MIN
                widths["state"] = STATE_WIDE
        need = widths[col.key] + PADDING
        if col.priority == 0 or (not full and used + need <= width):
            chosen.add(col.key)
            used += need
        else:
            full = True  # a less important column never takes the place of a dropped one
    widths["state"] = max(widths["state"], min(STATE_MAX, widths["state"] + width - used))
    return [(c, widths[c.key]) for c in COLUMNS if c.key in chosen]


class FleetTable(DataTable[Text]):
    """The fleet table (a `DataTable` with row cursor, keyed by worker name)."""

    DEFAULT_CSS = """
    FleetTable { height: auto; max-height: 100%; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, id=id, cursor_foreground_priority="css")
        self._columns: list[tuple[Column, int]] = []
        self._cells: dict[str, dict[str, Cell]] = {}
        self._order: list[str] = []
        self._workers: list[Worker] = []
        self._now = 0.0
        self._width = 0

    # -- queries

    def selected_name(self) -> str | None:
        """The worker under the cursor, if any."""
        if not self.row_count:
            return None
        try:
            row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        except Exception:  # noqa: BLE001 - cursor outside a just-shrunk table
            return None
        return None if row_key.value is None else str(row_key.value)

    @property
    def column_keys(self) -> list[str]:
        """Keys of the columns shown now."""
        return [c.key for c, _ in self._columns]

    @property
    def order(self) -> list[str]:
        """Worker names in row order."""
        return list(self._order)

    def cell_text(self, worker: str, column: str) -> str:
        """The text shown in a cell (for tests and the palette)."""
        return self._cells.get(worker, {}).get(column, Cell("")).text

    # -- updates

    def show(self, workers: Sequence[Worker], now: float, *, force: bool = False) -> None:
        """Render `workers` (in this order); `force` re-renders every cell (theme change)."""
        self._workers = list(workers)
        self._now = now
        width = self._available_width()
        name_width = max((len(w.name) for w in workers), default=NAME_MIN)
        columns = fit_columns(width, name_width)
        names = [w.name for w in workers]
        layout_changed = [(c.key, n) for c, n in columns] != [(c.key, n) for c, n in self._columns]
        if layout_changed or names != self._order or force:
            self._rebuild(columns, workers, now)
        else:
            self._update(workers, now)

    def relayout(self) -> None:
        """Re-fit the columns to the current width (call on resize)."""
        self.show(self._workers, self._now)

    def restyle(self) -> None:
        """Re-render every cell (the theme changed)."""
        self.show(self._workers, self._now, force=True)

    def _available_width(self) -> int:
        width = self.size.width or self.app.size.width
        return max(40, width - 2)  # room for a vertical scrollbar

    def _text(self, cell: Cell, width: int, right: bool) -> Text:
        style = theme_style(self.app, cell.colour, bold=cell.bold, dim=cell.dim) if cell.colour \
            else theme_style(self.app, "", bold=cell.bold, dim=cell.dim)
        return Text(fmt.truncate(cell.text, width), style=style,
                    justify="right" if right else "left", no_wrap=True, end="")

    def _rebuild(self, columns: list[tuple[Column, int]], workers: Sequence[Worker],
                 now: float) -> None:
        selected = self.selected_name()
        old_row = self.cursor_row
        with self.app.batch_update():
            self.clear(columns=True)
            self._columns = columns
            for col, width in columns:
                self.add_column(Text(col.label, justify="right" if col.right else "left"),
                                width=width, key=col.key)
            self._cells = {}
            for w in workers:
                cells = {col.key: col.cell(w, now) for col, _ in columns}
                self._cells[w.name] = cells
                self.add_row(*(self._text(cells[c.key], n, c.right) for c, n in columns),
                             key=w.name)
            self._order = [w.name for w in workers]
            if self._order:
                if selected in self._order:
                    row = self._order.index(selected)
                else:
                    row = min(max(old_row, 0), len(self._order) - 1)
                self.move_cursor(row=row, animate=False)

    def _update(self, workers: Sequence[Worker], now: float) -> None:
        for w in workers:
            old = self._cells.get(w.name, {})
            for col, width in self._columns:
                new = col.cell(w, now)
                if old.get(col.key) != new:
                    old[col.key] = new
                    self.update_cell(w.name, col.key, self._text(new, width, col.right))
            self._cells[w.name] = old
