"""Time-series plots drawn with plotext 5 inside `render()` (sized to the widget).

plotext 5 keeps one global figure, so every build starts with `plt.clf()` and happens
on the UI thread. This is the only module that imports plotext (plotext 6 changed the
whole API; a move touches this file only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import plotext as plt  # type: ignore[import-untyped]
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from console.tui.widgets.style import plot_colour


@dataclass(frozen=True)
class PlotData:
    """What one plot shows: points (x in minutes relative to now, <= 0) and an optional line."""

    title: str
    xs: tuple[float, ...] = ()
    ys: tuple[float, ...] = ()
    colour: str = "primary"
    """Theme variable of the data line."""
    trend: tuple[tuple[float, float], tuple[float, float]] | None = None
    """Two points of a trend line (the leak slope), drawn in the warning colour."""
    window_min: float = 15.0
    short_title: str | None = None
    """Shown instead of `title` when the plot is too narrow for it (plotext would drop it)."""

    def title_for(self, width: int) -> str:
        """The title that fits in `width` cells: the full one, the short one, or cut."""
        for title in (self.title, self.short_title):
            if title is not None and len(title) <= width - 2:
                return title
        short = self.short_title or self.title
        return short[: max(1, width - 3)] + "…"


def points(t: Sequence[float], ys: Sequence[float | None]) -> tuple[tuple[float, ...],
                                                                   tuple[float, ...]]:
    """Pair timestamps with values, dropping unknown values; x is minutes before the last t."""
    if not t:
        return (), ()
    end = t[-1]
    pairs = [((ti - end) / 60.0, y) for ti, y in zip(t, ys) if y is not None]
    return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


def tick_label(minutes: float) -> str:
    """An x tick (minutes before now, negative): ``-15m``, ``-40m``, ``-2h``."""
    if minutes <= -60 and minutes % 60 == 0:
        return f"-{-minutes / 60:g}h"
    return f"-{-minutes:g}m"


def y_range(ys: Sequence[float], extra: Sequence[float] = ()) -> tuple[float, float]:
    """Y limits with a margin, never flatter than 2 % of the level (a steady value must not
    look like noise)."""
    values = [*ys, *extra]
    lo, hi = min(values), max(values)
    span = max(hi - lo, 0.02 * max(abs(hi), abs(lo)), 1e-6)
    pad = span * 0.1
    mid = (hi + lo) / 2
    half = max(hi - lo, span) / 2 + pad
    low = mid - half
    if lo >= 0 > low:
        low = 0.0
    return low, mid + half


def trend_line(xs: Sequence[float], ys: Sequence[float], slope_per_h: float | None
               ) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The line with `slope_per_h` through the centroid of the points, over their x span."""
    if slope_per_h is None or len(xs) < 2:
        return None
    mx = sum(xs) / len(xs)
    my = sum(ys) / len(ys)
    per_min = slope_per_h / 60.0
    x0, x1 = xs[0], xs[-1]
    return ((x0, my + per_min * (x0 - mx)), (x1, my + per_min * (x1 - mx)))


class Plot(Widget):
    """A line plot of one metric over the last minutes."""

    DEFAULT_CSS = "Plot { height: 9; min-width: 20; }"

    data: reactive[PlotData | None] = reactive(None)

    def render(self) -> Text:
        """Build the plot at the widget's current size."""
        w, h = self.size.width, self.size.height
        d = self.data
        if d is None:
            return Text("loading…", style="dim")
        if w < 20 or h < 4:
            return Text(d.title, style="dim")
        plt.clf()
        plt.plotsize(w, h)
        plt.theme("clear")
        plt.title(d.title_for(w))
        plt.xlim(-d.window_min, 0)
        ticks = [-d.window_min, -d.window_min * 2 / 3, -d.window_min / 3]
        plt.xticks([*ticks, 0], [*(tick_label(t) for t in ticks), "now"])
        if not d.ys:
            return Text(f"{d.title}\n(no data yet)", style="dim")
        extra = (d.trend[0][1], d.trend[1][1]) if d.trend is not None else ()
        plt.ylim(*y_range(d.ys, extra))
        if d.trend is not None:  # under the data, so the data stays readable
            (x0, y0), (x1, y1) = d.trend
            plt.plot([x0, x1], [y0, y1], marker="braille", color=plot_colour(self.app, "warning"))
        plt.plot(list(d.xs), list(d.ys), marker="braille", color=plot_colour(self.app, d.colour))
        with contextlib.suppress(OSError, ValueError, ZeroDivisionError):
            return Text.from_ansi(plt.build(), no_wrap=True, end="")
        return Text(d.title, style="dim")
