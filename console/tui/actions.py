"""The one table of console actions: it feeds the key bindings, the footer, the help
screen, the command palette and the read-only filter, so they can never disagree.

Pure data (no Textual import): `console.tui.app` turns it into bindings.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

Scope = Literal["worker", "fleet", "view", "demo"]
Confirm = Literal["none", "modal", "typed", "form"]


@dataclass(frozen=True)
class ActionSpec:
    """One thing the operator can do."""

    id: str
    """Stable id: the binding id, and ``EmbedopsApp.action_act(id)``."""
    key: str
    """Textual key name (``d``, ``R``, ``slash``, ``question_mark``)."""
    label: str
    """Short footer label."""
    help: str
    """One sentence for the help screen and the palette."""
    scope: Scope
    """``worker`` acts on the selected worker, ``fleet`` on all, ``view`` only changes the screen."""
    writes: bool = False
    """Changes the fleet (needs a non-read-only client); never bound with ``--read-only``."""
    confirm: Confirm = "none"
    """How it is confirmed: Cancel-focused modal, typed fleet name, or a form."""
    footer: bool = True
    """Shown in the footer (everything is in the help screen)."""
    display: str | None = None
    """How the key is shown, when its Textual name is not what the operator types."""
    fault: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    """Demo only: the body of ``POST /v1/sim/{name}/fault``."""

    @property
    def key_display(self) -> str:
        """The key as the operator reads it."""
        return self.display or self.key


ACTIONS: tuple[ActionSpec, ...] = (
    ActionSpec("drain", "d", "Drain", "Drain the selected worker (take it out of the balancer, "
               "let in-flight requests finish) or undrain it when drained.",
               "worker", writes=True),
    ActionSpec("restart", "r", "Restart", "Restart the selected worker: drain, stop, start, "
               "wait until ready, undrain. Confirmed; Cancel is focused.",
               "worker", writes=True, confirm="modal"),
    ActionSpec("kill", "k", "Kill", "Kill the selected worker now (SIGTERM, then SIGKILL), "
               "in-flight requests fail. Confirmed; Cancel is focused.",
               "worker", writes=True, confirm="modal"),
    ActionSpec("retune", "m", "Mem-frac", "Retune --mem-fraction-static of the selected worker "
               "(restart with the new value; rolled back if it does not become ready).",
               "worker", writes=True, confirm="form"),
    ActionSpec("cuda_graph", "g", "CUDA graph", "Toggle CUDA graph for the selected worker "
               "(a restart with the new arguments). Shows whether SGLang honours it.",
               "worker", writes=True, confirm="modal"),
    ActionSpec("rollout", "R", "Roll all", "Rolling restart of every worker, one at a time, "
               "never below N-1 ready. Type the fleet name to confirm.",
               "fleet", writes=True, confirm="typed"),
    ActionSpec("adopt", "a", "Adopt", "Adopt the selected unmanaged SGLang server: drain, stop, "
               "relaunch under supervision with the same arguments.",
               "worker", writes=True, confirm="modal", footer=False),
    ActionSpec("validate", "v", "Validate", "Run the validation checks (bilingual, 32k text, "
               "empty input, dimensions) against the selected worker and show the results.",
               "worker", writes=True),
    ActionSpec("silence", "s", "Silence", "Silence an alert for 30 minutes (the selected "
               "worker's alert is preselected).",
               "fleet", writes=True, footer=False),
    ActionSpec("detail", "enter", "Detail", "Open the selected worker: plots, launch arguments, "
               "drift, events and its log.", "view", footer=False, display="enter"),
    ActionSpec("logs", "l", "Logs", "Live tail of the selected worker's log "
               "(f follow, p pause, / search).", "view"),
    ActionSpec("filter", "slash", "Filter", "Filter the fleet table by name or state "
               "(Esc clears).", "view", display="/"),
    ActionSpec("timeline", "e", "Timeline", "The audit log and events, newest first, "
               "filterable.", "view", footer=False),
    ActionSpec("theme", "t", "Theme", "Switch theme (dark, light, ANSI); remembered.",
               "view", footer=False),
    ActionSpec("help", "question_mark", "Help", "Every key and what it does.", "view",
               display="?"),
    ActionSpec("quit", "q", "Quit", "Quit the console; the fleet keeps running.", "view"),
    ActionSpec("fault_hang", "H", "Hang", "Demo: hang the selected simulated worker.",
               "demo", writes=True, footer=False, fault={"hang": True}),
    ActionSpec("fault_crash", "C", "Crash", "Demo: crash the selected simulated worker now.",
               "demo", writes=True, footer=False, fault={"crash_after_s": 0}),
    ActionSpec("fault_leak", "L", "Leak", "Demo: leak 200 MiB/s of GPU memory in the selected "
               "simulated worker.", "demo", writes=True, footer=False,
               fault={"leak_mib_s": 200}),
    ActionSpec("fault_slow", "S", "Slow", "Demo: make the selected simulated worker answer "
               "in 1.5 s.", "demo", writes=True, footer=False, fault={"slow_ms": 1500}),
    ActionSpec("fault_errors", "E", "Errors", "Demo: make the selected simulated worker fail "
               "every request.", "demo", writes=True, footer=False, fault={"error_rate": 1.0}),
    ActionSpec("fault_clear", "X", "Clear faults", "Demo: clear every fault of the selected "
               "simulated worker.", "demo", writes=True, footer=False, fault={"clear": True}),
)
"""Every action, in the order the help screen and the palette list them."""

BY_ID: dict[str, ActionSpec] = {a.id: a for a in ACTIONS}

BOUND_BY_WIDGET = frozenset({"detail"})
"""Actions whose key a widget already handles (Enter selects a table row)."""


def available(specs: Iterable[ActionSpec], *, read_only: bool, demo: bool) -> Iterator[ActionSpec]:
    """The actions this console may offer: no writes when read-only, demo keys only in demo."""
    for spec in specs:
        if spec.writes and read_only:
            continue
        if spec.scope == "demo" and not demo:
            continue
        yield spec


def unavailable_reason(spec: ActionSpec, *, read_only: bool, demo: bool) -> str | None:
    """Why `spec` is not offered now (for the help screen), or None when it is."""
    if spec.writes and read_only:
        return "read-only"
    if spec.scope == "demo" and not demo:
        return "demo only (embedops demo, simulated workers)"
    return None
