"""The SGLang flag catalogue: --help parsing, argparse-faithful checks, the built-in
table, and the per-version cache.

Fixtures: tests/data/sglang_help_<version>.txt is the `--help` text of the published
sglang 0.5.2 / 0.5.17 / 0.5.23 wheels, produced by their own `prepare_server_args`
(heavy imports stubbed; a few `choices` lists that come from stubbed modules print
as ``{}``).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

import pytest

from backends.sglang import (
    BUILTIN_VERSIONS,
    FlagCatalogue,
    FlagInfo,
    catalogue_cache_path,
    installed_version,
    load_catalogue,
    nearest_builtin_version,
    read_cached_catalogue,
    version_key,
)

DATA = Path(__file__).resolve().parent.parent / "data"


def help_text(version: str) -> str:
    return (DATA / f"sglang_help_{version}.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def parsed() -> dict[str, FlagCatalogue]:
    return {v: FlagCatalogue.parse_help(help_text(v), v) for v in BUILTIN_VERSIONS}


# ---- parsing ------------------------------------------------------------------------


def test_parse_counts_and_completeness(parsed: dict[str, FlagCatalogue]) -> None:
    assert len(parsed["0.5.2"].flags) > 200
    assert len(parsed["0.5.23"].flags) > 500
    for cat in parsed.values():
        assert cat.complete and cat.source == "help"
        assert cat.has("--model-path") and cat.has("--is-embedding")


def test_parse_aliases_arity_choices(parsed: dict[str, FlagCatalogue]) -> None:
    c = parsed["0.5.23"]
    assert c.get("--model") is c.get("--model-path")
    assert set(c.get("--tp-size").names) == {"--tp-size", "--tensor-parallel-size"}
    assert c.get("--is-embedding").arity == "0"
    assert c.get("--port").arity == "1"
    assert c.get("--bucket-e2e-request-latency").arity == "+"
    assert c.get("--uvicorn-access-log-exclude-prefixes").arity == "*"
    assert c.get("--cuda-graph-backend-prefill").choices == ("full", "breakable", "disabled")
    assert "bfloat16" in c.get("--dtype").choices
    # 0.5.2 lists the same alias pair the other way round
    assert parsed["0.5.2"].get("--tp-size").name == "--tensor-parallel-size"
    assert parsed["0.5.2"].get("--hybrid-kvcache-ratio").arity == "?"


def test_parse_deprecations(parsed: dict[str, FlagCatalogue]) -> None:
    assert not parsed["0.5.2"].get("--disable-cuda-graph").deprecated
    for v in ("0.5.17", "0.5.23"):
        info = parsed[v].get("--disable-cuda-graph")
        assert info.deprecated
        assert info.replacement == "--cuda-graph-backend-{decode,prefill}=disabled"
    alias = parsed["0.5.17"].get("--cuda-graph-max-bs")
    assert alias.deprecated and alias.replacement == "--cuda-graph-max-bs-decode"
    # "Replaces the deprecated --grpc-mode" does not make --smg-grpc-mode deprecated
    assert not parsed["0.5.23"].get("--smg-grpc-mode").deprecated
    assert parsed["0.5.23"].get("--grpc-mode").replacement == "--smg-grpc-mode"


def test_parse_rejoins_help_wrapped_at_a_hyphen(parsed: dict[str, FlagCatalogue]) -> None:
    # the fixture wraps "--cuda-graph-" / "backend-decode" across two lines
    assert "--cuda-graph-\n" in help_text("0.5.23").replace(" ", "")
    assert "--cuda-graph-backend-decode" in parsed["0.5.23"].get("--disable-decode-cuda-graph").help


def test_parse_minimal_help_text() -> None:
    text = textwrap.dedent("""\
        usage: sglang serve [-h] --model-path MODEL_PATH [--port PORT]
                            [--level {a,b}]

        options:
          -h, --help            show this help message and exit
          --model-path MODEL_PATH, --model MODEL_PATH
                                The path of the model weights.
          --port PORT           The port.
          --level {a,b}         Pick one.
          --edges EDGES [EDGES ...]
                                Bucket edges.
          --old                 Deprecated alias for --port.
        """)
    cat = FlagCatalogue.parse_help(text, "9.9.9")
    assert [f.name for f in cat.flags] == ["-h", "--model-path", "--port", "--level", "--edges",
                                           "--old"]
    assert cat.get("--level").choices == ("a", "b")
    assert cat.get("--edges").arity == "+"
    assert cat.get("--old").deprecated and cat.get("--old").replacement == "--port"
    assert cat.get("--model-path").help == "The path of the model weights."


# ---- the built-in table agrees with the real --help --------------------------------


@pytest.mark.parametrize("version", BUILTIN_VERSIONS)
def test_builtin_matches_real_help(version: str, parsed: dict[str, FlagCatalogue]) -> None:
    real = parsed[version]
    builtin = FlagCatalogue.builtin(version)
    assert not builtin.complete and builtin.source == "builtin"
    assert len(builtin.flags) > 60
    for info in builtin.flags:
        other = real.get(info.name)
        assert other is not None, f"{info.name} not in SGLang {version}"
        assert set(other.names) == set(info.names), info.name
        assert other.arity == info.arity, info.name
        assert (other.deprecated, other.replacement) == (info.deprecated, info.replacement), info.name
        if info.choices:
            assert other.choices == info.choices, info.name


def test_builtin_version_selection() -> None:
    assert nearest_builtin_version("0.5.20") == "0.5.17"
    assert nearest_builtin_version("0.5.23.post1") == "0.5.23"
    assert nearest_builtin_version("0.4.9") == "0.5.2"
    assert version_key("0.5.10.post1") == (0, 5, 10)
    cat = FlagCatalogue.builtin("0.5.20")
    assert cat.version == "0.5.20" and "0.5.17" in cat.note


# ---- check_args ---------------------------------------------------------------------

CASES = [
    # version, args, kind, severity, text in message, suggestion
    ("0.5.23", ["--mem-fraction-statc", "0.3"], "unknown", "error", "did you mean",
     "--mem-fraction-static"),
    ("0.5.23", ["--cuda-graph-max-bs", "8"], "removed", "error", "removed in SGLang 0.5.20",
     "--cuda-graph-max-bs-decode"),
    ("0.5.23", ["--cuda-graph-bs", "1", "2"], "removed", "error", "0.5.20",
     "--cuda-graph-bs-decode"),
    ("0.5.17", ["--cuda-graph-max-bs", "8"], "deprecated", "warning", "deprecated",
     "--cuda-graph-max-bs-decode"),
    ("0.5.23", ["--disable-cuda-graph"], "deprecated", "warning", "deprecated in SGLang 0.5.23",
     "--cuda-graph-backend-{decode,prefill}=disabled"),
    ("0.5.23", ["--disable-cuda"], "ambiguous", "error",
     "could match --disable-cuda-graph, --disable-cuda-graph-padding", None),
    ("0.5.23", ["--tp", "2"], "abbreviation", "warning", "abbreviation of --tp-size", "--tp-size"),
    ("0.5.2", ["--mem-frac", "0.3"], "abbreviation", "warning", "--mem-fraction-static",
     "--mem-fraction-static"),
    ("0.5.23", ["--health-check-interval", "10"], "not-sglang", "error", "sglang-router", None),
    ("0.5.2", ["--num-scheduler-steps", "8"], "not-sglang", "error", "vLLM", None),
    ("0.5.23", ["--gpu-memory-utilization", "0.9"], "not-sglang", "error",
     "--mem-fraction-static", None),
    ("0.5.23", ["--port"], "missing-value", "error", "expects 1 value", None),
    ("0.5.23", ["--bucket-e2e-request-latency", "--port", "1"], "missing-value", "error",
     "at least one value", None),
    ("0.5.23", ["--enable-metrics=yes"], "unexpected-value", "error", "takes no value", None),
    ("0.5.23", ["--enable-metrics", "yes"], "unexpected-value", "error", "'yes' is not a flag",
     None),
    ("0.5.23", ["--cuda-graph-backend-decode", "off"], "bad-choice", "error", "invalid choice",
     None),
]


@pytest.mark.parametrize("version,args,kind,severity,text,suggestion", CASES,
                         ids=[f"{c[0]}:{' '.join(c[1])}" for c in CASES])
def test_check_args_cases(version: str, args: list[str], kind: str, severity: str, text: str,
                          suggestion: str | None, parsed: dict[str, FlagCatalogue]) -> None:
    problems = parsed[version].check_args(args)
    assert len(problems) == 1, problems
    p = problems[0]
    assert (p.kind, p.severity) == (kind, severity)
    assert text in p.message
    assert p.suggestion == suggestion


@pytest.mark.parametrize("version", BUILTIN_VERSIONS)
def test_check_args_accepts_valid_lists(version: str, parsed: dict[str, FlagCatalogue]) -> None:
    args = ["--model-path", "/m", "--is-embedding", "--chunked-prefill-size", "-1",
            "--bucket-e2e-request-latency", "0.005", "0.1", "1.2", "--port", "30001",
            "--json-model-override-args", '{"is_matryoshka": true}', "--dtype=float16",
            "--log-level", "warning"]
    assert parsed[version].check_args(args) == []


def test_unknown_flag_on_builtin_catalogue_is_only_a_warning() -> None:
    problems = FlagCatalogue.builtin("0.5.23").check_args(["--enable-torch-compile-x"])
    assert [(p.kind, p.severity) for p in problems] == [("unverified", "warning")]
    assert "cannot be verified" in problems[0].message


def test_removed_flag_on_builtin_catalogue_is_an_error() -> None:
    problems = FlagCatalogue.builtin("0.5.23").check_args(["--cuda-graph-max-bs", "8"])
    assert [(p.kind, p.severity) for p in problems] == [("removed", "error")]
    # on the version that still had it, the same flag is fine
    assert FlagCatalogue.builtin("0.5.2").check_args(["--cuda-graph-max-bs", "8"]) == []


def test_problem_index_points_at_the_flag(parsed: dict[str, FlagCatalogue]) -> None:
    problems = parsed["0.5.23"].check_args(["--port", "1", "--bogus-flag", "x", "--tp", "2"])
    assert [(p.index, p.kind) for p in problems] == [(2, "unknown"), (4, "abbreviation")]


def test_resolve(parsed: dict[str, FlagCatalogue]) -> None:
    c = parsed["0.5.23"]
    assert c.resolve("--tp").name == "--tp-size"
    assert c.resolve("--mem-fraction-static=0.3").name == "--mem-fraction-static"
    assert c.resolve("--disable-cuda") is None  # ambiguous
    assert c.resolve("--nope") is None


class _Rejected(Exception):
    pass


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _Rejected(message)


def _argparse_for(cat: FlagCatalogue) -> argparse.ArgumentParser:
    """A stdlib parser with the catalogue's options (add_help off: -h is in the list)."""
    parser = _RaisingParser(add_help=False)
    for info in cat.flags:
        kwargs: dict[str, object] = {"dest": info.name.lstrip("-").replace("-", "_")}
        if info.arity == "0":
            kwargs["action"] = "store_true"
        elif info.arity in ("?", "+", "*"):
            kwargs["nargs"] = info.arity
        elif info.arity != "1":
            kwargs["nargs"] = int(info.arity)
        if info.choices:
            kwargs["choices"] = info.choices
        parser.add_argument(*info.names, **kwargs)  # type: ignore[arg-type]
    return parser


