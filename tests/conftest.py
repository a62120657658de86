"""Shared test plumbing: free loopback ports and process-group cleanup.

Every process a test starts is registered here by PID/process group and killed at
teardown by that recorded group, never by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MINIMAL_SIM_FLEET = """\
name = "t"
engine = "sim"

[model]
path = "m"

[defaults]
mem_fraction_static = 0.4

[[workers]]
name = "a"
gpu = 0
port = 31001
"""
"""The smallest valid fleet file (one sim worker) for config-level tests to extend."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, ok: Sequence[int] = (200,)) -> int:
    """Poll `url` until it answers with a status in `ok`; return that status.

    Bounded by `timeout`; raises TimeoutError with the last observation.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code in ok:
                return r.status_code
            last = r.status_code
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.05)
    raise TimeoutError(f"{url} not {list(ok)} within {timeout}s (last: {last!r})")


class ProcessGroups:
    """Starts processes in their own session and kills their groups at teardown."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen] = []

    def spawn(self, argv: Sequence[str], *, log: Path | None = None,
              env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
        out = open(log, "ab") if log else subprocess.DEVNULL
        full_env = {**os.environ, **(env or {})}
        full_env.setdefault("PYTHONPATH", str(REPO))
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=full_env,
                                cwd=str(cwd or REPO), start_new_session=True)
        if not isinstance(out, int):
            out.close()  # the child holds its own copy
        self._procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self._procs:
            # the group id equals the recorded leader pid (start_new_session=True); once the
            # leader is reaped its pid may be reused, so then only the group's remaining
            # members (which keep that pgid in use) are killed
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            else:
                for member in psutil.process_iter():
                    try:
                        if os.getpgid(member.pid) == proc.pid:
                            member.kill()
                    except (ProcessLookupError, psutil.Error):
                        pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._procs.clear()


@pytest.fixture
def procs() -> Iterator[ProcessGroups]:
    """Spawn helper whose process groups are SIGKILLed after the test."""
    groups = ProcessGroups()
    try:
        yield groups
    finally:
        groups.cleanup()
