"""backends.procs against real processes: group stop, escalation, PID reuse refusal,
setsid escapees, orphans, discovery of SGLang launchers, port owners.

Every process here is started by `spawn_detached` (own session) or the `procs`
fixture and is killed at teardown by its recorded, re-verified identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from backends import procs
from backends.procs import ProcessIdentity
from console.model import LaunchCommand
from tests.conftest import ProcessGroups, free_port, wait_http

PY = sys.executable


def _wait_file(path: Path, timeout: float = 15.0) -> str:
    """Bounded wait for a child to write `path`; returns its content."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            time.sleep(0.02)  # let the writer finish the line
            return path.read_text().strip()
        time.sleep(0.02)
    raise TimeoutError(f"{path} not written within {timeout}s")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Spawned:
    """Spawns through `procs.spawn_detached` and kills what is left at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.identities: list[ProcessIdentity] = []
        self.extra: list[psutil.Process] = []
        self._n = 0

    def python(self, code: str, *args: str, env: dict[str, str] | None = None) -> ProcessIdentity:
        self._n += 1
        cmd = LaunchCommand(argv=(PY, "-c", code, *args), env=env or {})
        ident = procs.spawn_detached(cmd, self.tmp / f"w{self._n}.log")
        self.identities.append(ident)
        return ident

    def track(self, pid: int) -> None:
        """Record a process the test must clean up (an escapee, say)."""
        self.extra.append(psutil.Process(pid))

    def cleanup(self) -> None:
        for ident in self.identities:
            # same rule as the product: only a group whose leader verifies, or whose
            # leader pid is free (then the group can only be the old one)
            state, _ = procs._match(ident)
            if state in ("alive", "zombie", "gone"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(ident.pid, signal.SIGKILL)
        for proc in self.extra:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()  # psutil checks create_time first
        deadline = time.monotonic() + 5
        for ident in self.identities:
            while procs.returncode(ident) is None and ident.pid in procs._CHILDREN and time.monotonic() < deadline:
                time.sleep(0.02)


@pytest.fixture
def spawned(tmp_path: Path) -> Iterator[Spawned]:
    s = Spawned(tmp_path)
    try:
        yield s
    finally:
        s.cleanup()


# child that starts a grandchild in its own group, reports its pid, then sleeps
FORKER = """
import subprocess, sys, time, pathlib
out = pathlib.Path(sys.argv[1])
kw = {"start_new_session": True} if sys.argv[2] == "escape" else {}
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], **kw)
out.write_text(str(g.pid))
time.sleep(60)
"""

IGNORE_TERM = """
import signal, sys, time, pathlib
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pathlib.Path(sys.argv[1]).write_text("ready")
time.sleep(60)
"""

# exits 0 on SIGTERM; writes a marker when it gets one
TERM_MARKER = """
import signal, sys, time, pathlib
marker = pathlib.Path(sys.argv[2])
def on_term(*_):
    marker.write_text("got SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
pathlib.Path(sys.argv[1]).write_text("ready")
time.sleep(60)
"""


async def test_group_stop_takes_grandchild(spawned: Spawned, tmp_path: Path) -> None:
    ident = spawned.python(FORKER, str(tmp_path / "g"), "same")
    grandchild = int(_wait_file(tmp_path / "g"))
    assert procs.verify(ident)
    assert procs.group_pids(ident) == {ident.pid, grandchild}
    assert procs.group_pids_many({"w": ident}) == {"w": {ident.pid, grandchild}}
    assert await procs.group_pids_many_async({"w": ident}) == {"w": {ident.pid, grandchild}}
    assert os.getpgid(grandchild) == ident.pid  # own group, led by the worker

    result = await procs.stop_group(ident, grace_s=10)

    assert result.refused is None
    assert not result.escalated
    assert result.signals[0] == "SIGTERM"
    assert result.exit_code == -signal.SIGTERM
    assert result.survivors == []
    assert result.clean
    assert not _alive(grandchild)
    assert not procs.verify(ident)
    assert procs.group_pids(ident) == set()


async def test_sigterm_ignored_escalates_to_sigkill(spawned: Spawned, tmp_path: Path) -> None:
    ident = spawned.python(IGNORE_TERM, str(tmp_path / "ready"))
    _wait_file(tmp_path / "ready")

    t0 = time.monotonic()
    result = await procs.stop_group(ident, grace_s=0.5)

    assert result.escalated
    assert result.signals[-1] == "SIGKILL"
    assert result.exit_code == -signal.SIGKILL
    assert result.survivors == []
    assert time.monotonic() - t0 >= 0.5  # the grace was honoured
    assert not procs.verify(ident)


# The main thread leaves with pthread_exit while another thread runs on: Linux then
# shows the leader as a zombie that cannot be reaped until that thread is done (what
# a multithreaded worker looks like for a moment after SIGKILL).
LEADER_THREAD_OUTLIVES = """
import ctypes, os, sys, threading, time
def last():
    open(sys.argv[1], "w").write("ready")
    deadline = time.monotonic() + 30
    while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
        time.sleep(0.01)
    os._exit(7)
threading.Thread(target=last).start()
time.sleep(0.2)
ctypes.CDLL(None).pthread_exit(None)
"""


async def test_exit_code_of_a_leader_outlived_by_its_last_thread(spawned: Spawned, tmp_path: Path) -> None:
    ident = spawned.python(LEADER_THREAD_OUTLIVES, str(tmp_path / "ready"), str(tmp_path / "release"))
    _wait_file(tmp_path / "ready")
    deadline = time.monotonic() + 5
    while procs._match(ident)[0] != "zombie" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert procs._match(ident)[0] == "zombie"
    assert procs.returncode(ident) is None  # shown as exited, not reapable yet

    stop = asyncio.create_task(procs.stop_group(ident, grace_s=0.5))
    await asyncio.sleep(0.3)
    assert not stop.done()  # waiting for the last thread
    (tmp_path / "release").write_text("go")
    result = await asyncio.wait_for(stop, 10)

    assert result.signals == ()  # nothing of it is left to signal
    assert result.exit_code == 7  # waited for the last thread, not reported unknown
    assert result.clean


async def test_kill_now_sends_only_sigkill(spawned: Spawned, tmp_path: Path) -> None:
    ident = spawned.python(TERM_MARKER, str(tmp_path / "ready"), str(tmp_path / "marker"))
    _wait_file(tmp_path / "ready")

    result = await procs.kill_group_now(ident)

    assert result.signals == ("SIGKILL",)
    assert result.exit_code == -signal.SIGKILL
    assert result.clean
    assert not (tmp_path / "marker").exists()  # never saw a SIGTERM


async def test_stopped_process_gets_sigcont_and_exits_gracefully(spawned: Spawned, tmp_path: Path) -> None:
    ident = spawned.python(TERM_MARKER, str(tmp_path / "ready"), str(tmp_path / "marker"))
    _wait_file(tmp_path / "ready")
    os.kill(ident.pid, signal.SIGSTOP)

    result = await procs.stop_group(ident, grace_s=10)

    assert not result.escalated
    assert result.exit_code == 0
    assert (tmp_path / "marker").read_text() == "got SIGTERM"


async def test_reused_pid_is_never_signalled(spawned: Spawned, tmp_path: Path) -> None:
    old = spawned.python("import time; time.sleep(60)")
    assert (await procs.kill_group_now(old)).clean
    assert not procs.verify(old)
    time.sleep(0.2)  # the next process starts in a later clock tick

    decoy = spawned.python(TERM_MARKER, str(tmp_path / "ready"), str(tmp_path / "marker"))
    _wait_file(tmp_path / "ready")
    forged = [
        # the decoy's pid with the old generation's start time and command line
        ProcessIdentity(pid=decoy.pid, create_time=old.create_time, cmdline_hash=old.cmdline_hash),
        # the decoy's pid and start time but another command line
        ProcessIdentity(pid=decoy.pid, create_time=decoy.create_time, cmdline_hash=old.cmdline_hash),
    ]
    for ident in forged:
        assert not procs.verify(ident)
        assert procs.group_pids(ident) == set()
        assert procs.find_orphans(ident) == []
        for result in (await procs.stop_group(ident, grace_s=1), await procs.kill_group_now(ident)):
            assert result.refused is not None and str(decoy.pid) in result.refused
            assert result.signals == ()

    time.sleep(0.3)
    assert not (tmp_path / "marker").exists()
    assert procs.verify(decoy)
    assert psutil.Process(decoy.pid).status() != psutil.STATUS_STOPPED


async def test_setsid_escapee_is_reported_not_signalled(spawned: Spawned, tmp_path: Path) -> None:
    ident = spawned.python(FORKER, str(tmp_path / "g"), "escape")
    escapee = int(_wait_file(tmp_path / "g"))
    spawned.track(escapee)
    assert os.getpgid(escapee) != ident.pid

    result = await procs.stop_group(ident, grace_s=5)

    assert not result.escalated  # the group itself went on SIGTERM
    assert [s.pid for s in result.survivors] == [escapee]
    survivor = result.survivors[0]
    assert "left the process group" in survivor.reason
    assert survivor.pgid == escapee
    assert survivor.name.startswith("python")
    assert _alive(escapee)
    assert not result.clean


async def test_orphans_after_leader_death_are_found_and_stopped(spawned: Spawned, tmp_path: Path) -> None:
    ident = spawned.python(FORKER, str(tmp_path / "g"), "same")
    grandchild = int(_wait_file(tmp_path / "g"))
    assert procs.find_orphans(ident) == []  # leader alive: nothing orphaned

    os.kill(ident.pid, signal.SIGKILL)  # only the leader, like sglang#23627
    deadline = time.monotonic() + 10
    while procs.returncode(ident) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert procs.returncode(ident) == -signal.SIGKILL

    orphans = procs.find_orphans(ident)
    assert [o.pid for o in orphans] == [grandchild]
    assert orphans[0].pgid == ident.pid and orphans[0].ppid != ident.pid
    assert [o.pid for o in procs.find_orphans(ident.pid)] == [grandchild]
    assert procs.group_pids(ident) == {grandchild}
    assert procs.group_pids_many({"old": ident}) == {"old": {grandchild}}

    result = await procs.stop_group(ident, grace_s=5)

    assert result.refused is None
    assert result.exit_code == -signal.SIGKILL  # remembered from the reap
    assert result.clean
    assert not _alive(grandchild)
    assert procs.find_orphans(ident) == []


async def test_non_leader_adoptee_stops_its_tree_only(spawned: Spawned, tmp_path: Path) -> None:
    # the "server" shares its parent's process group, as when launched by a script
    parent = spawned.python(FORKER, str(tmp_path / "g"), "same")
    server_pid = int(_wait_file(tmp_path / "g"))
    server = procs.identify(server_pid)
    assert server is not None

    result = await procs.stop_group(server, grace_s=5)

    assert result.clean
    assert result.exit_code is None  # not our child: unknown
    assert not _alive(server_pid)
    assert procs.verify(parent)  # the rest of the group was left alone


def test_spawn_log_header_masks_secret_and_appends(spawned: Spawned, tmp_path: Path) -> None:
    code = "import sys; print('hello from worker', flush=True); sys.exit(3)"
    cmd = LaunchCommand(argv=(PY, "-c", code, "--api-key", "sk-SECRET"), env={"EMBEDOPS_T": "1"})
    log_path = tmp_path / "logs" / "w.log"
    log_path.parent.mkdir()
    log_path.write_text("previous generation\n")
    ident = procs.spawn_detached(cmd, log_path)
    spawned.identities.append(ident)
    deadline = time.monotonic() + 15
    while procs.returncode(ident) is None and time.monotonic() < deadline:
        time.sleep(0.02)

    assert procs.returncode(ident) == 3
    text = log_path.read_text()
    assert text.startswith("previous generation\n")  # appended, not truncated
    assert "sk-SECRET" not in text
    assert "--api-key ********" in text
    assert f"spawned pid {ident.pid}" in text
    assert "hello from worker" in text
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600


def test_worker_is_detached(spawned: Spawned, tmp_path: Path) -> None:
    ident = spawned.python("import time; time.sleep(60)")
    p = psutil.Process(ident.pid)
    assert os.getsid(ident.pid) == ident.pid != os.getsid(0)
    assert os.getpgid(ident.pid) == ident.pid
    assert p.ppid() == os.getpid()
    stdin = os.readlink(f"/proc/{ident.pid}/fd/0")
    assert stdin == "/dev/null"
    assert os.readlink(f"/proc/{ident.pid}/fd/1").endswith(".log")


def test_rotate_while_writing_keeps_appending(spawned: Spawned, tmp_path: Path) -> None:
    code = ("import sys, time\n"
            "for i in range(400):\n"
            "    print('line %04d' % i + 'x' * 60, flush=True); time.sleep(0.002)\n")
    log_path = tmp_path / "w.log"
    ident = procs.spawn_detached(LaunchCommand(argv=(PY, "-c", code)), log_path)
    spawned.identities.append(ident)
    rotated = 0
    deadline = time.monotonic() + 20
    while procs.returncode(ident) is None and time.monotonic() < deadline:
        rotated += procs.rotate_log(log_path, 4096, backups=2)
        time.sleep(0.05)
    assert procs.returncode(ident) == 0
    assert rotated >= 1
    assert (tmp_path / "w.log.1").exists()
    assert not (tmp_path / "w.log.3").exists()
    current = log_path.read_bytes()
    # O_APPEND: after a truncate the writer continues at the new end, no NUL hole
    assert b"\0" not in current
    assert b"line 0399" in current


def test_spawn_failure_raises(tmp_path: Path) -> None:
    with pytest.raises(procs.SpawnError):
        procs.spawn_detached(LaunchCommand(argv=(str(tmp_path / "missing-binary"),)), tmp_path / "x.log")
    assert "spawn failed" in (tmp_path / "x.log").read_text()


# --------------------------------------------------------------------------- discovery

LAUNCHER = """
import os, sys, time
# a forked child keeps the same argv, like multiprocessing "fork" children
if os.fork() == 0:
    time.sleep(60)
    os._exit(0)
open(os.environ["READY_FILE"], "w").write("ready")
time.sleep(60)
"""


@pytest.fixture
def groups(procs: ProcessGroups) -> ProcessGroups:
    """conftest's `procs` fixture under a name that does not shadow the module."""
    return procs


async def test_discovery_finds_launchers_only(groups: ProcessGroups, tmp_path: Path) -> None:
    pkg = tmp_path / "pkgs"
    for name in ("sglang", "backends", "backends/sim"):
        (pkg / name).mkdir(parents=True)
        (pkg / name / "__init__.py").write_text("")
    (pkg / "sglang" / "launch_server.py").write_text(LAUNCHER)
    (pkg / "backends" / "sim" / "worker.py").write_text(LAUNCHER)
    port_a, port_b = free_port(), free_port()
    env = {"PYTHONPATH": str(pkg), "CUDA_VISIBLE_DEVICES": "3"}
    real = groups.spawn(
        [PY, "-m", "sglang.launch_server", "--model-path", "/models/Qwen3-Embedding-4B",
         "--is-embedding", "--port", str(port_a), "--api-key", "sk-SECRET"],
        env={**env, "READY_FILE": str(tmp_path / "r1")}, cwd=tmp_path)
    sim = groups.spawn([PY, "-m", "backends.sim.worker", "--model-path", "sim-model", f"--port={port_b}",
                       "--host", "127.0.0.1"],
                      env={"PYTHONPATH": str(pkg), "READY_FILE": str(tmp_path / "r2")}, cwd=tmp_path)
    # mentions the module but does not run it
    decoy = groups.spawn([PY, "-c", "import time; time.sleep(60)", "-m", "sglang.launch_server"])
    _wait_file(tmp_path / "r1")
    _wait_file(tmp_path / "r2")

    found = {s.pid: s for s in procs.discover_sglang_servers()}

    assert decoy.pid not in found
    assert real.pid in found and sim.pid in found
    forked = [c.pid for c in psutil.Process(real.pid).children()]
    assert forked and not set(forked) & set(found)
    a, b = found[real.pid], found[sim.pid]
    assert (a.port, a.host, a.model_path, a.sim, a.cuda_visible_devices) == (
        port_a, "127.0.0.1", "/models/Qwen3-Embedding-4B", False, "3")
    assert "sk-SECRET" not in " ".join(a.argv) and "--api-key" in a.argv
    assert a.settings["api_key"] != "sk-SECRET" and a.settings["is_embedding"] is True
    raw = procs.read_argv(a.identity)
    assert raw is not None and "sk-SECRET" in raw  # for relaunching an adoptee
    assert procs.verify(a.identity)
    assert a.pgid == real.pid
    assert (b.port, b.model_path, b.sim, b.cuda_visible_devices) == (port_b, "sim-model", True, None)
    assert b.url == f"http://127.0.0.1:{port_b}"
    assert {real.pid, sim.pid} <= {s.pid for s in await procs.discover_sglang_servers_async()}


# --------------------------------------------------------------------------- ports

LISTENER = """
import socket, sys, time, pathlib
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
pathlib.Path(sys.argv[2]).write_text("ready")
time.sleep(60)
"""


async def test_port_owner_finds_listening_child(spawned: Spawned, tmp_path: Path) -> None:
    port = free_port()
    assert procs.port_owner(port) is None
    ident = spawned.python(LISTENER, str(port), str(tmp_path / "ready"), "--api-key", "sk-SECRET")
    _wait_file(tmp_path / "ready")

    owner = procs.port_owner(port)

    assert owner is not None and owner.pid == ident.pid
    assert owner.identity == ident  # lets the caller tell "ours" from "foreign"
    assert not owner.unknown
    assert "sk-SECRET" not in " ".join(owner.cmdline)
    assert (await procs.port_owner_async(port)) == owner
    assert procs.port_owner(port, host="0.0.0.0") == owner  # a wildcard bind would collide
    await procs.kill_group_now(ident)
    assert procs.port_owner(port) is None


def test_port_owner_self_and_wildcard_listener() -> None:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        owner = procs.port_owner(port, host="127.0.0.1")
        assert owner is not None and owner.pid == os.getpid()


def test_bind_probe_detects_use_without_listing() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert procs._bind_fails(s.getsockname()[1], "127.0.0.1")
    assert not procs._bind_fails(free_port(), "127.0.0.1")


def test_process_tree_of_unknown_pid_is_empty() -> None:
    assert procs.process_tree(2**22 + 12345) == set()


def test_retitled_worker_still_verifies(spawned: Spawned, tmp_path: Path) -> None:
    code = ("import pathlib, sys, time, setproctitle\n"
            "setproctitle.setproctitle('sglang::http_server/tokenizer_manager')\n"
            "pathlib.Path(sys.argv[1]).write_text('ready')\n"
            "time.sleep(60)\n")
    ident = spawned.python(code, str(tmp_path / "ready"))
    _wait_file(tmp_path / "ready")
    assert psutil.Process(ident.pid).cmdline()[0] == "sglang::http_server/tokenizer_manager"
    assert procs.verify(ident)  # pid + start time still pin it
    assert not procs.verify(ProcessIdentity(ident.pid, ident.create_time - 5, ident.cmdline_hash))


@pytest.mark.skipif(importlib.util.find_spec("backends.sim.worker") is None,
                    reason="backends.sim.worker not written yet (sim engineer)")
async def test_real_sim_worker_discovered_and_stopped_with_its_orphan(spawned: Spawned, tmp_path: Path) -> None:
    import httpx

    port = free_port()
    cmd = LaunchCommand(
        argv=(PY, "-m", "backends.sim.worker", "--model-path", "sim-qwen3", "--is-embedding",
              "--host", "127.0.0.1", "--port", str(port), "--sim-load-s", "0.1", "--sim-warmup-s", "0.1",
              "--api-key", "sk-SECRET"),
        env={"EMBEDOPS_SIM_GPU_DIR": str(tmp_path / "gpus"), "CUDA_VISIBLE_DEVICES": "2"})
    ident = procs.spawn_detached(cmd, tmp_path / "sim.log", cwd=Path(__file__).resolve().parents[2])
    spawned.identities.append(ident)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/_sim/gpu", timeout=60)

    (found,) = [s for s in procs.discover_sglang_servers() if s.pid == ident.pid]
    assert found.sim and found.port == port and found.cuda_visible_devices == "2"
    assert found.identity == ident
    titles = {psutil.Process(p).name() for p in procs.group_pids(ident)}
    assert {"sglang::scheduler", "sglang::detokenizer"} <= titles

    async with httpx.AsyncClient() as client:
        r = await client.post(f"{url}/_sim/faults", json={"orphan_child": True})
        assert r.status_code == 200
    deadline = time.monotonic() + 10
    orphan = None
    while orphan is None and time.monotonic() < deadline:
        orphan = next((p for p in procs.group_pids(ident)
                       if psutil.Process(p).name() == "sglang::scheduler_orphan"), None)
        time.sleep(0.05)
    assert orphan is not None, (tmp_path / "sim.log").read_text()[-2000:]
    spawned.track(orphan)
    assert orphan not in {c.pid for c in psutil.Process(ident.pid).children(recursive=True)}

    result = await procs.stop_group(ident, grace_s=3)

    assert result.escalated  # the orphan ignores SIGTERM
    assert result.clean, result
    assert result.exit_code is not None
    assert not _alive(orphan)
    assert procs.group_pids(ident) == set()


needs_pidfd = pytest.mark.skipif(not hasattr(os, "pidfd_open"),
                                 reason="no os.pidfd_open (Linux >= 5.3, Python >= 3.9)")


@needs_pidfd
async def test_exit_watch_fires_at_exit_not_before(spawned: Spawned) -> None:
    ident = spawned.python("import sys, time; time.sleep(float(sys.argv[1]))", "0.6")
    fired: list[float] = []
    watch = procs.ExitWatch.open(ident, lambda: fired.append(time.monotonic()))
    assert watch is not None
    try:
        await asyncio.sleep(0.3)
        assert fired == [] and not watch.fired
        deadline = time.monotonic() + 10
        while not fired and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert watch.fired and len(fired) == 1
        # the process is a zombie (or reaped) now: it no longer verifies
        assert not procs.verify(ident)
        await asyncio.sleep(0.1)
        assert len(fired) == 1  # level-triggered fd, but the callback runs once
    finally:
        watch.close()
        watch.close()  # idempotent


@needs_pidfd
async def test_exit_watch_refuses_a_reused_pid(spawned: Spawned) -> None:
    live = spawned.python("import time; time.sleep(60)")
    forged = ProcessIdentity(pid=live.pid, create_time=live.create_time - 100.0,
                             cmdline_hash=live.cmdline_hash)
    assert procs.ExitWatch.open(forged, lambda: None) is None
    gone = ProcessIdentity(pid=live.pid, create_time=live.create_time, cmdline_hash="0" * 16)
    assert procs.ExitWatch.open(gone, lambda: None) is None


@needs_pidfd
async def test_exit_watchers_wake_the_waiter_and_follow_the_set(spawned: Spawned) -> None:
    long = spawned.python("import time; time.sleep(60)")
    short = spawned.python("import time; time.sleep(0.5)")
    watchers = procs.ExitWatchers()
    try:
        watchers.sync({"long": long, "short": short})
        assert not watchers.polling
        assert not watchers.needs_poll("long") and not watchers.needs_poll("short")
        t0 = time.monotonic()
        await watchers.wait(20.0)  # woken by the short one's exit, not the timeout
        assert time.monotonic() - t0 < 10.0
        assert watchers.needs_poll("short") and not watchers.needs_poll("long")
        # dropping a name closes its watch; an unwatchable identity is polled
        forged = ProcessIdentity(pid=long.pid, create_time=long.create_time - 100.0,
                                 cmdline_hash=long.cmdline_hash)
        watchers.sync({"long": forged})
        assert watchers.polling and watchers.needs_poll("long")
        assert watchers.needs_poll("short")  # unknown names are to be polled
        t0 = time.monotonic()
        await watchers.wait(0.2)  # nothing wakes it: the timeout does
        assert time.monotonic() - t0 >= 0.15
    finally:
        watchers.close()
