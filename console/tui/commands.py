"""Command palette (ctrl+p): the action table once more, per worker ("Restart w1")."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING

from textual.command import DiscoveryHit, Hit, Hits, Provider

from console.tui.actions import ACTIONS, BOUND_BY_WIDGET

if TYPE_CHECKING:
    from console.tui.app import EmbedopsApp


class ActionCommands(Provider):
    """Every offered action; worker actions once per worker, the selected one first."""

    def _commands(self) -> Iterator[tuple[str, Callable[[], None], str]]:
        app: EmbedopsApp = self.app  # type: ignore[assignment]
        offered = app.offered_actions()
        snap = app.snapshot
        names = [w.name for w in snap.workers] if snap is not None else []
        selected = app.selected_worker_name()
        if selected in names:
            names.remove(selected)
            names.insert(0, selected)
        for spec in ACTIONS:
            if spec not in offered and spec.id not in BOUND_BY_WIDGET:
                continue
            if spec.scope in ("worker", "demo") or spec.id in ("detail", "logs"):
                for name in names:
                    yield (f"{spec.label} {name}", partial(app.perform, spec.id, name),
                           spec.help)
            else:
                yield spec.label, partial(app.perform, spec.id, None), spec.help

    async def discover(self) -> Hits:
        """Shown while the palette input is empty."""
        for title, callback, help_text in self._commands():
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        """Fuzzy-match the titles."""
        matcher = self.matcher(query)
        for title, callback, help_text in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)
