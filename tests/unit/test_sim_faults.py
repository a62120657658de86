"""Fault switches: flag parsing, partial updates, clear, validation."""

from __future__ import annotations

import pytest

from backends.sim.faults import FaultError, Faults, parse_fault_flags


def test_flags_parse_names_values_and_startup_fail() -> None:
    faults, startup = parse_fault_flags(
        ["hang", "slow-ms=250", "error_rate=0.5", "crash_after_s=3", "nan=false",
         "startup-fail", "leak_mib_s=100"])
    assert startup is True
    assert faults.hang and not faults.nan
    assert (faults.slow_ms, faults.error_rate, faults.crash_after_s, faults.leak_mib_s) == \
        (250.0, 0.5, 3.0, 100.0)
    assert parse_fault_flags([]) == (Faults(), False)
    assert parse_fault_flags(["crash_after_s"])[0].crash_after_s == 0.0


@pytest.mark.parametrize("spec", ["bogus", "slow_ms", "slow_ms=fast", "error_rate=2",
                                  "hang=maybe", "leak_mib_s=-1"])
def test_bad_flags_are_rejected(spec: str) -> None:
    with pytest.raises(FaultError):
        parse_fault_flags([spec])


def test_updates_are_partial_and_clear_resets() -> None:
    f = Faults().updated({"stall": True, "slow_ms": 20})
    assert f.stall and f.slow_ms == 20.0 and not f.hang
    g = f.updated({"hang": True})
    assert g.stall and g.hang
    assert g.updated({"clear": True}) == Faults()
    assert g.updated({"clear": True, "nan": True}) == Faults(nan=True)
    assert f.updated({"crash_after_s": None}).crash_after_s is None
    assert set(Faults().to_json()) == {
        "hang", "stall", "unstable", "crash_after_s", "slow_ms", "error_rate", "nan",
        "wrong_dim", "leak_mib_s", "orphan_child", "freeze_scheduler"}


@pytest.mark.parametrize("patch", [{"nope": True}, {"hang": 1}, {"slow_ms": "x"},
                                   {"error_rate": 1.5}, {"startup_fail": True},
                                   {"clear": "yes"}, {"slow_ms": True}])
def test_bad_updates_are_rejected(patch: dict) -> None:
    with pytest.raises(FaultError):
        Faults().updated(patch)


def test_scheduler_part_holds_only_scheduler_switches() -> None:
    part = Faults(hang=True, nan=True, slow_ms=5).scheduler_part()
    assert part == {"hang": True, "stall": False, "unstable": False, "crash_after_s": None,
                    "slow_ms": 5.0, "leak_mib_s": 0.0}
