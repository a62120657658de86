"""The sim's command line: SGLang's argparse behaviour per version, derived defaults."""

from __future__ import annotations

import pytest

from backends.sim.cli import parse_cli

BASE = ["--model-path", "Qwen/Qwen3-Embedding-4B", "--is-embedding"]


def _exit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as ei:
        parse_cli(argv)
    return ei.value.code, capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--health-check-interval", "10"],
                                  ["--num-scheduler-steps", "8"]])
def test_unknown_flags_exit_2_like_sglang_serve(flag: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _exit(BASE + flag, capsys)
    assert code == 2
    assert err.startswith("usage: sglang serve")
    assert f"sglang serve: error: unrecognized arguments: {' '.join(flag)}" in err


def test_ambiguous_cuda_graph_max_bs_on_0523(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _exit(BASE + ["--cuda-graph-max-bs", "8"], capsys)
    assert code == 2
    assert ("ambiguous option: --cuda-graph-max-bs could match --cuda-graph-max-bs-decode, "
            "--cuda-graph-max-bs-prefill") in err


def test_0_5_2_accepts_cuda_graph_max_bs_and_rejects_new_flags(
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = parse_cli(BASE + ["--sim-sglang-version", "0.5.2", "--cuda-graph-max-bs", "8"])
    assert cfg.version == "0.5.2" and cfg.args["cuda_graph_max_bs"] == 8
    code, err = _exit(BASE + ["--sim-sglang-version", "0.5.2",
                              "--cuda-graph-backend-prefill", "disabled"], capsys)
    assert code == 2 and "launch_server.py: error: unrecognized arguments" in err


def test_model_path_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _exit(["--is-embedding"], capsys)
    assert code == 2 and "--model-path/--model" in err


def test_abbreviations_and_aliases_work() -> None:
    cfg = parse_cli(["--model", "m", "--tp", "1", "--mem-frac", "0.5"])
    assert cfg.model_path == "m" and cfg.args["tp_size"] == 1
    assert cfg.mem_fraction_static == 0.5


def test_defaults_are_derived_like_sglang() -> None:
    cfg = parse_cli(BASE)
    assert cfg.version == "0.5.23" and cfg.port == 30000 and cfg.host == "127.0.0.1"
    assert cfg.chunked_prefill_size == 8192
    assert 0.82 <= cfg.mem_fraction_static <= 0.84
    assert cfg.served_model_name == "Qwen/Qwen3-Embedding-4B"
    assert cfg.context_length == 32768 and cfg.dim == 2560
    assert cfg.cuda_graph and not cfg.matryoshka
    old = parse_cli(BASE + ["--sim-sglang-version", "0.5.2"])
    assert old.mem_fraction_static == 0.874


def test_cuda_graph_switches_per_version() -> None:
    assert not parse_cli(BASE + ["--sim-sglang-version", "0.5.2",
                                 "--disable-cuda-graph"]).cuda_graph
    assert not parse_cli(BASE + ["--cuda-graph-backend-prefill", "disabled"]).cuda_graph
    # decode graphs are never captured for embeddings: the decode backend changes nothing
    assert parse_cli(BASE + ["--cuda-graph-backend-decode", "disabled"]).cuda_graph
    deprecated = parse_cli(BASE + ["--disable-cuda-graph"])
    assert not deprecated.cuda_graph
    assert any("deprecated" in w for w in deprecated.deprecation_warnings)


def test_matryoshka_overrides() -> None:
    assert parse_cli(BASE + ["--json-model-override-args", '{"is_matryoshka": true}']).matryoshka
    cfg = parse_cli(BASE + ["--json-model-override-args",
                            '{"matryoshka_dimensions": [64, 128, 2560]}'])
    assert cfg.matryoshka and cfg.matryoshka_dimensions == [64, 128, 2560]
    with pytest.raises(ValueError):
        parse_cli(BASE + ["--json-model-override-args", "{not json"])


def test_sim_flags_and_faults(monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,4")
    cfg = parse_cli(BASE + ["--sim-load-s", "0.1", "--sim-dim", "384", "--sim-fault", "stall",
                            "--sim-fault", "slow_ms=5", "--sim-fault", "startup-fail",
                            "--sim-attention", "bidirectional"])
    assert (cfg.gpu_index, cfg.load_s, cfg.dim, cfg.attention) == (3, 0.1, 384, "bidirectional")
    assert cfg.faults.stall and cfg.faults.slow_ms == 5.0 and cfg.startup_fail
    code, err = _exit(BASE + ["--sim-fault", "melt"], capsys)
    assert code == 2 and "unknown fault 'melt'" in err


def test_served_model_name_with_colon_is_invalid_on_0523() -> None:
    with pytest.raises(ValueError, match="must not contain ':'"):
        parse_cli(BASE + ["--served-model-name", "a:b"])
    assert parse_cli(BASE + ["--sim-sglang-version", "0.5.2", "--served-model-name",
                             "a:b"]).served_model_name == "a:b"
