"""Textual themes of the embedops console, and the stylesheet that uses them.

Themes carry colours only; `embedops.tcss` (next to this file) carries layout and says
which theme variable each part of the screen uses. Three themes ship:

* ``embedops-dark`` (default): truecolor, dark background.
* ``embedops-light``: truecolor, light background.
* ``embedops-ansi``: only the terminal's own 16 ANSI colours and its default
  background, for tmux, the Linux console and SSH clients without truecolor.

Worker states are never told by colour alone: every state also has a symbol and a word
(see `console.tui.fmt.STATE_SYMBOLS`).
"""

from __future__ import annotations

from pathlib import Path

from textual.theme import BUILTIN_THEMES, Theme

STYLESHEET: Path = Path(__file__).with_name("embedops.tcss")
"""The console's stylesheet (layout, and which theme variables each widget uses)."""

DARK = Theme(
    name="embedops-dark",
    primary="#3B8EEA",
    secondary="#6C8EBF",
    accent="#C792EA",
    warning="#E5A50A",
    error="#E0565B",
    success="#4EBF71",
    foreground="#D8DEE9",
    background="#11151C",
    surface="#171C25",
    panel="#1F2633",
    dark=True,
    variables={
        "footer-key-foreground": "#3B8EEA",
        "block-cursor-background": "#2B4A73",
        "block-cursor-foreground": "#FFFFFF",
        "block-cursor-text-style": "bold",
    },
)

LIGHT = Theme(
    name="embedops-light",
    primary="#1F5FAD",
    secondary="#4A6A94",
    accent="#8839A8",
    warning="#A8650A",
    error="#C0262D",
    success="#237A3B",
    foreground="#1E2430",
    background="#F4F5F7",
    surface="#E9ECF0",
    panel="#DDE2E8",
    dark=False,
    variables={
        "footer-key-foreground": "#1F5FAD",
        "block-cursor-background": "#BCD3F0",
        "block-cursor-foreground": "#10151C",
        "block-cursor-text-style": "bold",
    },
)

_ANSI_BASE = BUILTIN_THEMES["ansi-dark"]
ANSI = Theme(
    name="embedops-ansi",
    ansi=True,
    primary="ansi_blue",
    secondary="ansi_cyan",
    accent="ansi_magenta",
    warning="ansi_yellow",
    error="ansi_red",
    success="ansi_green",
    foreground="ansi_default",
    background="ansi_default",
    surface="ansi_default",
    panel="ansi_default",
    boost="ansi_default",
    dark=True,
    variables={
        **_ANSI_BASE.variables,
        "footer-key-foreground": "ansi_bright_blue",
        "block-cursor-background": "ansi_blue",
        "block-cursor-foreground": "ansi_bright_white",
        "block-cursor-text-style": "bold",
    },
)

THEMES: dict[str, Theme] = {t.name: t for t in (DARK, LIGHT, ANSI)}
"""The themes embedops registers, by name, in the order `t` cycles through them."""

DEFAULT_THEME = DARK.name
"""Used when neither ``--theme`` nor the saved preference names a known theme."""


ALIASES: dict[str, str] = {"dark": DARK.name, "light": LIGHT.name, "ansi": ANSI.name}
"""Short names accepted by ``--theme`` (``embedops --theme ansi``)."""


def resolve_theme(name: str | None) -> str | None:
    """The full theme name for `name` (alias or full name), or None when unknown."""
    if not name:
        return None
    full = ALIASES.get(name, name)
    return full if full in THEMES or full in BUILTIN_THEMES else None


def is_known_theme(name: str | None) -> bool:
    """Whether `name` is one of ours (or an alias of one) or a Textual built-in theme."""
    return resolve_theme(name) is not None


def next_theme(current: str) -> str:
    """The theme after `current` in the cycle `t` walks (ours only)."""
    names = list(THEMES)
    if current not in names:
        return names[0]
    return names[(names.index(current) + 1) % len(names)]
