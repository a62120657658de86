"""The per-fleet state directory: where it is, what lives in it, and how it is written.

Resolution order: an explicit ``--state-dir``, then ``$EMBEDOPS_STATE_DIR`` (both used
as the fleet's directory itself), then ``$XDG_STATE_HOME/embedops/<fleet>`` with XDG's
default ``~/.local/state``. The directory is private (0700) and holds::

    state.json        supervisor state (atomic writes)
    control.sock      control socket (see `StateDir.socket_path` for long paths)
    audit.jsonl       audit log
    logs/<worker>.log worker output
    supervisor.lock   single-supervisor lock (flock; contains the holder's pid)
    supervisor.log    the supervisor's own log
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
import pwd
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_STATE_DIR = "EMBEDOPS_STATE_DIR"
MAX_SOCKET_PATH_BYTES = 107  # Linux sun_path is 108 bytes including the NUL

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


class StateDirError(RuntimeError):
    """The state directory (or a file in it) is unusable; the message says why."""


class CorruptStateError(StateDirError):
    """A JSON state file could not be parsed. It was moved aside, not discarded."""

    def __init__(self, path: Path, kept_as: Path, reason: str) -> None:
        super().__init__(
            f"state file {path} is corrupt ({reason}); the corrupt copy was kept as {kept_as}")
        self.path = path
        self.kept_as = kept_as
        self.reason = reason


class LockHeld(StateDirError):
    """Another process holds the supervisor lock (`pid` is None if it did not say)."""

    def __init__(self, path: Path, pid: int | None) -> None:
        who = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"a supervisor is already running for this fleet ({who} holds {path})")
        self.path = path
        self.pid = pid


def validate_name(name: str, what: str = "fleet name") -> str:
    """Check that `name` is safe as one path component (letters, digits, ``._-``)."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise ValueError(
            f"invalid {what} {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit")
    return name


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME")
    if home:
        return Path(home)
    return Path(pwd.getpwuid(os.geteuid()).pw_dir)


def resolve_state_dir(fleet: str, state_dir: str | os.PathLike[str] | None = None, *,
                      env: Mapping[str, str] | None = None) -> Path:
    """The fleet's state directory (absolute), by the resolution order above.

    A relative ``XDG_STATE_HOME`` is ignored, as the XDG spec requires.
    """
    validate_name(fleet)
    env = os.environ if env is None else env
    if state_dir is not None and os.fspath(state_dir) != "":
        return Path(state_dir).expanduser().absolute()
    explicit = env.get(ENV_STATE_DIR)
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = env.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else _home(env) / ".local" / "state"
    return base / "embedops" / fleet


def default_short_socket_base() -> Path:
    """Where sockets go when the state dir path is too long: ``/tmp/embedops-<uid>``."""
    return Path(tempfile.gettempdir()) / f"embedops-{os.geteuid()}"


class StateDir:
    """Paths of one fleet's state directory, plus its safe creation and state I/O."""

    SOCKET_NAME = "control.sock"
    SOCKET_WHERE = "control.sock.path"
    """Written in the state dir when the socket lives elsewhere (long path): says where."""

    def __init__(self, root: str | os.PathLike[str], *,
                 short_socket_base: str | os.PathLike[str] | None = None) -> None:
        """`short_socket_base` overrides ``/tmp/embedops-<uid>`` (tests)."""
        self.root = Path(root).absolute()
        self._short_base = (Path(short_socket_base) if short_socket_base is not None
                            else default_short_socket_base())

    @classmethod
    def resolve(cls, fleet: str, state_dir: str | os.PathLike[str] | None = None, *,
                env: Mapping[str, str] | None = None,
                short_socket_base: str | os.PathLike[str] | None = None) -> StateDir:
        """`resolve_state_dir` + constructor."""
        return cls(resolve_state_dir(fleet, state_dir, env=env),
                   short_socket_base=short_socket_base)

    # -- well-known paths

    @property
    def state_file(self) -> Path:
        """``state.json``."""
        return self.root / "state.json"

    @property
    def audit_path(self) -> Path:
        """``audit.jsonl``."""
        return self.root / "audit.jsonl"

    @property
    def logs_dir(self) -> Path:
        """``logs/``."""
        return self.root / "logs"

    @property
    def lock_path(self) -> Path:
        """``supervisor.lock``."""
        return self.root / "supervisor.lock"

    @property
    def supervisor_log(self) -> Path:
        """``supervisor.log``."""
        return self.root / "supervisor.log"

    def worker_log(self, worker: str) -> Path:
        """``logs/<worker>.log`` (the worker name is validated: no path tricks)."""
        return self.logs_dir / f"{validate_name(worker, 'worker name')}.log"

    @property
    def socket_path(self) -> Path:
        """The control socket: ``<root>/control.sock`` when that fits a Unix socket path.

        Otherwise ``<short base>/<hash of root>/control.sock``; deterministic, so every
        client of the same state dir finds the same socket without reading anything.
        """
        natural = self.root / self.SOCKET_NAME
        if len(os.fsencode(natural)) <= MAX_SOCKET_PATH_BYTES:
            return natural
        digest = hashlib.sha256(os.fsencode(self.root)).hexdigest()[:16]
        short = self._short_base / digest / self.SOCKET_NAME
        if len(os.fsencode(short)) > MAX_SOCKET_PATH_BYTES:
            raise StateDirError(
                f"the control socket path is too long both in the state directory "
                f"({natural}) and in the fallback ({short}); use a shorter state directory")
        return short

    @property
    def socket_is_fallback(self) -> bool:
        """True when the socket lives outside the state dir (long path)."""
        return self.socket_path.parent != self.root

    # -- creation

    def ensure(self) -> StateDir:
        """Create the directory tree privately (0700), or check an existing one.

        An existing directory is never chmod-ed; it must be ours (or root's) and not
        writable by others. For a fallback socket, its base dir is prepared the same
        way and its location written to ``control.sock.path``.
        """
        _private_dir(self.root)
        _private_dir(self.logs_dir)
        if self.socket_is_fallback:
            _private_dir(self._short_base)
            _private_dir(self.socket_path.parent)
            atomic_write_text(self.root / self.SOCKET_WHERE, f"{self.socket_path}\n")
        return self

    # -- state file

    def read_state(self) -> dict[str, Any]:
        """`read_json` of ``state.json``."""
        return read_json(self.state_file)

    def write_state(self, data: Mapping[str, Any]) -> None:
        """`atomic_write_json` of ``state.json`` (mode 0600)."""
        atomic_write_json(self.state_file, data)


