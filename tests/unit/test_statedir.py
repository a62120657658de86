"""State directory: resolution, private creation, atomic state writes, the supervisor lock."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from console.statedir import (
    MAX_SOCKET_PATH_BYTES,
    CorruptStateError,
    LockHeld,
    StateDir,
    StateDirError,
    SupervisorLock,
    atomic_write_json,
    read_json,
    resolve_state_dir,
    validate_name,
)
from tests.conftest import PYTHON, REPO

# ---------------------------------------------------------------- resolution


def test_explicit_arg_wins_over_env_and_xdg(tmp_path: Path) -> None:
    env = {"EMBEDOPS_STATE_DIR": str(tmp_path / "env"), "XDG_STATE_HOME": str(tmp_path / "xdg"),
           "HOME": str(tmp_path / "home")}
    assert resolve_state_dir("demo", tmp_path / "arg", env=env) == tmp_path / "arg"


def test_env_wins_over_xdg(tmp_path: Path) -> None:
    env = {"EMBEDOPS_STATE_DIR": str(tmp_path / "env"), "XDG_STATE_HOME": str(tmp_path / "xdg")}
    assert resolve_state_dir("demo", None, env=env) == tmp_path / "env"


def test_xdg_state_home_then_home_default(tmp_path: Path) -> None:
    assert resolve_state_dir("demo", env={"XDG_STATE_HOME": str(tmp_path / "xdg"),
                                          "HOME": str(tmp_path / "home")}) \
        == tmp_path / "xdg" / "embedops" / "demo"
    assert resolve_state_dir("prod", env={"HOME": str(tmp_path / "home")}) \
        == tmp_path / "home" / ".local" / "state" / "embedops" / "prod"


def test_relative_xdg_state_home_is_ignored(tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": "relative/dir", "HOME": str(tmp_path)}
    assert resolve_state_dir("f", env=env) == tmp_path / ".local" / "state" / "embedops" / "f"


def test_relative_explicit_dir_is_made_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_state_dir("f", "rel", env={}) == tmp_path / "rel"


@pytest.mark.parametrize("bad", ["", "..", "a/b", "-x", "x" * 65, "a b", "../up"])
def test_bad_fleet_and_worker_names_are_refused(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid fleet name"):
        resolve_state_dir(bad, env={"HOME": str(tmp_path)})
    with pytest.raises(ValueError, match="invalid worker name"):
        StateDir(tmp_path).worker_log(bad)


def test_good_names_pass() -> None:
    for name in ("demo", "gpu0-a", "w_1.b", "A" * 64):
        assert validate_name(name) == name


# ---------------------------------------------------------------- layout and creation


def test_well_known_paths(tmp_path: Path) -> None:
    sd = StateDir(tmp_path / "s")
    assert sd.state_file == tmp_path / "s" / "state.json"
    assert sd.socket_path == tmp_path / "s" / "control.sock"
    assert sd.audit_path == tmp_path / "s" / "audit.jsonl"
    assert sd.worker_log("w1") == tmp_path / "s" / "logs" / "w1.log"
    assert sd.lock_path == tmp_path / "s" / "supervisor.lock"
    assert sd.supervisor_log == tmp_path / "s" / "supervisor.log"
    assert not sd.socket_is_fallback


def test_ensure_creates_private_dirs_despite_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        sd = StateDir(tmp_path / "a" / "b" / "fleet").ensure()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(sd.root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(sd.logs_dir).st_mode) == 0o700


def test_ensure_refuses_world_writable_existing_dir(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(StateDirError, match="writable by other users"):
        StateDir(d).ensure()
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o777  # not silently chmod-ed


def test_long_state_dir_puts_socket_in_short_fallback(tmp_path: Path) -> None:
    root = tmp_path / ("x" * 60) / ("y" * 60)
    base = tmp_path / "sb"
    sd = StateDir(root, short_socket_base=base)
    assert len(os.fsencode(root / "control.sock")) > MAX_SOCKET_PATH_BYTES
    sock = sd.socket_path
    assert sd.socket_is_fallback
    assert sock.parent.parent == base and sock.name == "control.sock"
    assert len(os.fsencode(sock)) <= MAX_SOCKET_PATH_BYTES
    # deterministic: another client computes the same place; another dir does not
    assert StateDir(root, short_socket_base=base).socket_path == sock
    assert StateDir(root.parent / "z" / root.name, short_socket_base=base).socket_path != sock
    sd.ensure()
    assert stat.S_IMODE(os.stat(base).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700
    assert (root / "control.sock.path").read_text().strip() == str(sock)


def test_fallback_too_long_fails_clearly(tmp_path: Path) -> None:
    sd = StateDir(tmp_path / ("x" * 120), short_socket_base=tmp_path / ("b" * 100))
    with pytest.raises(StateDirError, match="too long"):
        _ = sd.socket_path


def test_fallback_base_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a directory owned by another uid")
    base = tmp_path / "foreign"
    base.mkdir(mode=0o700)
    os.chown(base, 65534, 65534)
    sd = StateDir(tmp_path / ("x" * 120), short_socket_base=base)
    with pytest.raises(StateDirError, match="owned by uid 65534"):
        sd.ensure()


# ---------------------------------------------------------------- state file


def test_state_round_trip_and_mode(tmp_path: Path) -> None:
    sd = StateDir(tmp_path / "s").ensure()
    assert sd.read_state() == {}
    sd.write_state({"workers": {"w1": {"pid": 12, "create_time": 1.5}}})
    assert sd.read_state() == {"workers": {"w1": {"pid": 12, "create_time": 1.5}}}
    assert stat.S_IMODE(os.stat(sd.state_file).st_mode) == 0o600
    assert [p.name for p in sd.root.iterdir() if p.name.endswith(".tmp")] == []


def test_unserializable_state_writes_nothing(tmp_path: Path) -> None:
    p = tmp_path / "state.json"
    atomic_write_json(p, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(p, {"v": object()})
    assert read_json(p) == {"v": 1}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["state.json"]


@pytest.mark.parametrize("content", [b'{"workers": {"w1": ', b"[1, 2]", b"\xff\xfe garbage"])
def test_corrupt_state_is_kept_aside_and_named(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "state.json"
    p.write_bytes(content)
    with pytest.raises(CorruptStateError) as info:
        read_json(p)
    err = info.value
    assert str(p) in str(err) and str(err.kept_as) in str(err)
    assert err.kept_as.read_bytes() == content  # not discarded
    assert not p.exists()
    assert read_json(p) == {}  # the caller may now start from empty state


def test_crash_mid_write_keeps_old_state(tmp_path: Path) -> None:
    """A writer SIGKILLed after writing the temp file but before the rename."""
    p = tmp_path / "state.json"
    script = textwrap.dedent(f"""
        import os, signal
        from console.statedir import atomic_write_json
        atomic_write_json({str(p)!r}, {{"generation": 1}})
        def die(fd):
            os.kill(os.getpid(), signal.SIGKILL)
        os.fsync = die
        atomic_write_json({str(p)!r}, {{"generation": 2, "big": "x" * 1000000}})
    """)
    proc = subprocess.run([PYTHON, "-c", script], cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL
    assert read_json(p) == {"generation": 1}
    leftovers = [x for x in tmp_path.iterdir() if x.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0  # it died mid-write
    atomic_write_json(p, {"generation": 3})
    assert read_json(p) == {"generation": 3}
    assert [x for x in tmp_path.iterdir() if x.name.endswith(".tmp")] == []  # dead temp swept


def test_live_writers_temp_is_not_swept(tmp_path: Path) -> None:
    p = tmp_path / "state.json"
    mine = tmp_path / f".state.json.{os.getpid()}.abcd1234.tmp"
    mine.write_text("in progress")
    atomic_write_json(p, {"v": 1})
    assert mine.exists()


# ---------------------------------------------------------------- supervisor lock

_HOLDER = textwrap.dedent("""
    import sys, time
    from console.statedir import SupervisorLock
    SupervisorLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(60)
