"""Audit log: durable JSONL appends, concurrency, torn lines, masking, rotation, filters."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import textwrap
import time
from pathlib import Path

import pytest

from console.audit import MASK, AuditLog, Outcome, mask_secrets, mask_text
from tests.conftest import PYTHON


class FakeClock:
    def __init__(self, t: float = 1_764_070_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_record_writes_one_complete_line(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", clock=FakeClock(1_764_070_000.25))
    entry = log.record("retune", worker="w1", caller_uid=0, caller_pid=4242,
                       args_before={"mem_fraction_static": 0.4},
                       args_after={"mem_fraction_static": 0.45},
                       outcome="rolled_back", duration_s=12.34567, detail="not ready in 120 s")
    lines = _lines(log.path)
    assert len(lines) == 1
    on_disk = json.loads(lines[0])
    assert on_disk == entry
    assert on_disk["ts"] == "2025-11-25T11:26:40.250Z"
    assert on_disk["epoch"] == 1_764_070_000.25
    assert on_disk["uid"] == 0 and on_disk["user"] == "root" and on_disk["pid"] == 4242
    assert on_disk["action"] == "retune" and on_disk["worker"] == "w1"
    assert on_disk["before"] == {"mem_fraction_static": 0.4}
    assert on_disk["after"] == {"mem_fraction_static": 0.45}
    assert on_disk["outcome"] == "rolled_back" and on_disk["duration_s"] == 12.346
    assert stat.S_IMODE(os.stat(log.path).st_mode) == 0o600


def test_supervisor_initiated_action_and_unknown_uid(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl")
    auto = log.record("restart", worker="w2", caller_uid=None, outcome=Outcome.OK)
    assert auto["user"] == "supervisor" and auto["uid"] is None
    ghost = log.record("drain", worker="w2", caller_uid=987_654, outcome="refused")
    assert ghost["user"] == "987654"


def test_bad_outcome_is_refused_and_nothing_written(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl")
    with pytest.raises(ValueError):
        log.record("drain", worker="w1", caller_uid=0, outcome="maybe")
    assert not log.path.exists()


def test_appends_accumulate_in_order(tmp_path: Path) -> None:
    clock = FakeClock()
    log = AuditLog(tmp_path / "a.jsonl", clock=clock)
    for i in range(5):
        clock.t += 1
        log.record("drain", worker=f"w{i}", caller_uid=0, outcome="ok")
    assert [json.loads(x)["worker"] for x in _lines(log.path)] == [f"w{i}" for i in range(5)]
    assert [e["worker"] for e in log.read()] == [f"w{i}" for i in reversed(range(5))]


# ---------------------------------------------------------------- masking


def test_secrets_masked_on_disk(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl")
    log.record("retune", worker="w1", caller_uid=0, outcome="ok",
               args_before={"argv": ["python", "-m", "sglang.launch_server", "--api-key",
                                     "sk-live-123", "--port", "30001"],
                            "api_key": "sk-live-123", "max_total_tokens": 8192},
               args_after={"env": {"HF_TOKEN": "hf_abc"}, "password": "hunter2"},
               detail="probe: curl -H 'Authorization: Bearer sk-live-123' --api-key=sk-live-123")
    raw = log.path.read_text()
    for secret in ("sk-live-123", "hf_abc", "hunter2"):
        assert secret not in raw
    e = log.read()[0]
    assert e["before"]["argv"][3:6] == ["--api-key", MASK, "--port"]
    assert e["before"]["api_key"] == MASK
    assert e["before"]["max_total_tokens"] == 8192  # "tokens" is not a secret
    assert e["after"] == {"env": {"HF_TOKEN": MASK}, "password": MASK}


def test_mask_helpers() -> None:
    assert mask_text("--api-key abc --port 1") == f"--api-key {MASK} --port 1"
    assert mask_text("--admin-api-key=abc") == f"--admin-api-key={MASK}"
    assert mask_text('{"api_key": "abc"}') == f'{{"api_key": "{MASK}"}}'
    assert mask_text("max_total_tokens=5") == "max_total_tokens=5"
    assert mask_secrets(("--token", "t", "x")) == ["--token", MASK, "x"]
    assert mask_secrets({"api_key": None}) == {"api_key": None}  # nothing to hide


def test_custom_mask_function(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl",
                   mask=lambda v: "redacted" if isinstance(v, dict) else v)
    e = log.record("add", worker="w1", caller_uid=0, outcome="ok",
                   args_before=None, args_after={"port": 1})
    assert e["after"] == "redacted" and e["before"] is None


def test_oversized_entry_is_truncated_not_torn(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl", max_line_bytes=4096)
    e = log.record("validate", worker="w1", caller_uid=0, outcome="failed",
                   detail="x" * 100_000)
    assert e["detail"]["truncated"] is True
    assert len(log.path.read_bytes()) <= 4096


# ---------------------------------------------------------------- torn lines


def test_torn_last_line_is_tolerated_and_not_glued(tmp_path: Path) -> None:
    clock = FakeClock()
    log = AuditLog(tmp_path / "a.jsonl", clock=clock)
    log.record("drain", worker="w1", caller_uid=0, outcome="ok")
    with open(log.path, "ab") as f:  # a writer that died halfway through a line
        f.write(b'{"ts":"2025-11-25T11:26:40Z","action":"resta')
    assert [e["worker"] for e in log.read()] == ["w1"]
    clock.t += 1
    log.record("undrain", worker="w2", caller_uid=0, outcome="ok")
    assert [e["action"] for e in log.read()] == ["undrain", "drain"]


# ---------------------------------------------------------------- concurrency

_WRITER = textwrap.dedent("""
    import os, sys, time
    from console.audit import AuditLog
    path, tag, n, max_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    log = AuditLog(path, max_bytes=max_bytes, keep=1000)
    deadline = time.monotonic() + 30
    while not os.path.exists(path + ".go") and time.monotonic() < deadline:
        time.sleep(0.005)  # start together, so the writes really overlap
    for i in range(n):
        log.record("drain", worker=tag, caller_uid=0, outcome="ok",
                   detail={"seq": i, "pad": tag * 3000})
    print("done", flush=True)
