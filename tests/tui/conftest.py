"""Fixtures for the console tests: a real static control server and an app factory."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from console.control import ControlClient
from console.tui.app import EmbedopsApp
from tests.tui.static_supervisor import StaticSupervisor, remove_dir, short_socket_dir

FROZEN_CLOCK_AT = 1764070000.0 + 0.5


@pytest.fixture(autouse=True)
def _private_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own XDG config home (the theme preference lives there)."""
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


@pytest.fixture
def supervisor() -> Iterator[StaticSupervisor]:
    """A real ControlServer on a real Unix socket serving the canned fleet."""
    directory = short_socket_dir()
    sup = StaticSupervisor(directory / "control.sock").start()
    try:
        yield sup
    finally:
        sup.stop()
        remove_dir(directory)


AppFactory = Callable[..., EmbedopsApp]


@pytest.fixture
def make_app(supervisor: StaticSupervisor) -> AppFactory:
    """Build a console connected to `supervisor` (fast refresh, frozen clock)."""
    def factory(**opts: Any) -> EmbedopsApp:
        opts.setdefault("refresh_s", 0.2)
        opts.setdefault("clock", lambda: FROZEN_CLOCK_AT)
        return EmbedopsApp(ControlClient(supervisor.socket_path, timeout=5.0),
                           close_client=True, **opts)
    return factory


async def wait_until(pilot: Pilot[Any], condition: Callable[[], bool], *,
                     timeout: float = 10.0, what: str = "condition") -> None:
    """Let the app run until `condition()` holds; bounded by `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def screen_text(app: EmbedopsApp) -> str:
    """What the terminal shows now (the top screen, dialogs over what they cover), as
    plain text with trailing spaces removed."""
    strips = app.screen._compositor.render_strips()
    return "\n".join(strip.text.rstrip() for strip in strips)
