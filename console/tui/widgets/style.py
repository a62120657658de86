"""Theme variables → Rich styles and plotext colours, for widgets that draw with Rich."""

from __future__ import annotations

from rich.style import Style
from textual.app import App
from textual.color import Color, ColorParseError

_PLOTEXT_ANSI = {
    "black": "black", "red": "red", "green": "green", "yellow": "yellow", "blue": "blue",
    "magenta": "magenta", "cyan": "cyan", "white": "white",
}


def _token(app: App[object], variable: str) -> str:
    raw = app.theme_variables.get(variable, "")
    return raw.split()[0] if raw else ""


def theme_style(app: App[object], variable: str, *, bold: bool = False,
                dim: bool = False) -> Style:
    """A Rich style whose colour is the theme's `variable` (``success``, ``error``...).

    ANSI themes give ANSI colours, so the terminal's own palette is used.
    """
    token = _token(app, variable)
    colour = None
    if token and token not in ("ansi_default", "transparent", "auto"):
        try:
            colour = Color.parse(token).rich_color
        except ColorParseError:
            colour = None
    return Style(color=colour, bold=bold, dim=dim)


def plot_colour(app: App[object], variable: str) -> str | tuple[int, int, int]:
    """A plotext colour for the theme's `variable`: a colour name on ANSI themes, else RGB."""
    token = _token(app, variable)
    if token.startswith("ansi_"):
        name = token[len("ansi_"):]
        bright = name.startswith("bright_")
        base = _PLOTEXT_ANSI.get(name.removeprefix("bright_"))
        if base is None:
            return "default"
        return base + "+" if bright else base
    try:
        c = Color.parse(token)
    except ColorParseError:
        return "default"
    return (c.r, c.g, c.b)