@pytest.mark.parametrize("version,args", [(c[0], c[1]) for c in CASES] + [
    ("0.5.23", ["--enable-breakable-cuda-graph"]),
    ("0.5.17", ["--enable-breakable-cuda-graph"]),
    ("0.5.23", ["--chunked-prefill-size", "-1", "--tp", "2"]),
    ("0.5.2", ["--cuda-graph-max-bs", "8", "--mem-fraction-static=0.5"]),
    ("0.5.23", ["--bucket-e2e-request-latency", "0.1", "0.2", "--port", "1"]),
])
def test_errors_agree_with_stdlib_argparse(version: str, args: list[str],
                                           parsed: dict[str, FlagCatalogue]) -> None:
    """check_args reports an error exactly when argparse (what SGLang uses) rejects."""
    cat = parsed[version]
    try:
        _argparse_for(cat).parse_args(args)
        rejected = False
    except _Rejected:
        rejected = True
    errors = [p for p in cat.check_args(args) if p.severity == "error"]
    assert bool(errors) == rejected, (errors, rejected)


# ---- JSON and the per-version cache ------------------------------------------------


def test_json_round_trip(parsed: dict[str, FlagCatalogue]) -> None:
    cat = parsed["0.5.17"]
    back = FlagCatalogue.from_json(json.loads(json.dumps(cat.to_json())))
    assert back == cat
    assert back.get("--disable-cuda-graph").replacement == cat.get("--disable-cuda-graph").replacement