""")


def _run_writers(tmp_path: Path, procs, n: int, max_bytes: int) -> AuditLog:
    path = tmp_path / "audit.jsonl"
    children = []
    for tag in ("a", "b"):
        children.append(procs.spawn([PYTHON, "-c", _WRITER, str(path), tag, str(n),
                                     str(max_bytes)], log=tmp_path / f"{tag}.out"))
    time.sleep(0.3)
    (tmp_path / "audit.jsonl.go").touch()
    for child in children:
        assert child.wait(timeout=90) == 0, (tmp_path / "a.out").read_text()
    return AuditLog(path, max_bytes=max_bytes, keep=1000)


def _check_complete(log: AuditLog, n: int) -> None:
    raw_lines = [ln for p in log.files() for ln in p.read_bytes().split(b"\n") if ln]
    entries = [json.loads(ln) for ln in raw_lines]  # any interleaving would fail here
    assert len(entries) == 2 * n
    for tag in ("a", "b"):
        seqs = sorted(e["detail"]["seq"] for e in entries if e["worker"] == tag)
        assert seqs == list(range(n))
        assert all(e["detail"]["pad"] == tag * 3000 for e in entries if e["worker"] == tag)


def test_two_processes_append_without_interleaving(tmp_path: Path, procs) -> None:
    log = _run_writers(tmp_path, procs, n=150, max_bytes=1 << 30)
    assert log.files() == [log.path]
    _check_complete(log, 150)
    order = [json.loads(ln)["worker"] for ln in _lines(log.path)]
    switches = sum(1 for x, y in zip(order, order[1:], strict=False) if x != y)
    assert switches >= 2, "the two writers did not overlap: the test proved nothing"
    newest_first = log.read(worker="a")
    assert [e["detail"]["seq"] for e in newest_first] == list(reversed(range(150)))


def test_two_processes_with_rotation_lose_nothing(tmp_path: Path, procs) -> None:
    log = _run_writers(tmp_path, procs, n=100, max_bytes=40_000)
    assert len(log.files()) > 5  # rotation really happened under contention
    for p in log.files():
        assert p.stat().st_size <= 40_000
    _check_complete(log, 100)


# ---------------------------------------------------------------- rotation


def test_rotation_keeps_n_old_files_and_reads_across_them(tmp_path: Path) -> None:
    clock = FakeClock()
    log = AuditLog(tmp_path / "a.jsonl", max_bytes=1000, keep=2, clock=clock)
    for i in range(40):
        clock.t += 1
        log.record("drain", worker=f"w{i}", caller_uid=0, outcome="ok")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["a.jsonl", "a.jsonl.1", "a.jsonl.2"]
    for p in log.files():
        assert p.stat().st_size <= 1000
    got = [e["worker"] for e in log.read()]
    assert got[0] == "w39"
    assert got == [f"w{i}" for i in range(39, 39 - len(got), -1)]  # contiguous, newest first
    assert len(got) < 40  # the oldest were dropped with the file beyond `keep`
    newest_in_oldest_file = json.loads(_lines(tmp_path / "a.jsonl.2")[-1])["worker"]
    assert newest_in_oldest_file in got


def test_keep_zero_truncates_by_rotation(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl", max_bytes=600, keep=0)
    for i in range(20):
        log.record("drain", worker=f"w{i}", caller_uid=0, outcome="ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]
    assert log.read()[0]["worker"] == "w19"


# ---------------------------------------------------------------- filters


def _populated(tmp_path: Path) -> AuditLog:
    clock = FakeClock(1000.0)
    log = AuditLog(tmp_path / "a.jsonl", clock=clock)
    for i, (action, worker) in enumerate([("drain", "w1"), ("restart", "w2"), ("drain", "w2"),
                                          ("retune", "w1"), ("drain", "w1")]):
        clock.t = 1000.0 + i * 10
        log.record(action, worker=worker, caller_uid=0, outcome="ok")
    return log


def test_filters(tmp_path: Path) -> None:
    log = _populated(tmp_path)
    assert [e["epoch"] for e in log.read()] == [1040, 1030, 1020, 1010, 1000]
    assert [e["epoch"] for e in log.read(limit=2)] == [1040, 1030]
    assert [e["epoch"] for e in log.read(worker="w1")] == [1040, 1030, 1000]
    assert [e["epoch"] for e in log.read(action="drain")] == [1040, 1020, 1000]
    assert [e["epoch"] for e in log.read(action="drain", worker="w2")] == [1020]
    assert [e["epoch"] for e in log.read(since=1020)] == [1040, 1030, 1020]
    since_dt = dt.datetime.fromtimestamp(1025, dt.timezone.utc)
    assert [e["epoch"] for e in log.read(since=since_dt, worker="w1")] == [1040, 1030]
    assert log.read(limit=0) == []
    assert log.read(worker="nobody") == []


def test_read_of_missing_log_is_empty(tmp_path: Path) -> None:
    assert AuditLog(tmp_path / "none.jsonl").read() == []


def test_record_is_fast_enough(tmp_path: Path) -> None:
    """fsync per entry: operator actions are rare, but a burst must not stall the loop."""
    log = AuditLog(tmp_path / "a.jsonl")
    t0 = time.perf_counter()
    for _ in range(50):
        log.record("drain", worker="w1", caller_uid=0, outcome="ok")
    per_entry = (time.perf_counter() - t0) / 50
    assert per_entry < 0.2, per_entry
