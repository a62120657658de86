"""Worker processes: detached spawn, identity, group stop with escalation, orphans,
discovery of SGLang servers we did not start, and who owns a port.

Safety rules this module enforces (see reference/reliability.md §2.2 rows 6-7, F16):

* A process is named by `ProcessIdentity` = pid + create_time + cmdline hash and is
  re-verified before every signal; a recorded PID that now belongs to another process
  is never signalled.
* Workers run in their own session, so their process group id equals the leader's
  pid. A group is signalled with `os.killpg` only while the group is provably ours:
  the leader still verifies, or the leader is gone and no other process holds its
  pid (Linux does not hand out a pid whose number is still used as a process group
  id, so the surviving members can only be the old generation's).
* Nothing here uses a shell, `pkill` or `killall`.

Linux only (reads ``/proc``); psutil does the portable parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psutil

from console.model import LaunchCommand

log = logging.getLogger(__name__)

_CTIME_TOLERANCE_S = 0.05
"""create_time is start ticks (1/100 s) + boot time; equal processes compare equal."""
_POLL_S = 0.05
_MASK = "********"
_SECRET_WORDS = ("key", "token", "secret", "password", "passwd")


# --------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class ProcessIdentity:
    """What pins one process across time: pid, start time and command line.

    Persisted in the supervisor's state file (`to_json`/`from_json`) and checked by
    `verify` before any signal.
    """

    pid: int
    create_time: float
    """psutil's create_time: seconds since the epoch (boot time + start ticks)."""
    cmdline_hash: str
    """`cmdline_hash(argv)` of the command line the process was started with."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"pid": self.pid, "create_time": self.create_time, "cmdline_hash": self.cmdline_hash}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> ProcessIdentity:
        """Inverse of `to_json`; also accepts the dict serialised as a JSON string."""
        obj = json.loads(data) if isinstance(data, str) else data
        return cls(pid=int(obj["pid"]), create_time=float(obj["create_time"]),
                   cmdline_hash=str(obj["cmdline_hash"]))


def cmdline_hash(argv: Sequence[str]) -> str:
    """Stable short hash of an argv (NUL-joined, like ``/proc/<pid>/cmdline``)."""
    return hashlib.sha256("\0".join(argv).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _looks_retitled(argv: Sequence[str]) -> bool:
    # setproctitle overwrites the argv area in place: /proc shows the title followed by
    # NUL padding, which psutil returns as empty strings (SGLang 0.5.2 retitles its
    # launcher, the sim titles its children).
    return len(argv) <= 1 or all(not a for a in argv[1:])


_Match = Literal["alive", "zombie", "gone", "other"]


def _match(identity: ProcessIdentity) -> tuple[_Match, psutil.Process | None]:
    """Classify what `identity.pid` is now.

    alive: the same process, running. zombie: the same process, exited, not reaped.
    gone: no process has that pid. other: the pid belongs to a different process.
    """
    try:
        proc = psutil.Process(identity.pid)
        ctime = proc.create_time()
    except psutil.NoSuchProcess:
        return "gone", None
    except psutil.AccessDenied:
        return "other", None
    if abs(ctime - identity.create_time) > _CTIME_TOLERANCE_S:
        return "other", proc
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return "zombie", proc
        argv = proc.cmdline()
    except psutil.ZombieProcess:
        return "zombie", proc
    except psutil.NoSuchProcess:
        return "gone", None
    except psutil.AccessDenied:
        return "other", proc
    if cmdline_hash(argv) != identity.cmdline_hash and not _looks_retitled(argv):
        return "other", proc
    return "alive", proc


def identify(pid: int) -> ProcessIdentity | None:
    """The identity of the live process `pid`, or None (no such process, zombie, or
    its command line is not readable)."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            return ProcessIdentity(pid=pid, create_time=proc.create_time(),
                                   cmdline_hash=cmdline_hash(proc.cmdline()))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def verify(identity: ProcessIdentity) -> bool:
    """True when `identity.pid` is still the same live process (same create_time and
    command line).

    A process that renamed itself with setproctitle (SGLang 0.5.2's launcher) cannot
    have its original argv compared; pid + create_time still pin it, so it verifies.
    Zombies (exited, not yet reaped) do not verify.
    """
    return _match(identity)[0] == "alive"


def is_running(identity: ProcessIdentity) -> bool:
    """Alias of `verify`: the identified process exists and has not exited."""
    return verify(identity)


