"""`embedops check` as a real subprocess: exit codes and output, like `nginx -t`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
DATA = REPO / "tests" / "data"
SCRIPT = Path(sys.executable).parent / "embedops"


def embedops(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None,
             ) -> subprocess.CompletedProcess[str]:
    """Run the installed console script (or `python -m console.cli` without one)."""
    argv = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "console.cli"]
    base = {k: v for k, v in os.environ.items()
            if k not in ("EMBEDOPS_CONFIG", "EMBEDOPS_API_KEY", "EMBEDOPS_STATE_DIR")}
    full_env = {**base, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([*argv, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, check=False)


def test_sim_example_passes() -> None:
    r = embedops("check", "--config", "console/fleet.sim.toml")
    assert r.returncode == 0, r.stderr
    assert "fleet sim-demo: 4 workers" in r.stdout
    assert "GPU 0: sim0-a:31001, sim0-b:31002; GPU 1: sim1-a:31003, sim1-b:31004" in r.stdout
    assert "balancer: sglang-router on 127.0.0.1:31000" in r.stdout
    assert "configuration test is successful" in r.stdout
    assert r.stderr == ""


def test_bad_file_lists_every_problem_and_fails(tmp_path: Path) -> None:
    sim = (REPO / "console" / "fleet.sim.toml").read_text()
    bad = (sim.replace("port = 31002", "port = 70000")
              .replace('name = "sim1-b"', 'name = "sim1-a"')
              .replace("[defaults]\n", '[defaults]\nextra_args = ["--health-check-interval", "5"]\n'
                                       "mem_fraction_statc = 0.3\n"))
    path = tmp_path / "fleet.toml"
    path.write_text(bad)
    r = embedops("check", "--config", str(path))
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert "workers[1].port: 70000 is out of range 1..65535" in lines
    assert "workers[3].name: duplicate worker name 'sim1-a' (also workers[2])" in lines
    assert ("defaults.mem_fraction_statc: unknown key 'mem_fraction_statc'; did you mean "
            "'mem_fraction_static'?") in lines
    assert any(line.startswith("defaults.extra_args[0]: --health-check-interval is not an SGLang "
                               "server flag") for line in lines)
    assert lines[-1] == f"embedops: {path}: 4 problems; configuration test failed"
    assert r.stdout == ""


def test_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('name = "x"\nengine = = "sim"\n')
    r = embedops("check", "--config", str(path))
    assert r.returncode == 1
    assert r.stderr.splitlines()[0].startswith(f"{path}:2:")
    assert "TOML syntax error" in r.stderr


def test_missing_file(tmp_path: Path) -> None:
    r = embedops("check", cwd=tmp_path)
    assert r.returncode == 1
    assert "no fleet file at fleet.toml" in r.stderr
    assert "console/fleet.example.toml" in r.stderr
    r = embedops("check", "--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 1 and f"no fleet file at {tmp_path / 'nope.toml'}" in r.stderr


def test_config_from_environment_and_cwd(tmp_path: Path) -> None:
    sim = REPO / "console" / "fleet.sim.toml"
    r = embedops("check", cwd=tmp_path, env={"EMBEDOPS_CONFIG": str(sim)})
    assert r.returncode == 0 and "fleet sim-demo" in r.stdout
    (tmp_path / "fleet.toml").write_text(sim.read_text())
    r = embedops("check", cwd=tmp_path)
    assert r.returncode == 0 and "configuration test is successful" in r.stdout


def test_real_example(tmp_path: Path) -> None:
    # as shipped: only the model directory is missing on this machine
    r = embedops("check", "--config", "console/fleet.example.toml")
    assert r.returncode == 1
    problems = [line for line in r.stderr.splitlines()
                if not line.startswith(("warning:", "embedops:"))]
    assert problems == ["model.path: /models/Qwen3-Embedding-4B does not exist"]
    assert "warning: defaults.api_key_env: $EMBEDOPS_API_KEY is not set" in r.stderr
    # with a model directory and the key set it passes
    model = tmp_path / "Qwen3-Embedding-4B"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"],
                                                   "model_type": "qwen3", "hidden_size": 2560}))
    text = (REPO / "console" / "fleet.example.toml").read_text().replace(
        "/models/Qwen3-Embedding-4B", str(model))
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    r = embedops("check", "--config", str(path), env={"EMBEDOPS_API_KEY": "sk-test"})
    assert r.returncode == 0, r.stderr
    assert "fleet qwen3-embed: 4 workers" in r.stdout
    assert "GPU 0: gpu0-a:30001, gpu0-b:30002; GPU 1: gpu1-a:30003, gpu1-b:30004" in r.stdout
    assert "sk-test" not in r.stdout + r.stderr


def test_sglang_help_reads_and_caches_the_installed_flags(tmp_path: Path) -> None:
    """--sglang-help runs the installed SGLang's --help once (a fake SGLang 0.5.23 here)
    and checks the extra args against its full flag list."""
    site = tmp_path / "site"
    (site / "sglang").mkdir(parents=True)
    (site / "sglang" / "__init__.py").write_text("")
    help_file = DATA / "sglang_help_0.5.23.txt"
    (site / "sglang" / "launch_server.py").write_text(textwrap.dedent(f"""\
        import sys
        sys.stdout.write(open({str(help_file)!r}).read())
        """))
    (site / "sglang-0.5.23.dist-info").mkdir()
    (site / "sglang-0.5.23.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: sglang\nVersion: 0.5.23\n")
    model = tmp_path / "Qwen3-Embedding-4B"
    model.mkdir()
    (model / "config.json").write_text("{}")
    state = tmp_path / "state"
    fleet = textwrap.dedent(f"""\
        name = "q"
        state_dir = "{state}"
        [model]
        path = "{model}"
        [sglang]
        python = "{sys.executable}"
        env = {{ PYTHONPATH = "{site}" }}
        [defaults]
        extra_args = ["--enable-torch-compile-x"]
        [[workers]]
        name = "a"
        port = 30001
        """)
    path = tmp_path / "fleet.toml"
    path.write_text(fleet)
    # without --sglang-help: SGLang 0.5.23 is installed but its --help was never read,
    # so the flag can only be doubted (built-in list)
    r = embedops("check", "--config", str(path))
    assert r.returncode == 0, r.stderr
    assert "cannot be verified" in r.stderr
    assert not state.exists()
    # with it: the full list says the flag does not exist, and the catalogue is cached
    r = embedops("check", "--config", str(path), "--sglang-help")
    assert r.returncode == 1
    assert ("defaults.extra_args[0]: unknown flag --enable-torch-compile-x for SGLang 0.5.23; "
            "did you mean --enable-torch-compile?") in r.stderr.splitlines()
    assert (state / "sglang-flags-0.5.23.json").is_file()
    # the cache is used from now on, without --sglang-help
    r = embedops("check", "--config", str(path))
    assert r.returncode == 1 and "unknown flag --enable-torch-compile-x" in r.stderr


@pytest.mark.parametrize("flag", ["--quiet", "-q"])
def test_quiet(flag: str) -> None:
    r = embedops("check", "--config", "console/fleet.sim.toml", flag)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
