"""Launch command lines (both engines, three SGLang versions), secret masking,
settings without effect, and reading a running server's command line back."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from backends.sglang import (
    BUILTIN_VERSIONS,
    DEFAULT_E2E_BUCKETS_S,
    MASK,
    FlagCatalogue,
    build_launch,
    default_nccl_port,
    effect_warnings,
    format_argv,
    mask_argv,
    mask_env,
    parse_launch_argv,
)
from console.model import Engine, WorkerSpec

DATA = Path(__file__).resolve().parent.parent / "data"


def real(version: str) -> FlagCatalogue:
    return FlagCatalogue.parse_help(
        (DATA / f"sglang_help_{version}.txt").read_text(encoding="utf-8"), version)


def spec(**kw: object) -> WorkerSpec:
    base: dict[str, object] = {
        "name": "gpu0-a", "port": 30001, "model_path": "/models/Qwen3-Embedding-4B", "gpu": 0,
        "served_model_name": "qwen3-embedding-4b", "mem_fraction_static": 0.42,
        "max_running_requests": 128, "chunked_prefill_size": 4096, "context_length": 8192,
        "api_key": "sk-secret-123", "cuda_graph": False}
    base.update(kw)
    return WorkerSpec(**base)  # type: ignore[arg-type]


def options(argv: tuple[str, ...], start: int = 3) -> dict[str, list[str]]:
    """flag → values, for an argv of `--flag v...` items (after python -m module)."""
    out: dict[str, list[str]] = {}
    current = None
    for token in argv[start:]:
        if token.startswith("--"):
            current = token
            assert current not in out, f"{current} twice"
            out[current] = []
        else:
            assert current is not None
            out[current].append(token)
    return out


@pytest.mark.parametrize("version", BUILTIN_VERSIONS)
def test_sglang_argv_and_env(version: str) -> None:
    cat = real(version)
    cmd = build_launch(spec(env=(("TOKENIZERS_PARALLELISM", "false"),)), python="/usr/bin/python3",
                       catalogue=cat)
    assert cmd.argv[:3] == ("/usr/bin/python3", "-m", "sglang.launch_server")
    opts = options(cmd.argv)
    assert opts["--model-path"] == ["/models/Qwen3-Embedding-4B"]
    assert opts["--is-embedding"] == [] and opts["--enable-metrics"] == []
    assert opts["--host"] == ["127.0.0.1"] and opts["--port"] == ["30001"]
    assert opts["--nccl-port"] == ["31001"]
    assert opts["--mem-fraction-static"] == ["0.42"]
    assert opts["--served-model-name"] == ["qwen3-embedding-4b"]
    assert opts["--max-running-requests"] == ["128"]
    assert opts["--chunked-prefill-size"] == ["4096"]
    assert opts["--context-length"] == ["8192"]
    assert opts["--api-key"] == ["sk-secret-123"]
    assert [float(x) for x in opts["--bucket-e2e-request-latency"]] == list(DEFAULT_E2E_BUCKETS_S)
    assert cmd.env == {"HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "0",
                       "TOKENIZERS_PARALLELISM": "false"}
    # everything the launcher writes is accepted by that version's own argparse
    assert [p for p in cat.check_args(list(cmd.argv[3:])) if p.severity == "error"] == []


@pytest.mark.parametrize("version,expected", [
    ("0.5.2", {"--disable-cuda-graph": []}),
    ("0.5.17", {"--cuda-graph-backend-decode": ["disabled"],
                "--cuda-graph-backend-prefill": ["disabled"]}),
    ("0.5.23", {"--cuda-graph-backend-decode": ["disabled"],
                "--cuda-graph-backend-prefill": ["disabled"]}),
])
def test_cuda_graph_off_the_versions_own_way(version: str, expected: dict[str, list[str]]) -> None:
    for cat in (real(version), FlagCatalogue.builtin(version)):
        opts = options(build_launch(spec(cuda_graph=False), catalogue=cat).argv)
        graph = {k: v for k, v in opts.items() if "cuda-graph" in k}
        assert graph == expected
        # nothing deprecated is emitted
        warnings = [p for p in cat.check_args(list(build_launch(spec(), catalogue=cat).argv[3:]))]
        assert warnings == []


@pytest.mark.parametrize("cuda_graph", [None, True])
def test_cuda_graph_left_alone(cuda_graph: bool | None) -> None:
    argv = build_launch(spec(cuda_graph=cuda_graph), catalogue=real("0.5.23")).argv
    assert not any("cuda-graph" in a for a in argv)


def test_optional_settings_left_out() -> None:
    bare = WorkerSpec(name="w", port=30010, model_path="/m")
    cmd = build_launch(bare, python="py", catalogue=real("0.5.23"))
    opts = options(cmd.argv)
    assert set(opts) == {"--model-path", "--is-embedding", "--host", "--port", "--nccl-port",
                         "--enable-metrics", "--bucket-e2e-request-latency"}
    assert cmd.env == {"HF_HUB_OFFLINE": "1"}  # gpu None: CUDA_VISIBLE_DEVICES not set


def test_nccl_port() -> None:
    cat = real("0.5.23")
    assert options(build_launch(spec(), catalogue=cat, nccl_port=40123).argv)["--nccl-port"] == ["40123"]
    assert default_nccl_port(30001) == 31001
    assert default_nccl_port(64535) == 65535
    assert default_nccl_port(65000) == 64000  # would overflow: goes below instead
    hi = build_launch(spec(port=65000), catalogue=cat)
    assert options(hi.argv)["--nccl-port"] == ["64000"]


def test_bucket_edges_custom_and_absent() -> None:
    cat = real("0.5.2")
    opts = options(build_launch(spec(), catalogue=cat, bucket_edges=(0.01, 1.2, 30)).argv)
    assert opts["--bucket-e2e-request-latency"] == ["0.01", "1.2", "30"]
    no_buckets = FlagCatalogue("x", tuple(f for f in cat.flags
                                         if f.name != "--bucket-e2e-request-latency"))
    assert "--bucket-e2e-request-latency" not in build_launch(spec(), catalogue=no_buckets).argv


def test_extra_args_come_last_and_verbatim() -> None:
    extra = ("--json-model-override-args", '{"is_matryoshka": true}', "--log-level", "warning")
    argv = build_launch(spec(extra_args=extra), catalogue=real("0.5.23")).argv
    assert argv[-4:] == extra


@pytest.mark.parametrize("version", ["0.5.2", "0.5.23"])
def test_sim_engine_same_flags_plus_sim_args(version: str) -> None:
    cat = FlagCatalogue.sim(version)
    sim_args = ("--sim-sglang-version", version, "--sim-load-s", "0.2", "--sim-fault", "slow_ms=5")
    s = spec(engine=Engine.SIM, gpu=1)
    sim = build_launch(s, python="/venv/bin/python", catalogue=cat, sim_args=sim_args)
    assert sim.argv[:3] == ("/venv/bin/python", "-m", "backends.sim.worker")
    assert sim.argv[-len(sim_args):] == sim_args
    real_cmd = build_launch(spec(engine=Engine.SGLANG, gpu=1), python="/venv/bin/python",
                            catalogue=cat, sim_args=sim_args)
    # identical SGLang flags; sim args only for the sim
    assert sim.argv[3:-len(sim_args)] == real_cmd.argv[3:]
    assert sim.env["CUDA_VISIBLE_DEVICES"] == "1"
    assert cat.check_args(list(sim.argv[3:])) == []


# ---- masking ------------------------------------------------------------------------


@pytest.mark.parametrize("argv,expected", [
    (["--api-key", "sk-1"], ["--api-key", MASK]),
    (["--api-key=sk-1"], [f"--api-key={MASK}"]),
    (["--admin-api-key", "adm"], ["--admin-api-key", MASK]),
    (["--api-k", "sk-1"], ["--api-k", MASK]),  # argparse abbreviation of --api-key
    (["--control-plane-api-keys", "c:C:admin:s3"], ["--control-plane-api-keys", MASK]),
    (["env", "HF_TOKEN=hf_abc", "EMBEDOPS_API_KEY=k", "TOKENIZERS_PARALLELISM=false", "python"],
     ["env", f"HF_TOKEN={MASK}", f"EMBEDOPS_API_KEY={MASK}", "TOKENIZERS_PARALLELISM=false",
      "python"]),
    (["--port", "1", "--model-path", "/m"], ["--port", "1", "--model-path", "/m"]),
    (["--api-key"], ["--api-key"]),
    (["--api-key", "-starts-with-dash", "--port", "1"], ["--api-key", MASK, "--port", "1"]),
])
def test_mask_argv(argv: list[str], expected: list[str]) -> None:
    assert mask_argv(argv) == expected


def test_format_argv_of_a_launch_hides_the_key() -> None:
    cmd = build_launch(spec(api_key="sk-very-secret"), catalogue=real("0.5.23"))
    text = format_argv(cmd.argv)
    assert "sk-very-secret" not in text
    assert shlex.split(text)[shlex.split(text).index("--api-key") + 1] == MASK
    assert "--mem-fraction-static 0.42" in text


def test_mask_env() -> None:
    env = {"HF_TOKEN": "x", "OPENAI_API_KEY": "y", "PATH": "/bin", "TOKENIZERS_PARALLELISM": "0"}
    assert mask_env(env) == {"HF_TOKEN": MASK, "OPENAI_API_KEY": MASK, "PATH": "/bin",
                             "TOKENIZERS_PARALLELISM": "0"}


# ---- settings without effect --------------------------------------------------------


def test_effect_warnings() -> None:
    assert effect_warnings(spec(cuda_graph=None), "0.5.23") == []
    old = effect_warnings(spec(cuda_graph=False), "0.5.2")
    assert len(old) == 1 and "no effect" in old[0] and "decode" in old[0]
    assert "no effect" in effect_warnings(spec(cuda_graph=True), "0.5.2")[0]
    new = effect_warnings(spec(cuda_graph=False), "0.5.23", real("0.5.23"))
    assert len(new) == 1 and "prefill" in new[0]
    dep = effect_warnings(spec(cuda_graph=None, extra_args=("--disable-cuda-graph",)), "0.5.23")
    assert len(dep) == 1 and "deprecated" in dep[0] and "cuda_graph = false" in dep[0]
    decode = effect_warnings(spec(cuda_graph=None,
                                  extra_args=("--cuda-graph-max-bs-decode", "8",
                                              "--enable-cache-report")), "0.5.23")
    assert len(decode) == 2
    assert "--cuda-graph-max-bs-decode has no effect" in decode[0]
    assert "/v1/embeddings" in decode[1]


# ---- reading a command line back ----------------------------------------------------


@pytest.mark.parametrize("engine", [Engine.SGLANG, Engine.SIM])
def test_parse_launch_argv_round_trip(engine: Engine) -> None:
    s = spec(engine=engine, extra_args=("--disable-radix-cache", "--log-level", "warning"))
    cmd = build_launch(s, python="/usr/bin/python3", catalogue=real("0.5.23"),
                       sim_args=("--sim-load-s", "1"))
    got = parse_launch_argv(cmd.argv)
    assert got["engine"] == engine.value
    assert got["python"] == "/usr/bin/python3"
    for key in ("model_path", "host", "port", "mem_fraction_static", "max_running_requests",
                "chunked_prefill_size", "context_length", "served_model_name", "api_key"):
        assert got[key] == getattr(s, key), key
    assert got["nccl_port"] == 31001
    assert got["cuda_graph"] is False and got["is_embedding"] is True
    extra = got["extra_args"]
    assert "--disable-radix-cache" in extra and "--bucket-e2e-request-latency" in extra
    if engine == Engine.SIM:
        assert extra[-2:] == ["--sim-load-s", "1"]


def test_parse_sglang_serve_and_equals_forms() -> None:
    got = parse_launch_argv(["/opt/venv/bin/sglang", "serve", "--model=/m", "--port=30005",
                             "--mem-fraction-static=0.3", "--tp", "2",
                             "--disable-cuda-graph", "--chunked-prefill-size", "-1"])
    assert got["engine"] == "sglang" and "python" not in got
    assert (got["model_path"], got["port"], got["mem_fraction_static"]) == ("/m", 30005, 0.3)
    assert got["chunked_prefill_size"] == -1
    assert got["cuda_graph"] is False
    assert got["host"] == "127.0.0.1"
    assert got["extra_args"] == ["--tp", "2"]


def test_parse_defaults_and_rejects() -> None:
    got = parse_launch_argv(["python3", "-m", "sglang.launch_server", "--model-path", "/m"])
    assert got["port"] == 30000 and "cuda_graph" not in got
    for argv in (["python3", "-m", "http.server"], ["nginx", "-g", "daemon off;"],
                 ["python3", "-m", "sglang.launch_server", "--port", "1"],
                 ["python3", "-m", "sglang.launch_server", "--model-path", "/m", "--port", "x"]):
        with pytest.raises(ValueError):
            parse_launch_argv(argv)
