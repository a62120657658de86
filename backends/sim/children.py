"""Child processes of the simulated worker, shaped like SGLang's.

* ``sglang::detokenizer``: for embeddings it only forwards outputs; here it idles.
* ``sglang::scheduler``: see `backends.sim.scheduler`.
* the ``orphan_child`` fault: a grandchild that stays in the worker's process group,
  ignores SIGTERM and outlives the worker (bounded lifetime, `ORPHAN_MAX_S`).

Children set ``PR_SET_PDEATHSIG = SIGKILL`` like SGLang's `kill_itself_when_parent_died`
and keep the default SIGTERM action (a group SIGTERM kills them, as it kills SGLang's).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import time
from collections.abc import Callable
from typing import NoReturn

import setproctitle

from backends.sim.gpumem import ORPHAN_MIB, GpuRegistry

ORPHAN_MAX_S = 600.0
"""The orphan exits on its own after this long, so a forgotten one cannot linger."""
_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(parent_pid: int) -> None:
    """Die by SIGKILL when the parent dies (Linux prctl); exit now if it already has."""
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(libc_name, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(0)


def fork_child(title: str, body: Callable[[], None], *, close_fds: tuple[int, ...] = ()) -> int:
    """Fork a child titled `title` that runs `body` and exits; return its pid."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        for fd in close_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        setproctitle.setproctitle(title)
        set_parent_death_signal(parent)
        body()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - a child must never return into the parent's code
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)
    raise AssertionError("unreachable")


def detokenizer_main(parent_pid: int) -> None:
    """Idle until the parent is gone (PDEATHSIG normally ends it first)."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)


def spawn_orphan(gpu_index: int, port: int | None) -> int | None:
    """Double-fork a SIGTERM-ignoring process in our process group; return its pid.

    The intermediate child exits at once, so the orphan is reparented to init (or the
    nearest subreaper) and is no child of the launcher: SGLang-style tree kills miss
    it; only a process-group kill (or SIGKILL by pid) ends it. It holds `ORPHAN_MIB`
    on the simulated card until then.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rfd)
            grandchild = os.fork()
            if grandchild:
                os.write(wfd, str(grandchild).encode())
                os._exit(0)
            _orphan_body(wfd, gpu_index, port)
        finally:
            os._exit(0)
    os.close(wfd)
    try:
        os.waitpid(pid, 0)
        raw = os.read(rfd, 32)
    finally:
        os.close(rfd)
    try:
        return int(raw.decode())
    except ValueError:
        return None


def _orphan_body(wfd: int, gpu_index: int, port: int | None) -> NoReturn:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    # Drop every inherited descriptor (the HTTP listening socket above all).
    os.closerange(3, 65536)
    setproctitle.setproctitle("sglang::scheduler_orphan")
    registry = GpuRegistry(gpu_index)
    with contextlib.suppress(OSError):
        registry.write(os.getpid(), ORPHAN_MIB, 0, "orphan", port)
    deadline = time.monotonic() + ORPHAN_MAX_S
    while time.monotonic() < deadline:
        time.sleep(1.0)
    registry.remove(os.getpid())
    os._exit(0)
