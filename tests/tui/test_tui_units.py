"""Pure parts of the console: parsing, formatting, column fitting, validation, the action
table, preferences, plot maths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from console.model import WorkerState
from console.tui import fmt
from console.tui.actions import ACTIONS, BY_ID, available, unavailable_reason
from console.tui.data import (
    AuditEntry,
    Event,
    Series,
    Snapshot,
    Worker,
    parse_checks,
    select_workers,
)
from console.tui.prefs import load_prefs, prefs_path, save_prefs
from console.tui.screens.detail import (
    argv_markup,
    drift_markup,
    events_markup,
    plots_from,
)
from console.tui.screens.dialogs import parse_mem_fraction
from console.tui.screens.help import help_markup
from console.tui.screens.timeline import merge
from console.tui.widgets.fleet_table import COLUMNS, PADDING, fit_columns, state_text
from console.tui.widgets.panels import bar, mem_colour
from console.tui.widgets.plot import points, trend_line, y_range
from tests.tui.static_supervisor import T0, default_snapshot, series_for
from themes import DEFAULT_THEME, THEMES, is_known_theme, next_theme, resolve_theme

# ---------------------------------------------------------------------------- parsing


def test_snapshot_parses_the_documented_schema() -> None:
    snap = Snapshot.parse(default_snapshot())
    assert snap.fleet == "demo" and snap.engine == "sim" and snap.time == T0
    assert [w.name for w in snap.workers] == ["w1", "w2", "w3", "w4", "ext1"]
    w2 = snap.worker("w2")
    assert w2 is not None and w2.action is not None
    assert w2.action.progress == "draining: 3 in flight"
    w4 = snap.worker("w4")
    assert w4 is not None and w4.p95_ms is None and w4.next_start_in_s == 8.0
    assert snap.gpus[1].workers == {"w3": 75800.0, "ext1": 2300.0}
    assert snap.alerts[0].key == "gpu_mem_and_p95/w3" and snap.alerts[0].since == T0 - 372
    assert snap.events[0].kind == "action"


def test_snapshot_parsing_tolerates_missing_and_mistyped_fields() -> None:
    snap = Snapshot.parse({"workers": [{"name": "x", "p95_ms": "fast", "gpu": True,
                                        "rps": float("nan"), "argv": "not a list"}, "junk"],
                           "gpus": [{"index": None, "used_mib": 5}], "alerts": "nope"})
    w = snap.workers[0]
    assert (w.name, w.state, w.p95_ms, w.gpu, w.rps, w.argv) == ("x", "unknown", None, None,
                                                                 None, ())
    assert snap.gpus[0].index == 0 and snap.gpus[0].used_mib == 5.0
    assert snap.alerts == () and snap.fleet == "fleet"
    with pytest.raises(TypeError):
        Snapshot.parse([])  # type: ignore[arg-type]


def test_alert_falls_back_to_model_field_names() -> None:
    snap = Snapshot.parse({"alerts": [{"key": "r[w]", "summary": "s", "active_at": 5.0}]})
    assert snap.alerts[0].message == "s" and snap.alerts[0].since == 5.0


def test_validation_report_nested_or_bare() -> None:
    checks = [{"name": "a", "ok": True, "detail": "d"}, {"name": "b", "ok": False}]
    nested = {"outcome": "failed", "report": {"ok": False, "checks": checks}}
    assert [(c.name, c.ok) for c in parse_checks(nested)] == [("a", True), ("b", False)]
    assert len(parse_checks({"ok": True, "checks": checks})) == 2
    assert parse_checks({"action_id": "x", "accepted": True}) == []


def test_select_workers_by_name_or_state() -> None:
    workers = Snapshot.parse(default_snapshot()).workers
    assert [w.name for w in select_workers(workers, "")] == ["w1", "w2", "w3", "w4", "ext1"]
    assert [w.name for w in select_workers(workers, " W3 ")] == ["w3"]
    assert [w.name for w in select_workers(workers, "unman")] == ["ext1"]
    assert [w.name for w in select_workers(workers, "w")] == ["w1", "w2", "w3", "w4"]


# ---------------------------------------------------------------------------- formatting


def test_every_lifecycle_state_has_a_symbol_and_a_colour() -> None:
    for state in WorkerState:
        assert fmt.STATE_SYMBOLS.get(state.value), state
        assert fmt.STATE_COLOURS.get(state.value), state
        assert fmt.state_label(state.value).endswith(state.value)
    assert len({fmt.STATE_SYMBOLS[s] for s in ("ready", "starting", "draining", "drained",
                                               "degraded", "crashed")}) == 6


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (42.9, "42s"), (192, "3m12s"),
                                          (7265, "2h01m"), (3 * 86400 + 4 * 3600, "3d04h"),
                                          (None, "–"), (-5, "0s")])
def test_duration(seconds: float | None, text: str) -> None:
    assert fmt.duration(seconds) == text


@pytest.mark.parametrize("seconds,text", [(600, "~10m"), (9720, "~2.7h"),
                                          (10 * 86400, "~10.0d"), (None, "N/A"), (-1, "N/A")])
def test_hours(seconds: float | None, text: str) -> None:
    assert fmt.hours(seconds) == text


def test_numbers_show_unknown_as_a_dash_not_zero() -> None:
    assert (fmt.ms(None), fmt.ms(9.14), fmt.ms(1412.4), fmt.ms(12345.0)) == ("–", "9.1", "1412",
                                                                              "12.3s")
    assert fmt.count(0) == "0" and fmt.count(None) == "–" and fmt.mib(None, fmt.NA) == "N/A"


def test_state_text_shows_action_progress_or_elapsed() -> None:
    w = Worker.parse({"name": "w", "state": "draining",
                      "action": {"name": "drain", "progress": "draining: 3 in flight"}})
    assert state_text(w, 0) == "▼ draining: 3 in flight"
    w = Worker.parse({"name": "w", "state": "starting",
                      "action": {"name": "restart", "progress": "", "started_at": 100.0}})
    assert state_text(w, 142.0) == "◐ restart 0:42"
    w = Worker.parse({"name": "w", "state": "starting", "uptime_s": 42})
    assert state_text(w, 0) == "◐ starting 0:42"


# ---------------------------------------------------------------------------- columns


def test_narrow_width_keeps_name_state_p95_gpu_mib() -> None:
    for width in (40, 60, 78):
        chosen = fit_columns(width, 6)
        keys = [c.key for c, _ in chosen]
        assert {"name", "state", "p95", "gpu_mib"} <= set(keys), width
        if width >= 60:
            assert sum(n + PADDING for _, n in chosen) <= width


def test_wide_width_shows_every_column_in_order() -> None:
    chosen = fit_columns(250, 6)
    assert [c.key for c, _ in chosen] == [c.key for c in COLUMNS]
    assert {c.key: n for c, n in chosen}["state"] >= 23


@pytest.mark.parametrize("width", [96, 100, 108, 118, 140])
def test_progress_reads_in_full_before_minor_columns(width: int) -> None:
    chosen = fit_columns(width, 6)
    widths = {c.key: n for c, n in chosen}
    assert widths["state"] >= len("▼ draining: 3 in flight"), width
    priorities = [c.priority for c in COLUMNS if c.key in widths]
    dropped = [c.priority for c in COLUMNS if c.key not in widths]
    # a less important column never shows while a more important one is dropped
    assert not dropped or max(priorities) <= min(dropped), (width, widths)


# ---------------------------------------------------------------------------- dialogs


@pytest.mark.parametrize("text,ok", [("0.5", True), (" 0.05 ", True), ("0.999", True),
                                     ("0", False), ("1", False), ("1.2", False), ("-0.1", False),
                                     ("", False), ("abc", False), ("0.42", False),
                                     ("nan", False), ("inf", False)])
def test_mem_fraction_validation(text: str, ok: bool) -> None:
    value, why = parse_mem_fraction(text, current=0.42)
    assert (value is not None) == ok, why
    assert (why == "") == ok


# ---------------------------------------------------------------------------- actions


def test_action_table_has_unique_ids_and_keys() -> None:
    assert len({a.id for a in ACTIONS}) == len(ACTIONS)
    assert len({a.key for a in ACTIONS}) == len(ACTIONS)
    for key in ("d", "r", "k", "m", "g", "R", "a", "v", "l", "slash", "s", "t", "q",
                "question_mark", "H", "C", "L", "S", "E", "X"):
        assert key in {a.key for a in ACTIONS}, key


def test_read_only_and_demo_filters() -> None:
    ro = list(available(ACTIONS, read_only=True, demo=True))
    assert ro and not any(a.writes for a in ro)
    assert {a.id for a in ro} >= {"quit", "help", "logs", "filter", "theme", "timeline"}
    normal = {a.id for a in available(ACTIONS, read_only=False, demo=False)}
    assert "restart" in normal and "fault_crash" not in normal
    demo = {a.id for a in available(ACTIONS, read_only=False, demo=True)}
    assert {"fault_hang", "fault_crash", "fault_leak", "fault_slow", "fault_errors",
            "fault_clear"} <= demo
    assert unavailable_reason(BY_ID["kill"], read_only=True, demo=False) == "read-only"
    assert unavailable_reason(BY_ID["kill"], read_only=False, demo=False) is None


def test_dangerous_actions_are_confirmed() -> None:
    assert BY_ID["restart"].confirm == "modal" and BY_ID["kill"].confirm == "modal"
    assert BY_ID["rollout"].confirm == "typed" and BY_ID["retune"].confirm == "form"


def test_help_lists_every_key_with_demo_section() -> None:
    text = help_markup(read_only=False, demo=False)
    for a in ACTIONS:
        assert f"{a.key_display:>6}" in text or a.key_display in text, a.id
    assert "off: demo only" in text and "off: read-only" not in text
    ro = help_markup(read_only=True, demo=True)
    assert ro.count("off: read-only") == sum(1 for a in ACTIONS if a.writes)


# ---------------------------------------------------------------------------- detail


def test_argv_markup_highlights_drifted_flags() -> None:
    argv = ["python", "-m", "sglang.launch_server", "--mem-fraction-static", "0.40",
            "--api-key", "****"]
    drift: dict[str, dict[str, object]] = {
             "mem_fraction_static": {"config": 0.42, "current": 0.40},
             "chunked_prefill_size": {"config": 4096, "current": None}}
    text = argv_markup(argv, drift)
    lines = text.splitlines()
    assert lines[0] == "python -m sglang.launch_server"
    assert "--mem-fraction-static 0.40[/] [$warning]≠ config 0.42" in text
    assert "(no --chunked-prefill-size)" in text
    assert "  --api-key ****" in lines
    assert "match the config" in drift_markup({})
    assert "config 0.42 → running 0.4" in drift_markup({k: v for k, v in drift.items()
                                                         if k.startswith("mem")})


def test_events_markup_only_this_worker_newest_first() -> None:
    snap = Snapshot.parse(default_snapshot())
    text = events_markup(snap.events, "w3", snap.time)
    assert "retune" in text and "crashed" not in text
    assert text.index("5m00s") < text.index("6m12s")
    assert "no events" in events_markup(snap.events, "w1", snap.time)


def test_plots_from_series_with_leak() -> None:
    s = Series.parse(series_for("w3"))
    p95, _rps, mem = plots_from(s)
    assert len(p95.ys) == 89 and p95.xs[0] == -15.0 and p95.xs[-1] == 0.0
    assert mem.trend is not None and "full in ~2.7h" in mem.title
    (x0, y0), (x1, y1) = mem.trend
    assert (y1 - y0) / (x1 - x0) == pytest.approx(7200 / 60)
    _, _, flat = plots_from(Series.parse(series_for("w1")))
    assert flat.trend is None and "leak" not in flat.title


def test_points_trend_and_range() -> None:
    xs, ys = points([0.0, 60.0, 120.0], [1.0, None, 3.0])
    assert xs == (-2.0, 0.0) and ys == (1.0, 3.0)
    assert trend_line([0.0], [1.0], 10.0) is None
    assert trend_line([0.0, 1.0], [0.0, 2.0], None) is None
    lo, hi = y_range([34000.0, 34001.0])
    assert hi - lo >= 0.02 * 34000 and lo < 34000 and hi > 34001
    lo, hi = y_range([0.0, 0.0])
    assert lo == 0.0 and hi > 0


def test_timeline_merge_newest_first() -> None:
    audit = [AuditEntry.parse({"epoch": 10.0, "user": "u", "action": "drain", "worker": "w1",
                               "outcome": "ok", "before": None, "after": None})]
    events = [Event.parse({"time": 20.0, "kind": "state", "worker": "w1", "message": "m"}),
              Event.parse({"time": 5.0, "kind": "alert", "worker": "w2", "message": "a"})]
    rows = merge(audit, events)
    assert [r.time for r in rows] == [20.0, 10.0, 5.0]
    assert rows[1].source == "audit" and "by u" in rows[1].detail
    assert [r.worker for r in rows if r.matches("W2")] == ["w2"]


# ---------------------------------------------------------------------------- panels


def test_bar_and_memory_colour() -> None:
    assert bar(50, 100, 10) == "█████░░░░░"
    assert bar(None, 100, 4) == "░░░░" and bar(200, 100, 4) == "████"
    assert (mem_colour(95, 100), mem_colour(85, 100), mem_colour(10, 100),
            mem_colour(None, 100)) == ("error", "warning", "success", "foreground")


# ---------------------------------------------------------------------------- themes, prefs


def test_themes_include_dark_light_and_ansi() -> None:
    assert DEFAULT_THEME == "embedops-dark"
    assert THEMES["embedops-dark"].dark and not THEMES["embedops-light"].dark
    assert THEMES["embedops-ansi"].ansi
    assert all((v or "").startswith("ansi_") for v in (THEMES["embedops-ansi"].primary,
                                                       THEMES["embedops-ansi"].error))
    assert next_theme("embedops-dark") == "embedops-light"
    assert next_theme("embedops-ansi") == "embedops-dark"
    assert next_theme("nord") == "embedops-dark"
    assert is_known_theme("nord") and not is_known_theme("nope") and not is_known_theme(None)
    assert resolve_theme("ansi") == "embedops-ansi" and resolve_theme("dark") == "embedops-dark"
    assert resolve_theme("embedops-light") == "embedops-light" and resolve_theme("x") is None


def test_prefs_roundtrip_in_xdg_config_home(_private_config: Path) -> None:
    assert prefs_path() == _private_config / "embedops" / "ui.json"
    assert load_prefs() == {}
    assert save_prefs({"theme": "embedops-ansi"})
    assert save_prefs({"other": 1})
    assert json.loads(prefs_path().read_text()) == {"theme": "embedops-ansi", "other": 1}
    prefs_path().write_text("{broken")
    assert load_prefs() == {}


def test_argv_secrets_are_masked_even_if_sent_in_clear() -> None:
    text = argv_markup(["python", "--api-key", "sk-live-123", "--port", "1"], {})
    assert "sk-live-123" not in text and "--api-key ****" in text
