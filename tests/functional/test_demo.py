"""`embedops demo --headless` as a real subprocess: a sim fleet behind a real
sglang-router with the load generator, status lines, and nothing left behind.

While the demo runs, every process it starts is recorded (pid + start time) from its
state directory and its output (the load generator's pid); those, and the demo's own
session, are what teardown kills if the demo did not clean up, never by name.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil
import pytest

from tests.functional.test_cli_fleet import Recorded, clean_env, embedops_argv, wait_for

START_TIMEOUT_S = 90.0
LOADGEN = re.compile(r"load generator at ([\d.]+) req/s \(pid (\d+)\)")
STATE_DIR = re.compile(r"^embedops demo: state directory (.+)$", re.MULTILINE)


@dataclass
class Demo:
    """One running `embedops demo`: its process, output so far, and what it started."""

    proc: subprocess.Popen[str]
    recorded: Recorded = field(default_factory=Recorded)
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    state_dir: Path | None = None
    loadgen_pid: int | None = None

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def observe(self) -> None:
        """Record the processes the demo has started so far."""
        text = self.stdout
        if self.state_dir is None and (m := STATE_DIR.search(text)):
            self.state_dir = Path(m.group(1))
        if self.state_dir is not None:
            self.recorded.add_state_file(self.state_dir)
        if self.loadgen_pid is None and (m := LOADGEN.search(text)):
            pid = int(m.group(2))
            try:
                if "backends.sim.loadgen" in psutil.Process(pid).cmdline():
                    self.recorded.add(pid)
            except psutil.Error:
                pass
            self.loadgen_pid = pid

    def tables(self) -> list[list[str]]:
        """The status tables printed so far, as lists of lines."""
        tables = []
        for block in self.stdout.split("\n\n"):  # a blank line ends each table
            lines = block.splitlines()
            head = next((i for i, line in enumerate(lines)
                         if line.startswith("fleet demo (sim)")), None)
            if head is not None:
                tables.append(lines[head:])
        return tables

    def wait(self, timeout: float) -> int:
        """Wait for the demo to exit (recording as it goes); its exit status."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.observe()
            time.sleep(0.2)
        return self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))

    def kill(self) -> None:
        """Teardown: the demo's session, then anything it recorded that still runs."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # start_new_session: pgid == pid
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        self.recorded.kill_all()


def start_demo(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Demo:
    proc = subprocess.Popen([*embedops_argv(), "demo", "--headless", *args], cwd=cwd,
                            env=clean_env(**(env or {})), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    demo = Demo(proc)
    for stream, sink in ((proc.stdout, demo.out), (proc.stderr, demo.err)):
        threading.Thread(target=_pump, args=(stream, sink), daemon=True).start()
    return demo


def _pump(stream: IO[str], sink: list[str]) -> None:
    for line in iter(stream.readline, ""):  # ends at EOF, when the demo exits
        sink.append(line)  # noqa: PERF402 - read meanwhile by the test thread


def ready_rows(table: list[str]) -> dict[str, str]:
    """name → state of the demo's workers (simN-x) in one status table."""
    rows = {}
    for line in table:
        parts = line.split()
        if parts and re.fullmatch(r"sim\d+-[a-z]", parts[0]):
            rows[parts[0]] = parts[1]
    return rows


# ------------------------------------------------------------------ --state-dir, --duration


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Demo, int, Path]]:
    """One demo run to its --duration in a kept state directory."""
    sd = tmp_path_factory.mktemp("demo") / "sd"
    demo = start_demo("--duration", "6", "--workers", "2", "--rate", "10",
                      "--state-dir", str(sd), cwd=sd.parent)
    try:
        code = demo.wait(START_TIMEOUT_S + 60)
        demo.observe()
        yield demo, code, sd
    finally:
        demo.kill()


