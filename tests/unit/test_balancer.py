"""Pure parts of the balancer layer: URL normalisation, the drain loop (fake clock),
router argv, worker routability."""

from __future__ import annotations

import pytest

from backends.balancer import BalancerError, RoutedWorker, drain_with, normalize_url
from backends.balancer_router import LAUNCH_CODE, RouterSettings


class FakeClock:
    """Monotonic clock advanced only by the fake sleep."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def reader(values: list[object]):
    """Running-requests reader that returns (or raises) `values` in order, then repeats the last."""
    calls = {"n": 0}

    async def read() -> int | None:
        i = min(calls["n"], len(values) - 1)
        calls["n"] += 1
        v = values[i]
        if isinstance(v, Exception):
            raise v
        return v  # type: ignore[return-value]

    read.calls = calls  # type: ignore[attr-defined]
    return read


async def _removed() -> bool:
    return True


@pytest.mark.parametrize("given,expected", [
    ("http://127.0.0.1:30001", "http://127.0.0.1:30001"),
    ("http://127.0.0.1:30001/", "http://127.0.0.1:30001"),
    (" http://LOCALHOST:8 ", "http://localhost:8"),
    ("http://[::1]:9000", "http://[::1]:9000"),
])
def test_normalize_url_accepts_plain_http(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


@pytest.mark.parametrize("bad", [
    "https://127.0.0.1:1", "127.0.0.1:30001", "http://127.0.0.1", "http://127.0.0.1:30001/v1",
    "http://u:p@127.0.0.1:1", "http://127.0.0.1:1?x=1", "http://127.0.0.1:99999",
    "http://a;b:1", "http://a{b}:1",
])
def test_normalize_url_rejects_anything_else(bad: str) -> None:
    with pytest.raises(BalancerError):
        normalize_url(bad)


async def test_drain_needs_two_zero_readings_in_a_row() -> None:
    clock = FakeClock()
    read = reader([3, 1, 0, 2, 0, 0, 5])
    res = await drain_with("http://w:1", _removed, read, timeout_s=30, poll_s=0.2,
                           clock=clock, sleep=clock.sleep)
    assert res.drained and res.removed and res.in_flight == 0 and not res.timed_out
    assert read.calls["n"] == 6  # 3,1,0,2,0,0: the lone 0 after 1 did not end it
    assert res.elapsed_s == pytest.approx(5 * 0.2)


async def test_drain_times_out_with_last_reading() -> None:
    clock = FakeClock()
    res = await drain_with("http://w:1", _removed, reader([4]), timeout_s=1.0, poll_s=0.3,
                           clock=clock, sleep=clock.sleep)
    assert res.timed_out and not res.drained and res.in_flight == 4
    assert res.elapsed_s == pytest.approx(1.0)
    assert clock.sleeps[-1] == pytest.approx(0.1)  # last sleep clipped to the bound


async def test_drain_reader_errors_are_unknown_never_zero() -> None:
    clock = FakeClock()
    res = await drain_with("http://w:1", _removed, reader([OSError("refused"), None]),
                           timeout_s=0.5, poll_s=0.2, clock=clock, sleep=clock.sleep)
    assert res.timed_out and res.in_flight is None
    assert res.error == "OSError: refused"


async def test_drain_reports_when_worker_was_not_routed() -> None:
    clock = FakeClock()

    async def not_member() -> bool:
        return False

    res = await drain_with("http://w:1", not_member, reader([0]), timeout_s=5, poll_s=0.2,
                           clock=clock, sleep=clock.sleep)
    assert res.drained and not res.removed


async def test_drain_removes_before_first_reading() -> None:
    order: list[str] = []

    async def remove() -> bool:
        order.append("remove")
        return True

    async def read() -> int:
        order.append("read")
        return 0

    clock = FakeClock()
    await drain_with("http://w:1", remove, read, timeout_s=5, clock=clock, sleep=clock.sleep)
    assert order == ["remove", "read", "read"]


def test_router_launch_uses_tuned_flags_loopback_and_offline_hub() -> None:
    s = RouterSettings(port=18000, prometheus_port=18090, request_timeout_s=45)
    cmd = s.launch()
    argv = list(cmd.argv)
    assert argv[1:3] == ["-c", LAUNCH_CODE]
    assert "mini_lb" not in LAUNCH_CODE and "launch_router" not in LAUNCH_CODE

    def flag(name: str) -> str:
        return argv[argv.index(name) + 1]

    assert flag("--host") == "127.0.0.1" and flag("--prometheus-host") == "127.0.0.1"
    assert flag("--port") == "18000" and flag("--prometheus-port") == "18090"
    assert flag("--policy") == "round_robin" and flag("--log-level") == "warn"
    assert flag("--request-timeout-secs") == "45"
    assert flag("--health-check-interval-secs") == "2"
    assert flag("--health-check-timeout-secs") == "3"
    assert flag("--health-failure-threshold") == "2"
    assert flag("--health-success-threshold") == "1"
    assert flag("--cb-failure-threshold") == "3"
    assert flag("--cb-timeout-duration-secs") == "10"
    assert cmd.env == {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    assert s.url == "http://127.0.0.1:18000"


@pytest.mark.parametrize("w,routable", [
    (RoutedWorker("http://a:1", True, circuit="closed"), True),
    (RoutedWorker("http://a:1", None), True),
    (RoutedWorker("http://a:1", False), False),
    (RoutedWorker("http://a:1", True, circuit="open"), False),
    (RoutedWorker("http://a:1", True, circuit="half_open"), True),
    (RoutedWorker("http://a:1", False, pending=True), False),
])
def test_routable(w: RoutedWorker, routable: bool) -> None:
    assert w.routable is routable
