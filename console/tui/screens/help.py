"""Help (``?``): every key from the action table, what it does, and why one is off."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from console.tui.actions import ACTIONS, unavailable_reason

_SECTIONS = (("worker", "The selected worker"), ("fleet", "The fleet"),
             ("view", "Views"), ("demo", "Demo faults (simulated workers)"))
_SCREEN_KEYS = (
    ("ctrl+p", "Command palette: every action below, per worker"),
    ("f / p / /", "In a log: follow, pause, search"),
    ("w", "In a worker's detail: plot window 15 min, 1 h, 3 h"),
    ("esc", "Back / close / clear the filter"),
)


def help_markup(*, read_only: bool, demo: bool) -> str:
    """The help text: one line per key, grouped by what it acts on (demo faults first
    when they are live)."""
    out: list[str] = []
    # in the demo the fault keys are what a newcomer came for: list them first
    sections = sorted(_SECTIONS, key=lambda s: s[0] != "demo") if demo else _SECTIONS
    for scope, title in sections:
        specs = [a for a in ACTIONS if a.scope == scope]
        out.append(f"[b $primary]{title}[/]")
        for a in specs:
            why = unavailable_reason(a, read_only=read_only, demo=demo)
            key = escape(a.key_display)
            line = f"  [b]{key:>6}[/]  {escape(a.help)}"
            if a.confirm == "modal":
                line += " [$foreground-muted](confirmed)[/]"
            elif a.confirm == "typed":
                line += " [$foreground-muted](type the fleet name)[/]"
            if why:
                line = f"[$foreground-muted]{line} — off: {escape(why)}[/]"
            out.append(line)
        out.append("")
    out.append("[b $primary]Everywhere[/]")
    for key, text in _SCREEN_KEYS:
        out.append(f"  [b]{escape(key):>6}[/]  {escape(text)}")
    return "\n".join(out)


class HelpScreen(ModalScreen[None]):
    """All keys; Esc, q or ? closes."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "close", "Close", show=False)]

    def __init__(self, *, read_only: bool, demo: bool) -> None:
        super().__init__(classes="dialog-screen")
        self.read_only = read_only
        self.demo = demo

    def compose(self) -> ComposeResult:
        """Title and the key list."""
        with Vertical(classes="dialog wide", id="help"):
            mode = " (read-only)" if self.read_only else ""
            yield Label(f"embedops keys{mode}", classes="dialog-title")
            with VerticalScroll(id="help-scroll"):
                yield Static(help_markup(read_only=self.read_only, demo=self.demo),
                             id="help-text")

    def action_close(self) -> None:
        """Close."""
        self.dismiss(None)