def test_demo_prints_status_lines_with_ready_workers(finished: tuple[Demo, int, Path]) -> None:
    demo, code, sd = finished
    assert code == 0, demo.stdout + demo.stderr
    out = demo.stdout
    assert out.startswith("embedops demo: 2 simulated workers on 2 simulated 80 GB cards "
                          "behind sglang-router 127.0.0.1:")
    assert f"embedops demo: state directory {sd}\n" in out
    assert "embedops: 2/2 workers ready behind http://127.0.0.1:" in out
    tables = [t for t in demo.tables() if t[0].startswith("fleet demo (sim)")]
    assert len(tables) >= 2, out  # one every 2 s for 6 s
    for table in tables:
        assert table[1].split()[:3] == ["NAME", "STATE", "ROUTED"]
        assert ready_rows(table) == {"sim0-a": "ready", "sim1-a": "ready"}, table
    assert "embedops demo: stopping the fleet..." in demo.stderr
    assert "Traceback" not in demo.stderr


def test_demo_leaves_no_process_behind(finished: tuple[Demo, int, Path]) -> None:
    demo, code, sd = finished
    assert code == 0
    assert demo.loadgen_pid is not None and demo.loadgen_pid in demo.recorded.procs
    # supervisor, router, two workers, the load generator
    assert len(demo.recorded.procs) >= 5, demo.recorded.procs
    assert demo.recorded.alive() == []
    assert sd.is_dir() and (sd / "fleet.toml").is_file()  # --state-dir is kept
    assert not (sd / "control.sock").exists()
    state = (sd / "state.json").read_text()
    assert '"identity": null' in state and '"cmdline_hash"' not in state


def test_demo_load_went_through_the_router(finished: tuple[Demo, int, Path]) -> None:
    _, _, sd = finished
    summary = (sd / "loadgen.log").read_text()
    m = re.search(r"sent (\d+)\s+ok (\d+)\s+errors (\d+)", summary)
    assert m, summary
    sent, ok = int(m.group(1)), int(m.group(2))
    assert sent >= 20 and ok >= sent // 2, summary  # ~6 s at 10 req/s


def test_demo_load_sees_no_errors(finished: tuple[Demo, int, Path]) -> None:
    _, _, sd = finished
    summary = (sd / "loadgen.log").read_text()
    m = re.search(r"errors (\d+)", summary)
    assert m and int(m.group(1)) == 0, summary


# ------------------------------------------------------------------ temporary dir, SIGTERM


def test_demo_without_state_dir_cleans_up_its_temp_dir_on_sigterm(tmp_path: Path) -> None:
    tmp = tmp_path / "t"
    tmp.mkdir(mode=0o700)
    demo = start_demo("--workers", "2", "--rate", "10", cwd=tmp_path, env={"TMPDIR": str(tmp)})
    try:
        def both_ready() -> bool:
            demo.observe()
            assert demo.proc.poll() is None, demo.stdout + demo.stderr
            tables = demo.tables()
            return bool(tables) and ready_rows(tables[-1]) == {"sim0-a": "ready",
                                                               "sim1-a": "ready"}

        wait_for(both_ready, START_TIMEOUT_S, "a status line with both workers ready", 0.2)
        assert demo.state_dir is not None and demo.state_dir.parent == tmp
        assert demo.state_dir.name.startswith("embedops-demo-")
        assert demo.loadgen_pid is not None
        assert len(demo.recorded.procs) >= 5, demo.recorded.procs
        assert len(demo.recorded.alive()) >= 5

        demo.proc.send_signal(signal.SIGTERM)  # our own child, still running
        code = demo.wait(60)
        assert code == 128 + signal.SIGTERM, demo.stdout + demo.stderr
        assert "embedops demo: stopping the fleet..." in demo.stderr
        assert "Traceback" not in demo.stderr
        assert demo.recorded.alive() == []
        assert not demo.state_dir.exists()
        assert list(tmp.iterdir()) == []  # nothing else left in the temp dir either
    finally:
        demo.kill()