def make_fake_sglang(root: Path, version: str, help_file: Path) -> tuple[Path, Path]:
    """A fake `sglang` distribution: metadata for `version` and a `launch_server` that
    prints `help_file` on --help and counts its runs. Returns (site dir, counter file)."""
    site = root / "site"
    pkg = site / "sglang"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    counter = root / "help-runs.txt"
    (pkg / "launch_server.py").write_text(textwrap.dedent(f"""\
        import sys
        with open({str(counter)!r}, "a") as f:
            f.write("run\\n")
        if "--help" in sys.argv:
            sys.stdout.write(open({str(help_file)!r}).read())
            sys.exit(0)
        sys.exit(2)
        """))
    dist = site / f"sglang-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: sglang\nVersion: {version}\n")
    return site, counter


def test_installed_version_reads_metadata_without_importing(tmp_path: Path) -> None:
    site, counter = make_fake_sglang(tmp_path, "0.5.17", DATA / "sglang_help_0.5.17.txt")
    assert installed_version(sys.executable, {"PYTHONPATH": str(site)}) == "0.5.17"
    assert not counter.exists()  # launch_server never ran
    assert installed_version(sys.executable, {"PYTHONPATH": str(tmp_path / "empty")}) is None


def test_load_catalogue_runs_help_once_then_uses_the_cache(tmp_path: Path) -> None:
    site, counter = make_fake_sglang(tmp_path, "0.5.17", DATA / "sglang_help_0.5.17.txt")
    state = tmp_path / "state"
    env = {"PYTHONPATH": str(site)}
    first = load_catalogue(state, python=sys.executable, env=env)
    assert first.source == "help" and first.complete and first.version == "0.5.17"
    assert counter.read_text().count("run") == 1
    assert catalogue_cache_path(state, "0.5.17").is_file()
    second = load_catalogue(state, python=sys.executable, env=env)
    assert counter.read_text().count("run") == 1  # cache hit: --help not run again
    assert second == first
    assert read_cached_catalogue(state, "0.5.17") == first
    assert read_cached_catalogue(state, "0.5.23") is None