def _private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=False)
        os.chmod(path, 0o700)  # mkdir's mode went through the umask
        return
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _private_dir(path)
    except FileExistsError:
        pass
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"{path} exists and is not a directory")
    if st.st_uid not in (os.geteuid(), 0):
        raise StateDirError(f"{path} is owned by uid {st.st_uid}, not by us (uid {os.geteuid()})")
    if st.st_mode & 0o022:
        raise StateDirError(
            f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
            f"use a private directory (chmod 700)")


# ---------------------------------------------------------------------------- atomic files


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_temps(path: Path) -> None:
    """Remove temp files of `path` left by writers that died mid-write."""
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        parts = name[len(prefix):-len(".tmp")].split(".")
        if len(parts) == 2 and parts[0].isdigit() and not _pid_alive(int(parts[0])):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path.parent / name)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically and durably.

    Temp file in the same directory (``.<name>.<pid>.<rand>.tmp``, `mode`), fsync,
    rename over `path`, fsync the directory. A crash leaves the old or the new content,
    never a mix; temp files of dead writers are removed on the next write.
    """
    path = Path(path)
    _remove_dead_temps(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, mode: int = 0o600) -> None:
    """`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode(), mode=mode)


def atomic_write_json(path: str | os.PathLike[str], data: Any, *, mode: int = 0o600) -> None:
    """`atomic_write_bytes` of `data` as JSON (encoded first: a TypeError writes nothing)."""
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode(), mode=mode)


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON-object file: missing → ``{}``; corrupt → `CorruptStateError`.

    A corrupt file is renamed to ``<name>.corrupt-<UTC time>`` (kept for inspection)
    before the error is raised, so the caller can decide to start from empty state.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    reason: str | None = None
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            reason = f"top level is {type(data).__name__}, not an object"
    except ValueError as e:  # includes UnicodeDecodeError
        reason = str(e)
    if reason is None:
        return data
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    kept = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.rename(path, kept)
    _fsync_dir(path.parent)
    raise CorruptStateError(path, kept, reason)


# ---------------------------------------------------------------------------- lock


class SupervisorLock:
    """One supervisor per state dir: a non-blocking ``flock`` on a file holding our pid.

    The kernel drops the lock when the holder dies, so there is no stale lock to clean
    up. The descriptor is close-on-exec: workers spawned by the supervisor never
    inherit it (a process forked *without* exec would, and would keep the lock).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> SupervisorLock:
        """Take the lock or raise `LockHeld` with the holder's pid; returns self."""
        if self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise LockHeld(self.path, self._wait_for_holder_pid()) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _wait_for_holder_pid(self) -> int | None:
        # The holder writes its pid right after locking; give it a moment (bounded).
        for _ in range(20):
            pid = self.holder_pid()
            if pid is not None:
                return pid
            time.sleep(0.01)
        return None

    def holder_pid(self) -> int | None:
        """The pid written in the lock file (whoever wrote it last), if any."""
        try:
            text = self.path.read_text().strip()
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() else None

    def release(self) -> None:
        """Release the lock (the file stays; unlinking lock files races)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)

    def __enter__(self) -> SupervisorLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
