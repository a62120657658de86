"""backends.procs pieces that need no child process: masking, launcher detection,
argv parsing, identity (de)serialisation, log rotation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from backends import procs
from backends.procs import ProcessIdentity

M = "********"


@pytest.mark.parametrize(("argv", "masked"), [
    (["sglang", "--api-key", "sk-1", "--port", "1"], ["sglang", "--api-key", M, "--port", "1"]),
    (["x", "--admin-api-key=abc", "--api_key", "k"], ["x", f"--admin-api-key={M}", "--api_key", M]),
    (["x", "--hf-token", "t", "--db-password=p", "--client-secret", "s"],
     ["x", "--hf-token", M, f"--db-password={M}", "--client-secret", M]),
    (["x", "--port", "30000", "--model-path", "/m"], ["x", "--port", "30000", "--model-path", "/m"]),
    (["x", "--api-key"], ["x", "--api-key"]),  # dangling flag: nothing to hide
])
def test_basic_mask(argv: list[str], masked: list[str]) -> None:
    assert procs._basic_mask(argv) == masked


def test_mask_argv_hides_keys() -> None:
    shown = procs.mask_argv(["python", "-m", "sglang.launch_server", "--api-key", "sk-1",
                             "--admin-api-key=sk-2", "--port", "30000"])
    assert "sk-1" not in " ".join(shown) and "sk-2" not in " ".join(shown)
    assert shown[:3] == ["python", "-m", "sglang.launch_server"]
    assert shown[-2:] == ["--port", "30000"]


def test_launch_settings_mask_api_key() -> None:
    settings = procs._launch_settings(["python", "-m", "sglang.launch_server", "--model-path", "/m",
                                       "--port", "31000", "--api-key", "sk-1"])
    assert settings["port"] == 31000 and settings["model_path"] == "/m"
    assert settings["api_key"] != "sk-1"
    # a form the product parser may not know still yields an endpoint
    fallback = procs._launch_settings(["python", "-m", "sglang", "serve", "--port", "31001"])
    assert fallback["port"] == 31001 and fallback["host"] == "127.0.0.1"


@pytest.mark.parametrize(("argv", "kind"), [
    (["python3", "-m", "sglang.launch_server", "--port", "1"], "sglang"),
    (["/usr/bin/python3", "-u", "-X", "utf8", "-m", "sglang.launch_server"], "sglang"),
    (["python", "-msglang.launch_server"], "sglang"),
    (["python", "-m", "sglang", "serve", "--model-path", "m"], "sglang"),
    (["/usr/bin/python3", "/usr/local/bin/sglang", "serve", "--port", "2"], "sglang"),
    (["sglang", "serve"], "sglang"),
    (["python", "/opt/x/sglang/launch_server.py", "--port", "3"], "sglang"),
    (["python", "-m", "backends.sim.worker", "--port", "4"], "sim"),
    (["python", "-c", "import time", "-m", "sglang.launch_server"], None),
    (["python", "-m", "sglang.bench_serving"], None),
    (["python", "-m", "sglang"], None),
    (["sglang::scheduler", "", ""], None),
    (["vim", "sglang.launch_server"], None),
    ([], None),
])
def test_launcher_kind(argv: list[str], kind: str | None) -> None:
    assert procs.launcher_kind(argv) == kind


def test_parse_endpoint_defaults_and_forms() -> None:
    assert procs._parse_endpoint(["p", "-m", "sglang.launch_server"]) == ("127.0.0.1", 30000, None)
    assert procs._parse_endpoint(["p", "--host", "0.0.0.0", "--port=31001", "--model", "m"]) == (
        "0.0.0.0", 31001, "m")
    assert procs._parse_endpoint(["p", "--port", "nope", "--model-path", "/a"]) == ("127.0.0.1", 30000, "/a")


def test_identity_json_round_trip() -> None:
    ident = ProcessIdentity(pid=4242, create_time=1795612507.52, cmdline_hash=procs.cmdline_hash(["a", "b"]))
    as_dict = ident.to_json()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert ProcessIdentity.from_json(as_dict) == ident
    assert ProcessIdentity.from_json(json.dumps(as_dict)) == ident


def test_cmdline_hash_separates_arguments() -> None:
    assert procs.cmdline_hash(["a b"]) != procs.cmdline_hash(["a", "b"])
    assert procs.cmdline_hash(["x", "--port", "1"]) == procs.cmdline_hash(("x", "--port", "1"))
    assert len(procs.cmdline_hash(["x"])) == 16


def test_retitled_cmdline_detection() -> None:
    assert procs._looks_retitled(["sglang::scheduler", "", "", ""])
    assert procs._looks_retitled(["sglang::http_server/tokenizer_manager"])
    assert not procs._looks_retitled(["python", "-m", "sglang.launch_server"])


def test_unknown_pid_does_not_verify() -> None:
    ghost = ProcessIdentity(pid=2**22 + 777, create_time=1.0, cmdline_hash="0" * 16)
    assert not procs.verify(ghost)
    assert procs.identify(ghost.pid) is None
    assert procs.group_pids(ghost) == set()
    assert procs.returncode(ghost) is None


def test_own_process_identifies_and_verifies() -> None:
    me = procs.identify(os.getpid())
    assert me is not None and procs.verify(me)
    assert not procs.verify(ProcessIdentity(me.pid, me.create_time + 1.0, me.cmdline_hash))
    assert not procs.verify(ProcessIdentity(me.pid, me.create_time, procs.cmdline_hash(["other"])))


def test_rotate_log_copy_truncate(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    assert not procs.rotate_log(log, 10)  # missing file: nothing to do
    log.write_text("a" * 5)
    assert not procs.rotate_log(log, 10)
    for gen in "bcd":
        log.write_text(gen * 20)
        assert procs.rotate_log(log, 10, backups=2)
    assert log.read_text() == ""
    assert (tmp_path / "w.log.1").read_text() == "d" * 20
    assert (tmp_path / "w.log.2").read_text() == "c" * 20
    assert not (tmp_path / "w.log.3").exists()


def test_rotate_log_without_backups_only_truncates(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("x" * 100)
    assert procs.rotate_log(log, 10, backups=0)
    assert log.stat().st_size == 0
    assert list(tmp_path.iterdir()) == [log]


@pytest.mark.parametrize(("listen", "host", "conflict"), [
    ("127.0.0.1", "127.0.0.1", True),
    ("0.0.0.0", "127.0.0.1", True),
    ("::", "127.0.0.1", True),
    ("::ffff:127.0.0.1", "127.0.0.1", True),
    ("127.0.0.2", "127.0.0.1", False),
    ("::1", "127.0.0.1", False),
    ("10.0.0.5", "0.0.0.0", True),
])
def test_addr_conflicts(listen: str, host: str, conflict: bool) -> None:
    assert procs._addr_conflicts(listen, host) is conflict