class ExitWatch:
    """Calls `on_exit` on the running event loop as soon as the identified process
    exits (a Linux pidfd watched by the loop: no polling, no delay).

    The pidfd is opened first and the identity verified after, so a pid reused in
    between is refused, never watched. `open` returns None where the process cannot
    be watched this way (no pidfd on this kernel or platform, not permitted, already
    gone): the caller then polls `is_running`. `on_exit` is called at most once;
    `close` releases the descriptor and is idempotent.
    """

    def __init__(self, identity: ProcessIdentity, fd: int, on_exit: Callable[[], None]) -> None:
        self.identity = identity
        self.fired = False
        self._fd: int | None = fd
        self._loop = asyncio.get_running_loop()
        self._on_exit = on_exit
        self._loop.add_reader(fd, self._fire)

    @classmethod
    def open(cls, identity: ProcessIdentity, on_exit: Callable[[], None]) -> ExitWatch | None:
        """Watch `identity` (verified after the pidfd is open), or None."""
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is None:
            return None
        try:
            fd = pidfd_open(identity.pid)
        except OSError:
            return None
        if not verify(identity):
            os.close(fd)
            return None
        try:
            return cls(identity, fd, on_exit)
        except (OSError, ValueError, NotImplementedError, RuntimeError):
            os.close(fd)  # a loop without add_reader (Windows proactor): poll instead
            return None

    def _fire(self) -> None:
        if self._fd is not None and not self.fired:
            self.fired = True
            self._loop.remove_reader(self._fd)  # level-triggered: readable from now on
            self._on_exit()

    def close(self) -> None:
        """Stop watching and release the pidfd."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if not self.fired and not self._loop.is_closed():
            self._loop.remove_reader(fd)
        os.close(fd)


class ExitWatchers:
    """`ExitWatch`es kept in step with a set of named processes; any exit sets one
    event that the owner's loop waits on (`wait`) instead of sleeping."""

    def __init__(self) -> None:
        self._watches: dict[str, ExitWatch | None] = {}
        self._identities: dict[str, ProcessIdentity] = {}
        self._wake = asyncio.Event()

    def sync(self, wanted: Mapping[str, ProcessIdentity]) -> None:
        """Watch exactly `wanted` (name → identity): new ones are opened, changed or
        dropped ones closed. A process that cannot be watched is tried again only
        when its identity changes (until then `needs_poll` says to poll it)."""
        for name in [n for n, ident in self._identities.items() if wanted.get(n) != ident]:
            watch = self._watches.pop(name, None)
            del self._identities[name]
            if watch is not None:
                watch.close()
        for name, ident in wanted.items():
            if name not in self._identities:
                self._identities[name] = ident
                self._watches[name] = ExitWatch.open(ident, self._wake.set)

    def needs_poll(self, name: str) -> bool:
        """True when `name`'s process must be looked at: it has exited (its watch
        fired) or it cannot be watched."""
        watch = self._watches.get(name)
        return watch is None or watch.fired

    @property
    def polling(self) -> bool:
        """Some watched name has no pidfd: its owner must poll on a timer."""
        return any(w is None for w in self._watches.values())

    def wake(self) -> None:
        """End the current `wait` now (the set of processes to watch changed)."""
        self._wake.set()

    async def wait(self, timeout_s: float) -> None:
        """Until a watched process exits or `timeout_s` passes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout_s)
        self._wake.clear()

    def close(self) -> None:
        """Release every pidfd."""
        self.sync({})


# --------------------------------------------------------------------------- masking


def _basic_mask(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(_MASK)
            hide_next = False
            continue
        flag, eq, _value = arg.partition("=")
        secret = flag.startswith("-") and any(w in flag.lower() for w in _SECRET_WORDS)
        if secret and eq:
            out.append(f"{flag}={_MASK}")
            continue
        out.append(arg)
        hide_next = secret
    return out


def mask_argv(argv: Sequence[str]) -> list[str]:
    """`argv` with API keys and other secrets masked, for display and logs.

    Uses `backends.sglang.mask_argv` (one masking rule for the whole product); a
    basic rule (values of ``--*key*``/``--*token*``/``--*secret*``/``--*password*``
    flags) stands in if that module cannot be imported.
    """
    try:
        from backends.sglang import mask_argv as sglang_mask  # lazy: no import cycle
    except Exception:  # noqa: BLE001 - a broken sibling must not stop a stop/spawn
        return _basic_mask(argv)
    return sglang_mask(argv)


# --------------------------------------------------------------------------- logs


def rotate_log(path: Path, max_bytes: int, backups: int = 3) -> bool:
    """Copy-truncate `path` when it is larger than `max_bytes`.

    Keeps `backups` older copies (``path.1`` newest … ``path.N``). Safe while a worker
    is writing, because workers write with O_APPEND: after the truncate their next
    write lands at the new end. Lines written between the copy and the truncate are
    lost (the usual copy-truncate window). Returns True when it rotated.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size <= max_bytes:
        return False
    if backups > 0:
        for i in range(backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{i}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    os.truncate(path, 0)
    return True


def _append_line(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8", "replace"))
    finally:
        os.close(fd)


def _now_iso() -> str:
    return datetime.now(UTC).astimezone().isoformat(timespec="seconds")


# --------------------------------------------------------------------------- spawn


class SpawnError(RuntimeError):
    """The worker command could not be started (executable missing, cwd missing...)."""


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
"""Workers this interpreter spawned and has not reaped yet, by pid."""
_EXITED: dict[tuple[int, float], int] = {}
"""Exit codes of our children already reaped, by (pid, create_time)."""


def spawn_detached(cmd: LaunchCommand, log_path: Path, *, cwd: Path | None = None,
                   display_argv: Sequence[str] | None = None,
                   log_max_bytes: int | None = 64 * 1024 * 1024,
                   log_backups: int = 3) -> ProcessIdentity:
    """Start `cmd` in its own session and process group, detached from us.

    stdin is /dev/null; stdout and stderr are appended (O_APPEND, mode 0600) to
    `log_path`, which is rotated first when over `log_max_bytes`. A header line with
    the time and `display_argv` (default: `mask_argv(cmd.argv)`; the caller passes
    its own masked form) is written before the start, and one with the pid after.
    The environment is ours plus `cmd.env`. The worker survives our exit.

    Returns the identity of the new process; raises `SpawnError` when it cannot start.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if log_max_bytes is not None:
        rotate_log(log_path, log_max_bytes, log_backups)
    shown = " ".join(display_argv if display_argv is not None else mask_argv(cmd.argv))
    _append_line(log_path, f"===== {_now_iso()} embedops spawn: {shown}")
    env = {**os.environ, **cmd.env}
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    # SGLang logs its server_args (api_key included): keep an older log private too
    with contextlib.suppress(PermissionError):
        os.fchmod(fd, 0o600)
    try:
        proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
            list(cmd.argv), stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
            cwd=str(cwd) if cwd is not None else None, env=env,
            start_new_session=True, close_fds=True)
    except OSError as exc:
        _append_line(log_path, f"===== {_now_iso()} embedops spawn failed: {exc}")
        raise SpawnError(f"cannot start {shown!r}: {exc}") from exc
    finally:
        os.close(fd)
    _CHILDREN[proc.pid] = proc
    _append_line(log_path, f"===== {_now_iso()} embedops spawned pid {proc.pid}")
    try:
        ctime = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        # Unreachable in practice: an exited child stays a zombie until we reap it.
        ctime = time.time()
    return ProcessIdentity(pid=proc.pid, create_time=ctime, cmdline_hash=cmdline_hash(cmd.argv))


def returncode(identity: ProcessIdentity, wait_s: float = 0.0) -> int | None:
    """Exit code of the identified process if it was spawned by this interpreter and
    has exited (it is reaped now); None while it runs or when it is not our child.

    `wait_s` > 0 blocks up to that long for a leader that shows as a zombie but
    cannot be reaped yet: Linux shows a multithreaded leader as exited while its
    other threads are still being torn down, and only lets it be reaped after them.

    Popen's convention: ``-N`` means killed by signal N.
    """
    key = (identity.pid, identity.create_time)
    if key in _EXITED:
        return _EXITED[key]
    proc = _CHILDREN.get(identity.pid)
    if proc is None or _match(identity)[0] in ("alive", "other"):
        return None
    code = proc.poll()
    if code is None and wait_s > 0:
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = proc.wait(timeout=wait_s)
    if code is not None:
        _CHILDREN.pop(identity.pid, None)
        _EXITED[key] = code
    return code


# --------------------------------------------------------------------------- process table


@dataclass(frozen=True)
class ProcInfo:
    """One process as seen in a stop report or an orphan scan."""

    pid: int
    name: str
    status: str
    """psutil status: running, sleeping, disk-sleep (D state), stopped, zombie..."""
    ppid: int | None = None
    pgid: int | None = None
    reason: str = ""
    """Why it is listed (e.g. "left the process group (setsid)")."""


@dataclass(frozen=True)
class _Stat:
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str


def _read_stat(pid: int) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    rest = data[data.rfind(")") + 2:].split()
    try:
        return _Stat(pid=pid, state=rest[0], ppid=int(rest[1]), pgid=int(rest[2]), sid=int(rest[3]))
    except (IndexError, ValueError):
        return None


def _scan() -> list[_Stat]:
    """Every process's (pid, ppid, pgid, sid, state), straight from /proc (cheap)."""
    out: list[_Stat] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        names = [str(p) for p in psutil.pids()]
    for name in names:
        if name.isdigit():
            st = _read_stat(int(name))
            if st is not None:
                out.append(st)
    return out


def _members(pgid: int, table: list[_Stat] | None = None) -> list[_Stat]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    return [s for s in (table if table is not None else _scan()) if s.pgid == pgid and s.state != "Z"]


def _descendants(pid: int, table: list[_Stat]) -> set[int]:
    children: dict[int, list[int]] = {}
    for s in table:
        children.setdefault(s.ppid, []).append(s.pid)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _info(pid: int, reason: str = "") -> ProcInfo | None:
    st = _read_stat(pid)
    name: str
    status: str
    try:
        proc = psutil.Process(pid)
        name = proc.name()
        status = proc.status()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        if st is None:
            return None
        name, status = "?", st.state
    return ProcInfo(pid=pid, name=name, status=status, ppid=st.ppid if st else None,
                    pgid=st.pgid if st else None, reason=reason)


def _born_after(pid: int, ctime: float) -> bool:
    try:
        return psutil.Process(pid).create_time() >= ctime - _CTIME_TOLERANCE_S
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _tree_in(pid: int, table: list[_Stat]) -> set[int]:
    me = next((s for s in table if s.pid == pid), None)
    if me is None or me.state == "Z":
        return set()
    pids = {pid} | _descendants(pid, table)
    if me.pgid == pid:
        pids |= {s.pid for s in _members(pid, table)}
    alive = {s.pid for s in table if s.state != "Z"}
    return pids & alive


def process_tree(pid: int) -> set[int]:
    """`pid`, its descendants and, when it leads a process group, the group's other
    members. Empty when `pid` does not exist. Zombies are left out."""
    return _tree_in(pid, _scan())


def _group_pids_in(identity: ProcessIdentity, table: list[_Stat]) -> set[int]:
    state, _ = _match(identity)
    if state == "alive":
        return _tree_in(identity.pid, table)
    if state == "other":
        return set()
    return {o.pid for o in _orphans_in(identity.pid, identity.create_time, table)}


def group_pids(identity: ProcessIdentity) -> set[int]:
    """The worker's live processes: leader + descendants + same-group members.

    When the leader has exited, the old generation's leftovers (`find_orphans`); when
    the pid now belongs to another process, nothing.
    """
    return _group_pids_in(identity, _scan())


def group_pids_many(identities: Mapping[str, ProcessIdentity]) -> dict[str, set[int]]:
    """`group_pids` for a whole fleet from one scan of the process table (what
    `backends.gpu.attribute` takes as `trees`)."""
    table = _scan()
    return {name: _group_pids_in(ident, table) for name, ident in identities.items()}


async def group_pids_many_async(identities: Mapping[str, ProcessIdentity]) -> dict[str, set[int]]:
    """`group_pids_many` off the event loop (the scan costs ~15 µs per process)."""
    return await asyncio.to_thread(group_pids_many, dict(identities))


def _orphans_in(pgid: int, since: float, table: list[_Stat]) -> list[ProcInfo]:
    out: list[ProcInfo] = []
    for s in _members(pgid, table):
        if s.pid != pgid and _born_after(s.pid, since):
            info = _info(s.pid, reason=f"left in process group {pgid} after its leader exited")
            if info is not None:
                out.append(info)
    return out


def find_orphans(identity_or_pgid: ProcessIdentity | int) -> list[ProcInfo]:
    """Processes left in an old generation's process group after its leader died.

    Given an identity, the group is its pid (workers lead their own group) and only
    processes started after the leader count. Returns [] while the leader is still
    alive (nothing is orphaned yet) or when its pid now belongs to another process
    (then the old group cannot exist any more). Re-parented members (PPID 1 or a
    subreaper) are found too, since they keep the group id.
    """
    if isinstance(identity_or_pgid, ProcessIdentity):
        state, _ = _match(identity_or_pgid)
        if state in ("alive", "other"):
            return []
        return _orphans_in(identity_or_pgid.pid, identity_or_pgid.create_time, _scan())
    leader = _read_stat(identity_or_pgid)
    if leader is not None and leader.state != "Z":
        return []
    return _orphans_in(identity_or_pgid, 0.0, _scan())


# --------------------------------------------------------------------------- stop


@dataclass(frozen=True)
class StopResult:
    """Outcome of `stop_group` / `kill_group_now`."""

    exit_code: int | None
    """Leader's exit code when it was our child (Popen convention, -9 = SIGKILL);
    None when unknown (adopted worker) or when the stop was refused."""
    escalated: bool
    """SIGTERM was not enough: SIGKILL was sent after the grace period."""
    survivors: list[ProcInfo]
    """Processes of the worker still alive at the end (D state, or escaped with setsid)."""
    refused: str | None
    """Why nothing was signalled (identity did not verify), else None."""
    signals: tuple[str, ...] = ()
    """Signals sent, in order (e.g. ``("SIGTERM", "SIGCONT", "SIGKILL")``)."""
    duration_s: float = 0.0

    @property
    def clean(self) -> bool:
        """Not refused and nothing of the worker remains."""
        return self.refused is None and not self.survivors


class _Stopper:
    """One stop of one worker: tracks its processes, signals, waits, reports."""

    def __init__(self, identity: ProcessIdentity) -> None:
        self.identity = identity
        self.signals: list[str] = []
        self.tracked: dict[int, psutil.Process] = {}
        self.pgid: int | None = identity.pid
        self.exit_code: int | None = None

    def setup(self, state: _Match, proc: psutil.Process | None) -> None:
        if state == "alive" and proc is not None:
            try:
                pgid = os.getpgid(self.identity.pid)
            except ProcessLookupError:
                pgid = self.identity.pid
            # An adopted server that does not lead its own group (started from a
            # shell script, say) shares the group with strangers: signal its tree only.
            self.pgid = pgid if pgid == self.identity.pid else None
            self.tracked[proc.pid] = proc
        self.track()

    def track(self) -> None:
        """Add current group members and leader descendants to the tracked set."""
        table = _scan()
        pids: set[int] = set()
        if self.pgid is not None:
            pids |= {s.pid for s in _members(self.pgid, table)}
        leader = self.tracked.get(self.identity.pid)
        if leader is not None and leader.is_running():  # is_running: same create_time
            pids |= _descendants(self.identity.pid, table)
        for pid in pids - self.tracked.keys():
            if not _born_after(pid, self.identity.create_time):
                continue
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                self.tracked[pid] = psutil.Process(pid)

    def reap(self, wait_s: float = 0.0) -> None:
        code = returncode(self.identity, wait_s)
        if code is not None:
            self.exit_code = code

    def alive(self) -> list[psutil.Process]:
        """Tracked processes still running (zombies count as gone)."""
        out = []
        for proc in self.tracked.values():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(proc)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            except psutil.AccessDenied:
                out.append(proc)
        return out

    def in_scope(self, proc: psutil.Process) -> bool:
        """Still reachable by our signals: in the group (group mode) or tracked (tree)."""
        if self.pgid is None:
            return True
        st = _read_stat(proc.pid)
        return st is not None and st.pgid == self.pgid

    def remaining(self) -> list[psutil.Process]:
        """Alive processes our signals reach; those that left the group (setsid) are
        reported by `survivors` but not waited for."""
        return [p for p in self.alive() if self.in_scope(p)]

    def send(self, sig: signal.Signals) -> bool:
        """Signal the group (or the tree); False when the identity stopped verifying."""
        state, _ = _match(self.identity)
        if state == "other":
            return False
        self.signals.append(sig.name)
        if self.pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, sig)
            return True
        for proc in self.remaining():
            # psutil re-checks create_time before signalling (no PID-reuse hit)
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                proc.send_signal(sig)
        return True

    def settled(self) -> bool:
        """Reap, pick up new members, and say whether none of them is left."""
        self.reap()
        self.track()
        return not self.remaining()

    async def wait_gone(self, timeout_s: float) -> bool:
        started = time.monotonic()
        deadline = started + max(0.0, timeout_s)
        while True:
            # the /proc scan is off the loop: ~15 µs per process on a busy box
            if await asyncio.to_thread(self.settled):
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            step = _POLL_S if now - started < 1.0 else 4 * _POLL_S
            await asyncio.sleep(min(step, deadline - now))

    def survivors(self) -> list[ProcInfo]:
        out = []
        for proc in self.alive():
            st = _read_stat(proc.pid)
            if st is not None and self.pgid is not None and st.pgid != self.pgid:
                reason = f"left the process group (now pgid {st.pgid}, session {st.sid})"
            elif st is not None and st.state == "D":
                reason = "uninterruptible sleep (D state) after SIGKILL"
            else:
                reason = "still alive after SIGKILL"
            info = _info(proc.pid, reason)
            if info is not None:
                out.append(info)
        return out


async def _stop(identity: ProcessIdentity, *, grace_s: float | None, kill_wait_s: float) -> StopResult:
    started = time.monotonic()
    state, proc = _match(identity)
    if state == "other":
        return StopResult(exit_code=None, escalated=False, survivors=[], duration_s=0.0,
                          refused=f"pid {identity.pid} now belongs to another process "
                                  "(create_time or command line differ); not signalled")
    stopper = _Stopper(identity)
    stopper.setup(state, proc)
    stopper.reap()
    escalated = False
    if stopper.remaining():
        if grace_s is not None:
            if not stopper.send(signal.SIGTERM):
                return _refused_midway(identity, stopper, started)
            # like systemd: a stopped process only acts on SIGTERM once continued
            stopper.send(signal.SIGCONT)
            gone = await stopper.wait_gone(grace_s)
            escalated = not gone
        if grace_s is None or escalated:
            if not stopper.send(signal.SIGKILL):
                return _refused_midway(identity, stopper, started)
            await stopper.wait_gone(kill_wait_s)
    if stopper.exit_code is None:
        # every member is gone or a zombie: a leader's last threads take moments
        await asyncio.to_thread(stopper.reap, 1.0)
    return StopResult(exit_code=stopper.exit_code, escalated=escalated,
                      survivors=stopper.survivors(), refused=None,
                      signals=tuple(stopper.signals), duration_s=time.monotonic() - started)


def _refused_midway(identity: ProcessIdentity, stopper: _Stopper, started: float) -> StopResult:
    return StopResult(exit_code=stopper.exit_code, escalated=False, survivors=[],
                      refused=f"pid {identity.pid} was taken by another process during the stop",
                      signals=tuple(stopper.signals), duration_s=time.monotonic() - started)


async def stop_group(identity: ProcessIdentity, *, grace_s: float, kill_wait_s: float = 5.0) -> StopResult:
    """Stop a worker: SIGTERM (+SIGCONT) to its group, wait up to `grace_s` for every
    member to exit, SIGKILL the group if any remain, wait up to `kill_wait_s`, then
    report what is still alive.

    Refuses (sends nothing) when `identity.pid` now belongs to another process. When
    the leader is already gone, cleans up the group's leftovers the same way. A worker
    that does not lead its own process group (adopted, started by a shell) has its
    process tree signalled instead. Processes that left the group with setsid are
    reported as survivors, not signalled.
    """
    return await _stop(identity, grace_s=grace_s, kill_wait_s=kill_wait_s)


async def kill_group_now(identity: ProcessIdentity, *, kill_wait_s: float = 5.0) -> StopResult:
    """The operator's "kill": SIGKILL to the worker's group at once, then as
    `stop_group` (wait, report survivors, exit code)."""
    return await _stop(identity, grace_s=None, kill_wait_s=kill_wait_s)


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class DiscoveredServer:
    """An SGLang (or simulated) server launcher found running on this box."""

    pid: int
    identity: ProcessIdentity
    argv: tuple[str, ...]
    """Command line with secrets masked (for display only)."""
    host: str
    port: int
    model_path: str | None
    cuda_visible_devices: str | None
    """From the process environment; None when unset or not readable."""
    sim: bool
    """True for `backends.sim.worker` launchers."""
    pgid: int | None = None
    settings: Mapping[str, object] = field(default_factory=dict)
    """`backends.sglang.parse_launch_argv` of its command line (API key masked)."""

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://{self.host}:{self.port}"


_PY_OPTS_WITH_ARG = {"-W", "-X", "-Q"}


def launcher_kind(argv: Sequence[str]) -> Literal["sglang", "sim"] | None:
    """Whether `argv` starts an SGLang server (``-m sglang.launch_server``,
    ``sglang serve``, ``-m sglang serve``) or the simulated one
    (``-m backends.sim.worker``); None otherwise."""
    if not argv:
        return None
    if os.path.basename(argv[0]) == "sglang" and len(argv) > 1 and argv[1] == "serve":
        return "sglang"
    i = 1
    while i < len(argv):
        arg = argv[i]
        module = None
        if arg == "-m" and i + 1 < len(argv):
            module, rest = argv[i + 1], argv[i + 2:]
        elif arg.startswith("-m") and len(arg) > 2 and not arg.startswith("--"):
            module, rest = arg[2:], argv[i + 1:]
        if module is not None:
            if module == "sglang.launch_server" or (module == "sglang" and rest[:1] == ["serve"]):
                return "sglang"
            if module == "backends.sim.worker":
                return "sim"
            return None
        if arg in _PY_OPTS_WITH_ARG:
            i += 2
            continue
        if arg.startswith("-"):
            if arg == "-c":
                return None
            i += 1
            continue
        # first positional: a script (…/bin/sglang serve, …/sglang/launch_server.py)
        base = os.path.basename(arg)
        if base == "sglang" and argv[i + 1:i + 2] == ["serve"]:
            return "sglang"
        if base == "launch_server.py" and os.path.basename(os.path.dirname(arg)) == "sglang":
            return "sglang"
        return None
    return None


def _flag_value(argv: Sequence[str], *names: str) -> str | None:
    value = None
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(name + "="):
                value = arg[len(name) + 1:]
    return value


def _launch_settings(argv: Sequence[str]) -> dict[str, object]:
    """Settings of a launch argv via `backends.sglang.parse_launch_argv` (the one
    parser of launch command lines), with a minimal parse as fallback; the API key
    is masked."""
    settings: dict[str, object]
    try:
        from backends.sglang import parse_launch_argv  # lazy: no import cycle
        settings = dict(parse_launch_argv(argv))
    except Exception:  # noqa: BLE001 - unknown form or sibling unavailable
        host, port, model = _parse_endpoint(argv)
        settings = {"host": host, "port": port}
        if model is not None:
            settings["model_path"] = model
    if settings.get("api_key") is not None:
        settings["api_key"] = _MASK
    return settings


def _parse_endpoint(argv: Sequence[str]) -> tuple[str, int, str | None]:
    """host, port, model path from a launch argv (SGLang defaults: 127.0.0.1:30000)."""
    host = _flag_value(argv, "--host") or "127.0.0.1"
    port_text = _flag_value(argv, "--port")
    try:
        port = int(port_text) if port_text is not None else 30000
    except ValueError:
        port = 30000
    model = _flag_value(argv, "--model-path", "--model")
    return host, port, model


def _as_port(value: object) -> int:
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except ValueError:
        return 30000


def read_argv(identity: ProcessIdentity) -> list[str] | None:
    """The unmasked command line of the identified process (to relaunch an adopted
    server with the same arguments), or None when it no longer verifies."""
    state, proc = _match(identity)
    if state != "alive" or proc is None:
        return None
    try:
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def read_env_var(identity: ProcessIdentity, name: str) -> str | None:
    """One variable of the identified process's environment (as it was at exec), or None
    when it is unset, unreadable (another user's process) or no longer verifies."""
    state, proc = _match(identity)
    if state != "alive" or proc is None:
        return None
    try:
        return proc.environ().get(name)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return None


def discover_sglang_servers() -> list[DiscoveredServer]:
    """SGLang server launchers running on this box (ours or not), oldest first.

    Only launchers: their scheduler/detokenizer children (retitled ``sglang::…``, or
    forked with the same argv) are left out. Includes the simulated worker, flagged
    ``sim=True``. Processes whose command line cannot be read are skipped.
    """
    found: dict[int, tuple[psutil.Process, list[str], str]] = {}
    parents: dict[int, int] = {}
    for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
        info = proc.info
        parents[info["pid"]] = info.get("ppid") or 0
        argv = info.get("cmdline") or []
        kind = launcher_kind(argv)
        if kind is not None:
            found[info["pid"]] = (proc, list(argv), kind)
    servers: list[DiscoveredServer] = []
    for pid, (proc, argv, launcher) in found.items():
        ancestor, hops = parents.get(pid, 0), 0
        while ancestor > 1 and hops < 64 and ancestor not in found:
            ancestor, hops = parents.get(ancestor, 0), hops + 1
        if ancestor in found:
            continue  # a forked child of another launcher
        try:
            ident = ProcessIdentity(pid=pid, create_time=proc.create_time(), cmdline_hash=cmdline_hash(argv))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        try:
            cvd = proc.environ().get("CUDA_VISIBLE_DEVICES")
        except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            cvd = None
        settings = _launch_settings(argv)
        model = settings.get("model_path")
        st = _read_stat(pid)
        servers.append(DiscoveredServer(
            pid=pid, identity=ident, argv=tuple(mask_argv(argv)),
            host=str(settings.get("host") or "127.0.0.1"), port=_as_port(settings.get("port")),
            model_path=str(model) if model is not None else None, cuda_visible_devices=cvd,
            sim=(launcher == "sim"), pgid=st.pgid if st else None, settings=settings))
    servers.sort(key=lambda s: s.identity.create_time)
    return servers


async def discover_sglang_servers_async() -> list[DiscoveredServer]:
    """`discover_sglang_servers` off the event loop."""
    return await asyncio.to_thread(discover_sglang_servers)


# --------------------------------------------------------------------------- ports


@dataclass(frozen=True)
class PortOwner:
    """Who holds a TCP port in LISTEN state."""

    pid: int | None
    """None when the listener's process is not visible to us."""
    name: str | None
    cmdline: tuple[str, ...]
    """Masked command line ((), when unknown)."""
    identity: ProcessIdentity | None = None
    detail: str = ""

    @property
    def unknown(self) -> bool:
        """The port is in use, but we cannot tell by whom."""
        return self.pid is None


_WILDCARDS = {"0.0.0.0", "::", ""}


def _addr_conflicts(listen_ip: str, host: str) -> bool:
    if listen_ip.startswith("::ffff:"):
        listen_ip = listen_ip[len("::ffff:"):]
    return host in _WILDCARDS or listen_ip in _WILDCARDS or listen_ip == host


def _bind_fails(port: int, host: str) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # uvicorn/asyncio set SO_REUSEADDR, so TIME_WAIT leftovers do not count
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


def port_owner(port: int, host: str = "127.0.0.1") -> PortOwner | None:
    """The process LISTENing on `host:port` (wildcard listeners count), or None when
    the port is free.

    Uses psutil.net_connections; when that is denied or shows the socket without a
    pid, falls back to a bind test and reports an unknown owner.
    """
    listener_pid: int | None = None
    seen_socket = False
    try:
        conns: Iterable[Any] = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, PermissionError):
        conns = ()
    for conn in conns:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            continue
        if not _addr_conflicts(conn.laddr.ip, host):
            continue
        seen_socket = True
        if conn.pid:
            listener_pid = conn.pid
            break
    if listener_pid is not None:
        try:
            proc = psutil.Process(listener_pid)
            argv = proc.cmdline()
            return PortOwner(pid=listener_pid, name=proc.name(), cmdline=tuple(mask_argv(argv)),
                             identity=identify(listener_pid), detail="listening")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return PortOwner(pid=listener_pid, name=None, cmdline=(), detail="listening (details not readable)")
    if seen_socket or _bind_fails(port, host):
        return PortOwner(pid=None, name=None, cmdline=(), detail="in use by an unknown process")
    return None


async def port_owner_async(port: int, host: str = "127.0.0.1") -> PortOwner | None:
    """`port_owner` off the event loop (net_connections walks every process's fds)."""
    return await asyncio.to_thread(port_owner, port, host)


__all__ = [
    "DiscoveredServer", "PortOwner", "ProcInfo", "ProcessIdentity", "SpawnError", "StopResult",
    "cmdline_hash", "discover_sglang_servers", "discover_sglang_servers_async", "find_orphans",
    "group_pids", "group_pids_many", "group_pids_many_async", "identify", "is_running",
    "kill_group_now", "launcher_kind", "mask_argv", "port_owner", "port_owner_async",
    "process_tree", "read_argv", "returncode", "rotate_log", "spawn_detached", "stop_group",
    "verify",
]