def test_load_catalogue_falls_back_to_builtin(tmp_path: Path) -> None:
    # SGLang absent
    cat = load_catalogue(tmp_path / "s1", python=sys.executable,
                         env={"PYTHONPATH": str(tmp_path / "none")}, fallback_version="0.5.2")
    assert cat.source == "builtin" and cat.version == "0.5.2"
    assert "not installed" in cat.note
    # installed, but --help fails: built-in list of that version, nothing cached
    broken = tmp_path / "broken.txt"
    broken.write_text("")
    site, _ = make_fake_sglang(tmp_path / "b", "0.5.23", tmp_path / "missing.txt")
    cat = load_catalogue(tmp_path / "s2", python=sys.executable, env={"PYTHONPATH": str(site)})
    assert cat.source == "builtin" and cat.version == "0.5.23"
    assert "--help" in cat.note
    assert not catalogue_cache_path(tmp_path / "s2", "0.5.23").exists()


def test_corrupt_cache_is_ignored(tmp_path: Path) -> None:
    path = catalogue_cache_path(tmp_path, "0.5.17")
    path.write_text("{not json")
    assert read_cached_catalogue(tmp_path, "0.5.17") is None
    path.write_text(json.dumps({"format": 1, "version": "0.5.17",
                                "flags": [{"names": ["--port"], "arity": "1"}]}))
    cat = read_cached_catalogue(tmp_path, "0.5.17")
    assert cat is not None and cat.get("--port") == FlagInfo(("--port",), "1")
