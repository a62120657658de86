"""Small read-only panels of the main screen: header, GPU panel, alerts strip, banner.

Each takes plain data and renders Textual markup with theme variables (``$success``),
so a theme switch recolours them without a re-render.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual.markup import escape
from textual.visual import VisualType
from textual.widgets import Static

from console.tui import fmt
from console.tui.data import Alert, Gpu, Snapshot

BAR_FULL = "█"
BAR_EMPTY = "░"


def bar(used: float | None, total: float | None, width: int) -> str:
    """A text bar ``█████░░░░░`` of `used`/`total`, `width` cells wide."""
    if used is None or not total or width <= 0:
        return BAR_EMPTY * max(width, 0)
    filled = round(max(0.0, min(1.0, used / total)) * width)
    return BAR_FULL * filled + BAR_EMPTY * (width - filled)


def mem_colour(used: float | None, total: float | None) -> str:
    """Theme variable for a memory level: error above 92 %, warning above 80 %."""
    if used is None or not total:
        return "foreground"
    share = used / total
    return "error" if share > 0.92 else "warning" if share > 0.80 else "success"


class LiveStatic(Static):
    """A `Static` refreshed every poll: an update with the markup it already shows (in
    the same theme) is skipped, so an unchanged panel costs no re-render."""

    _shown: tuple[str, str] | None = None

    def update(self, content: VisualType = "", *, layout: bool = True) -> None:
        """Show `content` unless it is the markup already shown."""
        if isinstance(content, str):
            key = (content, self.app.theme)
            if key == self._shown:
                return
            self._shown = key
        else:
            self._shown = None
        super().update(content, layout=layout)


class FleetHeader(LiveStatic):
    """Fleet name, engine, balancer state, fleet P95 and throughput, mode flags."""

    DEFAULT_CSS = "FleetHeader { height: 1; }"

    def show(self, snap: Snapshot | None, *, read_only: bool, demo: bool) -> None:
        """Render `snap` (None: nothing known yet)."""
        if snap is None:
            self.update("[b]embedops[/] · connecting to the supervisor…")
            return
        b = snap.balancer
        if b.healthy is None:
            bal = f"[$foreground-muted]? {escape(b.kind)}[/]"
        elif b.healthy:
            bal = f"[$success]● {escape(b.kind)}[/]"
        else:
            bal = f"[b $error]✖ {escape(b.kind)} down[/]"
        ready = sum(1 for w in snap.workers if w.state == "ready")
        parts = [
            f"[b]embedops[/] [b $primary]{escape(snap.fleet)}[/]",
            f"engine {escape(snap.engine)}",
            f"balancer {bal}",
            f"P95 [b]{fmt.ms(b.p95_ms, fmt.NA)}[/] ms",
            f"{fmt.rate(b.rps, fmt.NA)} req/s",
            f"ready {ready}/{len(snap.workers)}",
        ]
        if read_only or snap.read_only:
            parts.append("[b $warning]READ-ONLY[/]")
        if demo:
            parts.append("[b $accent]DEMO[/]")
        self.update(" · ".join(parts))


class Banner(LiveStatic):
    """A one-line warning shown when the supervisor does not answer."""

    DEFAULT_CSS = "Banner { height: auto; display: none; }"

    def show(self, message: str | None) -> None:
        """Show `message`, or hide the banner when None."""
        if message is None:
            self.display = False
            return
        self.update(f"[b]⚠ {escape(message)}[/]")
        self.display = True


class GpuPanel(LiveStatic):
    """Per GPU: used/total bar, utilisation, temperature, each worker's share."""

    DEFAULT_CSS = "GpuPanel { height: auto; }"

    def show(self, gpus: Sequence[Gpu], width: int) -> None:
        """Render `gpus` for a panel `width` cells wide."""
        if not gpus:
            self.update("[$foreground-muted]GPU: no devices reported[/]")
            return
        lines = [self._line(g, width) for g in gpus]
        self.update("\n".join(lines))

    @staticmethod
    def _line(g: Gpu, width: int) -> str:
        head = f"[b]GPU{g.index}[/] {escape(fmt.truncate(g.name, 14))}"
        if g.error:
            return f"{head} [$error]{escape(g.error)}[/]"
        colour = mem_colour(g.used_mib, g.total_mib)
        used = fmt.mib(g.used_mib, fmt.NA)
        total = fmt.mib(g.total_mib, fmt.NA)
        share = "" if g.used_mib is None or not g.total_mib else \
            f" {100 * g.used_mib / g.total_mib:3.0f}%"
        bar_width = 20 if width >= 110 else 10
        temp = fmt.NA if g.temperature_c is None else f"{g.temperature_c:.0f}°C"
        line = (f"{head} [{'$' + colour}]{bar(g.used_mib, g.total_mib, bar_width)}[/]"
                f" {used}/{total} MiB{share} · util {fmt.pct(g.util_pct)} · {temp}")
        held = sorted((n, m) for n, m in g.workers.items() if m >= 1)
        if held:
            shares = " · ".join(f"{escape(n)} {fmt.gib(m)}" for n, m in held)
            line += f" · {shares}" if width >= 110 else f"\n      {shares}"
        return line


class AlertsStrip(LiveStatic):
    """Pending and firing alerts with their age; silenced ones marked."""

    DEFAULT_CSS = "AlertsStrip { height: auto; max-height: 5; }"

    def show(self, alerts: Sequence[Alert], now: float) -> None:
        """Render `alerts`, firing first, as seen at `now` (the snapshot's time)."""
        if not alerts:
            self.update("[$success]✓ no alerts[/]")
            return
        order = {"firing": 0, "pending": 1}
        rows = sorted(alerts, key=lambda a: (order.get(a.state, 2), -(a.since or 0.0)))
        lines = []
        for a in rows:
            colour = fmt.SEVERITY_COLOURS.get(a.severity, "warning")
            mark = "▲ FIRING " if a.state == "firing" else "△ pending"
            who = f" {escape(a.worker)}" if a.worker else ""
            silenced = " [$foreground-muted](silenced)[/]" if a.silenced(now) else ""
            lines.append(f"[b ${colour}]{mark}[/] {escape(a.rule or a.key)}{who}: "
                         f"{escape(a.message)} [$foreground-muted]({fmt.age(a.since, now)})[/]"
                         f"{silenced}")
        self.update("\n".join(lines))
