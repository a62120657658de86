"""Modal dialogs, confirmed in proportion to the blast radius of what they guard.

* `ConfirmDialog`: one worker restarts or dies; **Cancel has the focus**, Esc cancels.
* `TypedConfirmDialog`: the whole fleet is touched; the operator types the fleet name.
* `RetuneDialog`: a value form, validated before anything is sent.
* `ValidateDialog`: runs the checks and shows their table.
* `AlertPicker`: which alert to silence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from console.tui import data, fmt
from console.tui.data import Alert, Check
from console.tui.widgets.style import theme_style


class ConfirmDialog(ModalScreen[bool]):
    """Yes/no for an action on one worker. Cancel is focused; Esc or n cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,n", "cancel", "Cancel", show=False)]

    def __init__(self, title: str, body: str, confirm_label: str, *,
                 confirm_key: str | None = None, variant: str = "error") -> None:
        """`body` is Textual markup; `confirm_key` (e.g. ``y``) confirms without Tab."""
        super().__init__(classes="dialog-screen")
        self._title = title
        self._body = body
        self._confirm_label = confirm_label
        self._confirm_key = confirm_key
        self._variant = variant

    def compose(self) -> ComposeResult:
        """Title, body, [Confirm] [Cancel]."""
        with Vertical(classes="dialog"):
            yield Label(self._title, classes="dialog-title")
            yield Static(self._body, classes="dialog-body")
            with Horizontal(classes="dialog-buttons"):
                label = self._confirm_label
                if self._confirm_key:
                    label += f" ({self._confirm_key})"
                yield Button(label, id="confirm", variant=self._variant)  # type: ignore[arg-type]
                yield Button("Cancel (esc)", id="cancel", variant="default")

    def on_mount(self) -> None:
        """Cancel gets the focus: Enter alone never confirms."""
        self.query_one("#cancel", Button).focus()
        if self._confirm_key:
            self._bindings.bind(self._confirm_key, "confirm", "Confirm", show=False)

    def action_confirm(self) -> None:
        """Confirm."""
        self.dismiss(True)

    def action_cancel(self) -> None:
        """Cancel."""
        self.dismiss(False)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm")


class TypedConfirmDialog(ModalScreen[bool]):
    """Confirm a fleet-wide action by typing `expected` (the fleet name)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", show=False)]

    def __init__(self, title: str, body: str, expected: str, confirm_label: str) -> None:
        """`body` is Textual markup."""
        super().__init__(classes="dialog-screen")
        self._title = title
        self._body = body
        self.expected = expected
        self._confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        """Title, body, the input, [Confirm] [Cancel]."""
        with Vertical(classes="dialog"):
            yield Label(self._title, classes="dialog-title")
            yield Static(self._body, classes="dialog-body")
            yield Label(f"Type [b]{escape(self.expected)}[/] to confirm:")
            yield Input(placeholder=self.expected, id="typed")
            with Horizontal(classes="dialog-buttons"):
                yield Button(self._confirm_label, id="confirm", variant="error", disabled=True)
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        """Focus the input."""
        self.query_one("#typed", Input).focus()

    @on(Input.Changed, "#typed")
    def _changed(self, event: Input.Changed) -> None:
        self.query_one("#confirm", Button).disabled = event.value != self.expected

    @on(Input.Submitted, "#typed")
    def _submitted(self, event: Input.Submitted) -> None:
        if event.value == self.expected:
            self.dismiss(True)

    def action_cancel(self) -> None:
        """Cancel."""
        self.dismiss(False)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm")


def parse_mem_fraction(text: str, current: float | None) -> tuple[float | None, str]:
    """Validate a mem-fraction-static entry: a number strictly between 0 and 1.

    Returns (value, "") when valid, else (None, why).
    """
    raw = text.strip()
    if not raw:
        return None, "enter a value between 0 and 1 (exclusive)"
    try:
        value = float(raw)
    except ValueError:
        return None, f"{raw!r} is not a number"
    if not 0.0 < value < 1.0:
        return None, f"{value:g} is outside the valid range (0, 1), exclusive"
    if current is not None and abs(value - current) < 1e-9:
        return None, "that is the current value"
    return value, ""


class RetuneDialog(ModalScreen["float | None"]):
    """Ask for a new --mem-fraction-static; Apply is enabled only for a valid value."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", show=False)]

    def __init__(self, worker: str, current: float | None, gpu_total_mib: float | None) -> None:
        """`gpu_total_mib` lets the dialog say how much memory the value reserves."""
        super().__init__(classes="dialog-screen")
        self.worker = worker
        self.current = current
        self.gpu_total_mib = gpu_total_mib

    def compose(self) -> ComposeResult:
        """Explanation, the input with the current value, the validation line, buttons."""
        cur = fmt.fraction(self.current, fmt.NA)
        with Vertical(classes="dialog"):
            yield Label(f"Retune {escape(self.worker)}: --mem-fraction-static",
                        classes="dialog-title")
            yield Static(
                f"Current value [b]{cur}[/]. Valid range: [b](0, 1)[/], exclusive.\n"
                "Share of the GPU's memory SGLang reserves for weights and KV cache. "
                "Higher: more KV cache (more concurrent and longer requests) but less headroom "
                "for other workers on this GPU, and OOM at start when it does not fit. "
                "Lower: leaves room for others, fewer requests at once.\n"
                "Applied by a restart with the new argument (drain first); if the worker does "
                "not become ready it is rolled back to the old value.",
                classes="dialog-body")
            yield Input(value="" if self.current is None else f"{self.current:g}",
                        id="value", placeholder="e.g. 0.42")
            yield Static("", id="effect", classes="dialog-note")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Apply (restart)", id="confirm", variant="warning", disabled=True)
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        """Focus the value."""
        self.query_one("#value", Input).focus()
        self._check(self.query_one("#value", Input).value)

    def _check(self, text: str) -> float | None:
        value, why = parse_mem_fraction(text, self.current)
        note = self.query_one("#effect", Static)
        if value is None:
            note.update(f"[$error]{escape(why)}[/]")
        else:
            reserve = "" if self.gpu_total_mib is None else \
                f" ≈ {value * self.gpu_total_mib:.0f} MiB of {self.gpu_total_mib:.0f} MiB"
            note.update(f"[$success]new value {value:g}{reserve}[/]")
        self.query_one("#confirm", Button).disabled = value is None
        return value

    @on(Input.Changed, "#value")
    def _changed(self, event: Input.Changed) -> None:
        self._check(event.value)

    @on(Input.Submitted, "#value")
    def _submitted(self, event: Input.Submitted) -> None:
        value = self._check(event.value)
        if value is not None:
            self.dismiss(value)

    def action_cancel(self) -> None:
        """Cancel."""
        self.dismiss(None)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "confirm":
            value = self._check(self.query_one("#value", Input).value)
            if value is not None:
                self.dismiss(value)
        else:
            self.dismiss(None)


