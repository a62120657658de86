"""`embedops demo` with the real TUI in a real terminal (a pty), start to quit.

The demo runs as a subprocess whose controlling terminal (stdin, stdout and stderr,
where Textual draws) is a pseudo-terminal of 100×30; the test reads what it draws, opens the help (`?`) to see the demo fault
keys listed, presses `q`, and checks that everything the demo started (supervisor,
router, workers, load generator: recorded by pid and start time from its state file
and output, never looked up by name) is gone and its temporary directory removed.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import psutil
import pytest

from tests.functional.test_cli_fleet import Recorded, clean_env, embedops_argv

# restarts take seconds each, and much longer on a loaded box
pytestmark = pytest.mark.timeout(300)

START_TIMEOUT_S = 90.0
ANSI = re.compile(rb"\x1b(\[[0-9;?<>=]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[=>78])")
STATE_DIR = re.compile(r"embedops demo: state directory (\S+)")
LOADGEN = re.compile(r"load generator at [\d.]+ req/s \(pid (\d+)\)")


class Terminal:
    """The master side of a pty: everything written so far, with escapes stripped."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.raw = bytearray()

    def pump(self, seconds: float = 0.1) -> None:
        """Read whatever arrived within `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(0.0, left))
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # EIO: the other side closed
                    return
                if not chunk:
                    return
                self.raw += chunk
            elif left <= 0:
                return

    @property
    def text(self) -> str:
        """The output as text, escape sequences removed."""
        return ANSI.sub(b"", bytes(self.raw)).decode("utf-8", "replace")

    def wait_for(self, pattern: str, timeout: float, proc: subprocess.Popen[bytes], *,
                 group: int = 0) -> str:
        """Pump until `pattern` shows up in the text; its first match (or that `group`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump(0.2)
            m = re.search(pattern, self.text)
            if m:
                return m.group(group)
            assert proc.poll() is None, f"the demo exited ({proc.returncode}):\n{self.text[-3000:]}"
        raise AssertionError(f"{pattern!r} not on screen within {timeout}s:\n{self.text[-3000:]}")

    def send(self, keys: bytes) -> None:
        """Type `keys`."""
        os.write(self.fd, keys)


def test_demo_opens_the_console_and_quitting_stops_everything(tmp_path: Path) -> None:
    tmp = tmp_path / "t"
    tmp.mkdir(mode=0o700)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = clean_env(TMPDIR=str(tmp), TERM="xterm-256color", COLUMNS="100", LINES="30",
                    EMBEDOPS_SIM_GPU_DIR=str(tmp_path / "gpu"),
                    XDG_CONFIG_HOME=str(tmp_path / "config"))
    # setsid --ctty: a new session (same pid: the child is no group leader) whose
    # controlling terminal is its stdin, the pty
    proc = subprocess.Popen(["setsid", "--ctty", *embedops_argv(), "demo", "--workers", "2",
                             "--rate", "5"],
                            stdin=slave, stdout=slave, stderr=slave, env=env, cwd=tmp_path)
    os.close(slave)
    term = Terminal(master)
    recorded = Recorded()
    state_dir: Path | None = None
    try:
        state_dir = Path(term.wait_for(STATE_DIR.pattern, 30, proc, group=1))
        pid = int(term.wait_for(LOADGEN.pattern, START_TIMEOUT_S, proc, group=1))
        if "backends.sim.loadgen" in psutil.Process(pid).cmdline():
            recorded.add(pid)
        # the console is up (Textual draws on stderr, here the pty too), on the demo
        # fleet, in demo mode, with both workers on its GPU panel
        term.wait_for(r"demo · engine sim", 30, proc)
        term.wait_for(r"DEMO", 30, proc)
        term.wait_for(r"sim0-a \d", 30, proc)
        term.wait_for(r"sim1-a \d", 30, proc)
        recorded.add_state_file(state_dir)
        assert len(recorded.procs) >= 5, recorded.procs  # supervisor, router, 2 workers, load
        assert len(recorded.alive()) >= 5

        term.send(b"?")
        term.wait_for(r"Demo faults", 15, proc)
        term.wait_for(r"Demo: crash the selected", 15, proc)
        term.send(b"q")  # closes the help
        term.pump(0.5)
        term.send(b"q")  # quits the console, and the demo stops the fleet
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            term.pump(0.2)
        assert proc.poll() == 0, term.text[-3000:]
        assert "embedops demo: stopping the fleet..." in term.text
        assert "Traceback" not in term.text
        assert recorded.alive() == []
        assert not state_dir.exists()
        assert list(tmp.iterdir()) == []
    finally:
        if state_dir is not None and state_dir.exists():
            recorded.add_state_file(state_dir)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the demo stops its fleet on SIGTERM
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # our child's own session
                proc.wait(10)
        recorded.kill_all()
        os.close(master)
