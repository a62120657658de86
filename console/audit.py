"""Append-only JSONL audit log of every operator and supervisor action.

One JSON object per line: when (ISO-8601 UTC and epoch), who (uid and user name),
what (action, worker, arguments before/after), and how it ended (outcome, duration).
Each line is written with one ``os.write`` on an ``O_APPEND`` descriptor under an
exclusive ``flock`` and fsynced, so lines from concurrent writers never interleave and
a recorded action survives a crash. Secrets are masked before anything is written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import pwd
import re
import time
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any

MASK = "****"

_SECRET_KEY = re.compile(
    r"(?:^|[_-])(api[_-]?key|apikey|token|password|passwd|secret|authorization"
    r"|credentials?|cookie)$", re.IGNORECASE)
_SECRET_FLAG = re.compile(
    r"^--?(api[-_]key|admin[-_]api[-_]key|token|password|secret)$", re.IGNORECASE)
_SECRET_IN_TEXT = [
    # --api-key=VALUE / --api-key VALUE (also --admin-api-key, --token, --password)
    re.compile(r"(--?(?:admin[-_])?(?:api[-_]key|token|password|secret)(?:=|\s+))(\S+)", re.IGNORECASE),
    re.compile(r"(\bBearer\s+)([^\s\"']+)", re.IGNORECASE),
    re.compile(r"(\bAuthorization:\s*)(?!Bearer\b)(\S+)", re.IGNORECASE),
    # key=value / "key": "value" pairs inside free text
    re.compile(r"""((?:api[_-]?key|token|password|secret)["']?\s*[:=]\s*["']?)([^\s"',}]+)""",
               re.IGNORECASE),
]


class Outcome(str, Enum):
    """How an action ended."""

    OK = "ok"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    REFUSED = "refused"


def mask_text(text: str) -> str:
    """Mask secrets inside free text (``--api-key X``, ``Bearer X``, ``token=X``)."""
    for pattern in _SECRET_IN_TEXT:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


def mask_secrets(value: Any) -> Any:
    """Return a copy of `value` with secrets masked.

    Dict values under keys that look secret (api_key, token, password, ...) become
    ``****``; in lists of strings (an argv) the element after a secret flag is masked;
    strings are passed through `mask_text`.
    """
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and _SECRET_KEY.search(k) and v not in (None, "")
                    else mask_secrets(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        out: list[Any] = []
        hide_next = False
        for item in value:
            if hide_next:
                out.append(MASK)
                hide_next = False
                continue
            if isinstance(item, str) and _SECRET_FLAG.match(item):
                hide_next = True
                out.append(item)
                continue
            out.append(mask_secrets(item))
        return out
    if isinstance(value, str):
        return mask_text(value)
    return value


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class AuditLog:
    """The audit log at `path` (created 0600), rotated by size keeping `keep` old files.

    Old files are ``path.1`` (newest) ... ``path.<keep>`` (oldest).
    """

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = 10 << 20,
                 keep: int = 5, mask: Callable[[Any], Any] = mask_secrets,
                 max_line_bytes: int = 64 << 10,
                 clock: Callable[[], float] = time.time) -> None:
        """`mask` is applied to before/after/detail; `clock` gives epoch seconds."""
        if keep < 0:
            raise ValueError("keep must be >= 0")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self._mask = mask
        self._max_line = max_line_bytes
        self._clock = clock

    # -- writing

    def record(self, action: str, *, worker: str | None, caller_uid: int | None,
               outcome: Outcome | str, duration_s: float | None = None,
               args_before: Any = None, args_after: Any = None, detail: Any = None,
               caller_pid: int | None = None, now: float | None = None) -> dict[str, Any]:
        """Append one entry, durably; return it as written.

        `caller_uid` None means the supervisor acted on its own (auto restart...);
        `outcome` is one of ok, failed, rolled_back, refused.
        """
        outcome = Outcome(outcome)
        epoch = self._clock() if now is None else now
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(epoch, dt.UTC)
                    .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "epoch": round(epoch, 3),
            "uid": caller_uid,
            "user": "supervisor" if caller_uid is None else _user_name(caller_uid),
            "pid": caller_pid,
            "action": action,
            "worker": worker,
            "outcome": outcome.value,
            "duration_s": None if duration_s is None else round(duration_s, 3),
            "before": self._mask(args_before),
            "after": self._mask(args_after),
            "detail": self._mask(detail),
        }
        data = self._encode(entry)
        self._append(data)
        return json.loads(data)

    def _encode(self, entry: dict[str, Any]) -> bytes:
        data = (json.dumps(entry, ensure_ascii=False, default=str, separators=(",", ":"))
                + "\n").encode()
        if len(data) > self._max_line:
            # Keep the line bounded (readers, atomic appends): drop the bulky parts.
            for key in ("before", "after", "detail"):
                entry[key] = {"truncated": True,
                              "bytes": len(json.dumps(entry[key], default=str))}
            data = (json.dumps(entry, ensure_ascii=False, default=str, separators=(",", ":"))
                    + "\n").encode()
        return data

    def _append(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):  # bounded: only loops when another writer rotates under us
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                st = os.fstat(fd)
                try:
                    current = os.stat(self.path)
                except FileNotFoundError:
                    continue
                if (current.st_dev, current.st_ino) != (st.st_dev, st.st_ino):
                    continue  # rotated while we waited for the lock: reopen
                if st.st_size > 0 and st.st_size + len(data) > self.max_bytes:
                    self._rotate()
                    continue
                if st.st_size > 0 and os.pread(fd, 1, st.st_size - 1) != b"\n":
                    data = b"\n" + data  # a writer died mid-line: don't glue onto its tail
                written = os.write(fd, data)
                if written != len(data):
                    # Not expected on a regular file; finish the line rather than tear it.
                    view = memoryview(data)[written:]
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                os.fsync(fd)
                return
            finally:
                os.close(fd)  # also releases the flock
        raise OSError(f"could not append to audit log {self.path}: it keeps being rotated")

    def _rotate(self) -> None:
        """Shift path -> path.1 -> ... -> path.keep (the oldest is dropped). Lock held."""
        if self.keep == 0:
            os.unlink(self.path)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._old(self.keep))
            for i in range(self.keep - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(self._old(i), self._old(i + 1))
            os.rename(self.path, self._old(1))
        _fsync_dir(self.path.parent)

    def _old(self, i: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{i}")

    # -- reading

    def files(self) -> list[Path]:
        """Existing log files, newest first (current, .1, .2, ...)."""
        out = [self.path] + [self._old(i) for i in range(1, self.keep + 1)]
        return [p for p in out if p.exists()]

    def read(self, since: float | dt.datetime | None = None, limit: int | None = None,
             worker: str | None = None, action: str | None = None) -> list[dict[str, Any]]:
        """Entries newest first, filtered; undecodable lines (a torn tail) are skipped.

        `since` is epoch seconds or an aware datetime (entries at or after it).
        """
        if isinstance(since, dt.datetime):
            since = since.timestamp()
        out: list[dict[str, Any]] = []
        if limit is not None and limit <= 0:
            return out
        for entry in self._entries_newest_first():
            if since is not None and entry.get("epoch", 0) < since:
                continue  # not `break`: writers' clocks need not be monotonic
            if worker is not None and entry.get("worker") != worker:
                continue
            if action is not None and entry.get("action") != action:
                continue
            out.append(entry)
            if limit is not None and len(out) >= limit:
                break
        return out

    def _entries_newest_first(self) -> Iterator[dict[str, Any]]:
        for path in self.files():
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                continue  # rotated away between listing and reading
            for line in reversed(raw.split(b"\n")):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    yield entry


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