class ValidateDialog(ModalScreen[None]):
    """Runs ``POST /v1/validate?wait=1`` for `target` and shows the check table."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,enter", "close", "Close", show=False)]

    def __init__(self, target: str, timeout_s: float = 180.0) -> None:
        """`target`: a worker name, ``balancer`` or a URL."""
        super().__init__(classes="dialog-screen")
        self.target = target
        self.timeout_s = timeout_s
        self.checks: list[Check] | None = None

    def compose(self) -> ComposeResult:
        """Title, status line, the check table."""
        with Vertical(classes="dialog wide"):
            yield Label(f"Validate {escape(self.target)}", classes="dialog-title")
            yield Static("running the checks…", id="status")
            yield DataTable(id="checks", cursor_type="none", show_cursor=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Close (esc)", id="close")

    def on_mount(self) -> None:
        """Start the checks."""
        table = self.query_one("#checks", DataTable)
        table.add_column("check", key="name")
        table.add_column("result", key="ok")
        table.add_column("detail", key="detail")
        self.query_one("#close", Button).focus()
        self._run()

    @work(exclusive=True, exit_on_error=False, group="validate")
    async def _run(self) -> None:
        result = await data.send(self.app.client, "/v1/validate",  # type: ignore[attr-defined]
                                 {"target": self.target}, params={"wait": 1},
                                 timeout=self.timeout_s)
        self.show_result(result)

    def show_result(self, result: data.ActionResult) -> None:
        """Fill the table from the reply (or say why there is none)."""
        status = self.query_one("#status", Static)
        report = data.validation_report(result.body)
        if not report:
            why = result.message or "no check report in the reply"
            status.update(f"[$error]validation not run: {escape(why)}[/]")
            return
        self.checks = data.parse_checks(result.body)
        table = self.query_one("#checks", DataTable)
        table.clear()
        for c in self.checks:
            verdict = Text("✓ pass", style=theme_style(self.app, "success", bold=True)) if c.ok \
                else Text("✖ FAIL", style=theme_style(self.app, "error", bold=True))
            table.add_row(c.name, verdict, c.detail)
        passed = sum(c.ok for c in self.checks)
        colour = "$success" if report.get("ok") is True else "$error"
        where = f" against {report['url']}" if isinstance(report.get("url"), str) else ""
        status.update(f"[{colour}]{passed}/{len(self.checks)} checks passed{escape(where)}[/]")

    def action_close(self) -> None:
        """Close."""
        self.dismiss(None)

    @on(Button.Pressed, "#close")
    def _pressed(self) -> None:
        self.dismiss(None)


class AlertPicker(ModalScreen["str | None"]):
    """Pick the alert to silence (30 min); the selected worker's first alert is highlighted."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", show=False)]

    def __init__(self, alerts: Sequence[Alert], preselect: str | None, now: float,
                 for_s: int = 1800) -> None:
        """`preselect` is an alert key; `now` is the snapshot time (for ages)."""
        super().__init__(classes="dialog-screen")
        self.alerts = list(alerts)
        self.preselect = preselect
        self.now = now
        self.for_s = for_s

    def compose(self) -> ComposeResult:
        """Title and the list."""
        with Vertical(classes="dialog wide"):
            yield Label(f"Silence an alert for {fmt.duration(self.for_s)} "
                        "(Enter silences, Esc cancels)", classes="dialog-title")
            options = []
            for a in self.alerts:
                who = f" {a.worker}" if a.worker else ""
                text = Text(f"{a.state:<7} {a.rule or a.key}{who}: {a.message} "
                            f"({fmt.age(a.since, self.now)})")
                options.append(Option(text, id=a.key))
            yield OptionList(*options, id="alert-choices")

    def on_mount(self) -> None:
        """Highlight the preselected alert."""
        ol = self.query_one("#alert-choices", OptionList)
        ol.focus()
        keys = [a.key for a in self.alerts]
        if self.preselect in keys:
            ol.highlighted = keys.index(self.preselect)
        elif keys:
            ol.highlighted = 0

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        """Cancel."""
        self.dismiss(None)
