"""`embedops` as a real subprocess without a fleet: help, the default subcommand
(the console), client commands with no supervisor, and a bad fleet file for `up`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

SCRIPT = Path(sys.executable).parent / "embedops"
SUBCOMMANDS = ("check", "demo", "console", "supervise", "up", "down", "status", "drain",
               "undrain", "restart", "kill", "retune", "rollout", "adopt", "add", "remove",
               "validate", "logs", "silence")


def embedops(*args: str, cwd: Path, env: dict[str, str] | None = None,
             ) -> subprocess.CompletedProcess[str]:
    """Run the console script with no EMBEDOPS_* setting but `env`; stdin closed."""
    argv = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "console.cli"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDOPS_")}
    return subprocess.run([*argv, *args], cwd=cwd, env={**base, "PYTHONPATH": str(REPO),
                                                        **(env or {})},
                          capture_output=True, text=True, timeout=60, check=False,
                          stdin=subprocess.DEVNULL)


def test_help_lists_every_subcommand(tmp_path: Path) -> None:
    r = embedops("--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: embedops")
    listed = {line.split()[0] for line in r.stdout.splitlines()
              if line.startswith("    ") and line.split()}
    assert set(SUBCOMMANDS) <= listed, set(SUBCOMMANDS) - listed
    assert "Without a COMMAND, opens the console" in " ".join(r.stdout.split())


def test_no_subcommand_runs_the_console(tmp_path: Path) -> None:
    # `console --no-start` with nothing answering stops before any UI: that error
    # shows that plain `embedops` (with console options) went to `console`
    sd = tmp_path / "sd"
    r = embedops("--state-dir", str(sd), "--no-start", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip() == f"embedops: no supervisor answers on {sd / 'control.sock'}"
    r = embedops("--no-start", cwd=tmp_path, env={"EMBEDOPS_STATE_DIR": str(sd)})
    assert r.returncode == 1 and "no supervisor answers on" in r.stderr
    # nothing at all, and no fleet file here: the console says which fleet it needs
    r = embedops(cwd=tmp_path)
    assert r.returncode == 1
    assert "no fleet file at fleet.toml and no --state-dir" in r.stderr
    assert "Traceback" not in r.stderr


def test_client_commands_without_a_supervisor_say_so(tmp_path: Path) -> None:
    sd = tmp_path / "sd"
    for args in (("status",), ("status", "--json"), ("drain", "w1"), ("logs", "w1"),
                 ("validate",), ("silence", "no_data")):
        r = embedops(*args, "--state-dir", str(sd), cwd=tmp_path)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert r.stdout == ""
        first = r.stderr.splitlines()[0]
        assert first.startswith("embedops: no supervisor answers for this fleet"), r.stderr
        assert "`embedops up`" in first
    r = embedops("down", "--state-dir", str(sd), cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip() == "embedops: no supervisor is running for this fleet"
    assert not (sd / "control.sock").exists()


def test_up_with_a_bad_fleet_file_starts_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.toml"
    bad.write_text('name = "x"\nengine = "sim"\n[[workers]]\nname = "w1"\nport = 70000\n')
    r = embedops("up", "--config", str(bad), "--state-dir", str(tmp_path / "sd"), cwd=tmp_path)
    assert r.returncode == 1
    assert f"embedops: {bad}: the fleet file is invalid; nothing was changed:" in r.stderr
    assert "workers[0].port: 70000 is out of range 1..65535" in r.stderr
    assert not (tmp_path / "sd").exists()


def test_retune_without_a_setting_is_a_usage_error(tmp_path: Path) -> None:
    r = embedops("retune", "w1", "--state-dir", str(tmp_path / "sd"), cwd=tmp_path)
    assert r.returncode == 2
    assert "give at least one setting to change" in r.stderr


def test_reader_closing_the_pipe_gives_no_traceback() -> None:
    # `embedops check | head -0`: stdout's reader is gone before the first line
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        argv = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "console.cli"]
        r = subprocess.run([*argv, "check", "--config", "console/fleet.sim.toml"],
                           stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
                           cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        os.close(write_end)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert r.returncode == 141