""")


def _wait_for_text(path: Path, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.02)
    raise TimeoutError(f"{text!r} not in {path} within {timeout}s")


def test_lock_held_by_another_process_reports_its_pid_and_frees_on_death(
        tmp_path: Path, procs) -> None:
    lock = tmp_path / "supervisor.lock"
    log = tmp_path / "holder.log"
    holder = procs.spawn([PYTHON, "-c", _HOLDER, str(lock)], log=log)
    _wait_for_text(log, "locked")
    with pytest.raises(LockHeld) as info:
        SupervisorLock(lock).acquire()
    assert info.value.pid == holder.pid
    assert str(holder.pid) in str(info.value)

    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    mine = SupervisorLock(lock).acquire()  # the kernel dropped the dead holder's lock
    try:
        assert mine.held
        assert SupervisorLock(lock).holder_pid() == os.getpid()
    finally:
        mine.release()


def test_lock_in_process_second_acquirer_refused_then_release(tmp_path: Path) -> None:
    lock = tmp_path / "supervisor.lock"
    with SupervisorLock(lock) as first:
        assert first.held
        with pytest.raises(LockHeld) as info:
            SupervisorLock(lock).acquire()
        assert info.value.pid == os.getpid()
    assert not first.held
    again = SupervisorLock(lock).acquire()
    again.release()
    assert stat.S_IMODE(os.stat(lock).st_mode) == 0o600


def test_lock_not_inherited_by_exec_children(tmp_path: Path) -> None:
    """A worker spawned while the supervisor holds the lock must not keep it alive,
    even when the spawner does not close descriptors (close_fds=False)."""
    lock = tmp_path / "supervisor.lock"
    held = SupervisorLock(lock).acquire()
    child = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(60)"],
                             close_fds=False, start_new_session=True)
    try:
        held.release()
        other = SupervisorLock(lock).acquire()  # LockHeld if the child had inherited it
        other.release()
        assert child.poll() is None  # the child was alive throughout
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=10)


def test_lock_file_holds_plain_pid_cleared_on_release(tmp_path: Path) -> None:
    lock = tmp_path / "supervisor.lock"
    with SupervisorLock(lock):
        assert lock.read_text() == f"{os.getpid()}\n"
    assert lock.read_text() == ""
