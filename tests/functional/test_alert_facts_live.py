"""A config alert rule on ``error_rate`` fires on a live sim fleet, and its
``remediation = "drain"`` only drains: the worker leaves the balancer and its process
stays alive (same pid, no restart) for a human to look at.

Real supervisor (in-process), real sim workers, real sglang-router; the sim's ``errors``
fault (F4) answers a share of embedding requests with 500 while open-loop load runs
through the router. The error share is read from the worker's own
``sglang:http_responses_total`` counters.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psutil
import pytest

from tests.chaos.fleet import Fleet, Load, WorkerDef, row, running_fleet, summary

FOR_S = 2.0
ERROR_SHARE = 0.15  # of embedding requests; three failed probes in a row stay unlikely

RULES = f"""
[[alerts]]
name = "high_error_rate"
when = [{{ metric = "error_rate", op = ">", value = 0.05 }}]
for = "{FOR_S:g}s"
summary = "more than 5 % of requests fail"
auto_remediate = true
remediation = "drain"
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workers = [WorkerDef("w1", gpu=0), WorkerDef("w2", gpu=1)]
    # outlier ejection off: this is about the alert rule and its remediation (with it
    # on, the 15 % error share ejects w1 as an outlier within a scrape or two)
    with running_fleet(tmp_path_factory.mktemp("alert-facts"), workers, extra=RULES,
                       outlier=False) as f:
        yield f


def test_error_rate_rule_fires_and_drain_remediation_keeps_the_worker_alive(
        fleet: Fleet) -> None:
    fleet.wait_routed(["w1", "w2"], timeout_s=30)
    before = fleet.worker("w1")
    assert not [a for a in fleet.status()["alerts"] if a["rule"] == "high_error_rate"]
    with Load(fleet.router_url, rate=40, deadline_s=10) as load:
        time.sleep(1.0)
        t_fault = time.time()
        fleet.sim_faults("w1", {"error_rate": ERROR_SHARE})
        snap, _ = fleet.wait_for(lambda s: s if row(s, "w1")["state"] == "drained" else None,
                                 timeout_s=25, what="w1 drained by the high_error_rate rule")
        t_drained = time.time()
        report = load.stop()
    fleet.sim_faults("w1", {"clear": True})
    events = [e for e in reversed(fleet.events("w1")) if e["time"] >= t_fault]
    alerts = [e["message"] for e in events if e["kind"] == "alert"
              and e["message"].startswith("high_error_rate ")]
    assert alerts[:2] and alerts[0].startswith("high_error_rate pending"), alerts
    firing = next(m for m in alerts if m.startswith("high_error_rate firing"))
    assert "error_rate" in firing and "> 0.05" in firing, firing
    remediations = [e["message"] for e in events if e["kind"] == "remediation"]
    assert remediations == ["auto-remediation drain (high_error_rate)"], remediations
    print(f"\n[error_rate] drained {t_drained - t_fault:.1f} s after the fault ({firing}); "
          f"load {summary(report)}")
    # drained, not restarted: same process, alive, out of the balancer, no restart
    w1 = row(snap, "w1")
    assert w1["pid"] == before["pid"] and w1["restarts"] == before["restarts"], w1
    assert not w1["routed"]
    proc = psutil.Process(before["pid"])
    assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    time.sleep(1.5)  # still drained and alive a moment later (nothing restarts it)
    later = fleet.worker("w1")
    assert later["state"] == "drained" and later["pid"] == before["pid"], later
    assert row(fleet.status(), "w2")["routed"]  # the other worker carries the traffic
    audit = fleet.client().get("/v1/audit", params={"worker": "w1", "action": "drain"})
    assert audit["entries"] and audit["entries"][0]["outcome"] == "ok", audit
    assert report.sent >= 100, summary(report)
