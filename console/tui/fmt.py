"""Text formatting for the console: numbers, durations, ages, state symbols. Pure functions.

Every value the supervisor does not know arrives as None and is shown as ``N/A`` (or a
dash in dense table cells), never as 0.
"""

from __future__ import annotations

import math

NA = "N/A"
DASH = "–"

STATE_SYMBOLS: dict[str, str] = {
    "ready": "●",
    "starting": "◐",
    "degraded": "!",
    "ejected": "⊘",
    "restarting": "↻",
    "draining": "▼",
    "drained": "⏸",
    "stopping": "■",
    "stopped": "○",
    "crashed": "✖",
    "backoff": "◌",
    "failed": "✖",
    "unmanaged": "◇",
}
"""A symbol per worker state, so states read without colour."""

STATE_COLOURS: dict[str, str] = {
    "ready": "success",
    "starting": "primary",
    "degraded": "warning",
    "ejected": "error",
    "restarting": "primary",
    "draining": "warning",
    "drained": "secondary",
    "stopping": "secondary",
    "stopped": "foreground-muted",
    "crashed": "error",
    "backoff": "warning",
    "failed": "error",
    "unmanaged": "accent",
}
"""The theme variable each state is drawn in."""

SEVERITY_COLOURS: dict[str, str] = {"critical": "error", "warning": "warning", "info": "primary"}
OUTCOME_COLOURS: dict[str, str] = {"ok": "success", "failed": "error",
                                   "rolled_back": "warning", "refused": "warning"}


def state_symbol(state: str) -> str:
    """The symbol for `state` (``?`` for states this console does not know)."""
    return STATE_SYMBOLS.get(state, "?")


def state_label(state: str) -> str:
    """Symbol and word, e.g. ``● ready``."""
    return f"{state_symbol(state)} {state}"


def state_colour(state: str) -> str:
    """Theme variable for `state`."""
    return STATE_COLOURS.get(state, "foreground")


def ms(value: float | None, na: str = DASH) -> str:
    """Milliseconds: ``9.1`` below 100, ``140`` below 10 000, then seconds ``12.3s``."""
    if value is None:
        return na
    if value < 100:
        return f"{value:.1f}"
    if value < 10_000:
        return f"{value:.0f}"
    return f"{value / 1000:.1f}s"


def rate(value: float | None, na: str = DASH) -> str:
    """Requests per second."""
    if value is None:
        return na
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def count(value: int | None, na: str = DASH) -> str:
    """A plain integer."""
    return na if value is None else str(value)


def mib(value: float | None, na: str = DASH) -> str:
    """MiB as a whole number (``34000``), ``N/A`` when unknown."""
    if value is None:
        return na
    return f"{value:.0f}"


def gib(value_mib: float | None, na: str = NA) -> str:
    """MiB shown in GiB with one decimal (``33.2G``)."""
    if value_mib is None:
        return na
    return f"{value_mib / 1024:.1f}G"


def fraction(value: float | None, na: str = DASH) -> str:
    """A fraction such as mem-fraction-static (``0.42``)."""
    return na if value is None else f"{value:.2f}"


def pct(value: float | None, na: str = NA) -> str:
    """A percentage (``40%``)."""
    return na if value is None else f"{value:.0f}%"


def yes_no(value: bool | None, yes: str = "yes", no: str = "no", na: str = DASH) -> str:
    """A boolean as a word."""
    if value is None:
        return na
    return yes if value else no


def duration(seconds: float | None, na: str = DASH) -> str:
    """A duration: ``42s``, ``3m12s``, ``2h05m``, ``3d04h``."""
    if seconds is None or not math.isfinite(seconds):
        return na
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def clock(seconds: float | None, na: str = DASH) -> str:
    """An elapsed time as a clock: ``0:42``, ``12:03``, ``1:02:03``."""
    if seconds is None or not math.isfinite(seconds):
        return na
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def age(since: float | None, now: float, na: str = DASH) -> str:
    """How long ago `since` was, relative to `now` (``3m12s``)."""
    if since is None:
        return na
    return duration(now - since, na)


def hours(seconds: float | None, na: str = NA) -> str:
    """A horizon such as time-to-full: ``~42m``, ``~3.2h``, ``~4.5d``."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return na
    if seconds < 3600:
        return f"~{max(1, round(seconds / 60))}m"
    if seconds < 4 * 86400:
        return f"~{seconds / 3600:.1f}h"
    return f"~{seconds / 86400:.1f}d"


def activity(action_name: str | None, progress: str | None, started_at: float | None,
             now: float) -> str:
    """What a running action is doing: its progress line, else ``name 0:42``."""
    if not action_name:
        return ""
    if progress:
        return progress
    if started_at is None:
        return action_name
    return f"{action_name} {clock(now - started_at)}"


def truncate(text: str, width: int) -> str:
    """`text` cut to `width` cells with an ellipsis."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    return text[: max(0, width - 1)] + "…"
