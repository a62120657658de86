"""fleet.toml loading: the shipped examples, defaults and inheritance, worker specs,
and one test per kind of invalid file (field path + reason), all problems at once."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from backends.sglang import DEFAULT_E2E_BUCKETS_S, FlagCatalogue
from console.config import (
    DEFAULT_ALERTS,
    ConfigError,
    FleetConfig,
    Problem,
    config_path,
    load_config,
)
from console.model import Engine

REPO = Path(__file__).resolve().parent.parent.parent
DATA = REPO / "tests" / "data"
CAT_023 = FlagCatalogue.parse_help((DATA / "sglang_help_0.5.23.txt").read_text(), "0.5.23")
CAT_052 = FlagCatalogue.parse_help((DATA / "sglang_help_0.5.2.txt").read_text(), "0.5.2")
ENV = {"HOME": "/nonexistent-home", "PATH": os.environ.get("PATH", "/usr/bin")}

SIM = """\
name = "t"
engine = "sim"

[model]
path = "m"

[defaults]
mem_fraction_static = 0.4

[[workers]]
name = "a"
gpu = 0
port = 30001

[[workers]]
name = "b"
gpu = 0
port = 30002

[[workers]]
name = "c"
gpu = 1
port = 30003

[balancer]
port = 30100
prometheus_port = 30200
"""

NO_WORKERS = SIM[:SIM.index("[[workers]]")] + SIM[SIM.index("[balancer]"):]

SGLANG = """\
name = "q"
engine = "sglang"

[model]
path = "MODEL"

[defaults]
mem_fraction_static = 0.42

[[workers]]
name = "a"
gpu = 0
port = 30001

[[workers]]
name = "b"
gpu = 0
port = 30002

[balancer]
port = 30100
prometheus_port = 30200
"""


def write(tmp_path: Path, text: str, name: str = "fleet.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def model_dir(tmp_path: Path, config: dict[str, object] | None = None,
              name: str = "Qwen3-Embedding-4B") -> Path:
    d = tmp_path / "models" / name
    d.mkdir(parents=True)
    cfg = config or {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
                     "hidden_size": 2560}
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def load(tmp_path: Path, text: str, *, environ: dict[str, str] | None = None,
         catalogue: FlagCatalogue | None = None) -> FleetConfig:
    if "MODEL" in text:
        text = text.replace("MODEL", str(model_dir(tmp_path)))
        catalogue = catalogue or CAT_023
    return load_config(write(tmp_path, text), catalogue=catalogue,
                       environ={**ENV, **(environ or {})})


def problems_of(tmp_path: Path, text: str, **kw: object) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, **kw)  # type: ignore[arg-type]
    return info.value.problems


def edit(base: str, old: str, new: str) -> str:
    assert old in base, old
    return base.replace(old, new, 1)


# ---- the shipped examples -----------------------------------------------------------


def test_sim_example_loads() -> None:
    cfg = load_config(REPO / "console" / "fleet.sim.toml", environ=ENV)
    assert cfg.engine == Engine.SIM and cfg.name == "sim-demo"
    assert len(cfg.workers) == 4 and {w.gpu for w in cfg.workers} == {0, 1}
    for gpu in (0, 1):
        assert sum(w.mem_fraction_static or cfg.defaults.mem_fraction_static
                   for w in cfg.workers if w.gpu == gpu) <= 1
    assert cfg.warnings == ()
    assert cfg.catalogue is not None and cfg.catalogue.source == "sim"
    specs = cfg.worker_specs(environ={})
    assert [s.port for s in specs] == [31001, 31002, 31003, 31004]
    cmd = cfg.launch_command(specs[0])
    assert cmd.argv[1:3] == ("-m", "backends.sim.worker")
    assert "--sim-sglang-version" in cmd.argv and cmd.env["CUDA_VISIBLE_DEVICES"] == "0"


def test_real_example_is_valid_apart_from_the_model_path(tmp_path: Path) -> None:
    example = (REPO / "console" / "fleet.example.toml").read_text()
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "console" / "fleet.example.toml", catalogue=CAT_023, environ=ENV)
    assert [p.path for p in info.value.problems] == ["model.path"]

    model = model_dir(tmp_path)
    text = edit(example, 'path = "/models/Qwen3-Embedding-4B"', f'path = "{model}"')
    cfg = load_config(write(tmp_path, text), catalogue=CAT_023,
                      environ={**ENV, "EMBEDOPS_API_KEY": "sk-test"})
    assert cfg.engine == Engine.SGLANG and len(cfg.workers) == 4
    assert cfg.warnings == ()
    specs = cfg.worker_specs(environ={"EMBEDOPS_API_KEY": "sk-test"})
    assert {s.gpu for s in specs} == {0, 1}
    assert all(s.api_key == "sk-test" and s.mem_fraction_static == 0.42 for s in specs)
    assert all(s.model_path == str(model) for s in specs)
    assert cfg.restart.reset_after_s == 600 and cfg.alerts[0].for_s == 300
    cmd = cfg.launch_command(specs[0])
    assert cmd.argv[1:3] == ("-m", "sglang.launch_server")
    assert [p for p in CAT_023.check_args(list(cmd.argv[3:])) if p.severity == "error"] == []


# ---- defaults, inheritance, derived values ------------------------------------------


def test_documented_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, SIM)
    assert cfg.model.dimension == 2560
    assert cfg.balancer.kind == "sglang-router" and cfg.balancer.host == "127.0.0.1"
    assert cfg.balancer.health_check_interval_s == 3 and cfg.balancer.request_timeout_s == 60
    assert cfg.balancer.cb_failure_threshold == 3 and cfg.balancer.cb_timeout_s == 10
    assert (cfg.probe.interval_s, cfg.probe.timeout_floor_s, cfg.probe.timeout_p99_factor) == (1, 2, 3)
    assert (cfg.probe.eject_after_failures, cfg.probe.restart_after_failures) == (1, 3)
    r = cfg.restart
    assert (r.first_immediate, r.backoff_base_s, r.backoff_cap_s) == (True, 1, 60)
    assert (r.reset_after_s, r.crash_loop_failures, r.crash_loop_window_s) == (600, 5, 600)
    assert cfg.startup_timeout_s == 60  # sim default; 600 for real SGLang
    assert cfg.alerts == DEFAULT_ALERTS
    assert cfg.alerts[0].when[0].metric == "gpu_memory_pct" and cfg.alerts[0].for_s == 300
    assert not any(rule.auto_remediate for rule in cfg.alerts)
    assert cfg.metrics.e2e_latency_buckets_s == DEFAULT_E2E_BUCKETS_S
    assert 1.2 in cfg.metrics.e2e_latency_buckets_s and cfg.metrics.e2e_latency_buckets_s[0] < 0.01
    real = tmp_path / "real"
    real.mkdir()
    assert load(real, SGLANG).startup_timeout_s == 600


def test_worker_inherits_and_overrides(tmp_path: Path) -> None:
    text = edit(SIM, "mem_fraction_static = 0.4\n",
                'mem_fraction_static = 0.4\nmax_running_requests = 64\n'
                'extra_args = ["--log-level", "warning"]\nenv = { A = "1", B = "2" }\n')
    text = edit(text, 'name = "c"\ngpu = 1\n',
                'name = "c"\ngpu = 1\nmem_fraction_static = 0.8\nnccl_port = 40000\n'
                'extra_args = ["--disable-radix-cache"]\nenv = { B = "3" }\n')
    cfg = load(tmp_path, text)
    a, _, c = cfg.worker_specs(environ={})
    assert (a.mem_fraction_static, a.max_running_requests) == (0.4, 64)
    assert (c.mem_fraction_static, c.max_running_requests) == (0.8, 64)
    assert a.extra_args == ("--log-level", "warning")
    assert c.extra_args == ("--log-level", "warning", "--disable-radix-cache")
    assert dict(a.env) == {"A": "1", "B": "2"} and dict(c.env) == {"A": "1", "B": "3"}
    assert "--nccl-port" in cfg.launch_command(c).argv
    argv = cfg.launch_command(c).argv
    assert argv[argv.index("--nccl-port") + 1] == "40000"
    argv = cfg.launch_command(a).argv
    assert argv[argv.index("--nccl-port") + 1] == "31001"


def test_durations_and_alert_rules(tmp_path: Path) -> None:
    text = SIM + """
[restart]
reset_after_s = "10m"
stop_grace_s = "1500ms"
crash_loop_window_s = 120

[[alerts]]
name = "slow"
when = [{ metric = "p95_latency_s", op = ">", value = 1.2 }]
for = "2h"
auto_remediate = true
remediation = "drain"
"""
    cfg = load(tmp_path, text)
    assert (cfg.restart.reset_after_s, cfg.restart.stop_grace_s) == (600, 1.5)
    assert cfg.restart.crash_loop_window_s == 120
    assert len(cfg.alerts) == 1  # a file's rules replace the seeds
    rule = cfg.alerts[0]
    assert (rule.name, rule.for_s, rule.auto_remediate, rule.remediation) == ("slow", 7200, True,
                                                                             "drain")
    assert str(rule.when[0]) == "p95_latency_s > 1.2"


def test_api_key_from_env_and_file(tmp_path: Path) -> None:
    key = tmp_path / "key.txt"
    key.write_text("sk-from-file\n")
    key.chmod(0o600)
    text = edit(SIM, "mem_fraction_static = 0.4\n",
                'mem_fraction_static = 0.4\napi_key_env = "FLEET_KEY"\n')
    text = edit(text, 'name = "c"\n', 'name = "c"\napi_key_file = "key.txt"\n')
    cfg = load(tmp_path, text, environ={"FLEET_KEY": "sk-from-env"})
    assert cfg.warnings == ()
    specs = cfg.worker_specs(environ={"FLEET_KEY": "sk-from-env"})
    assert [s.api_key for s in specs] == ["sk-from-env", "sk-from-env", "sk-from-file"]
    with pytest.raises(ConfigError) as info:
        cfg.worker_specs(environ={})
    assert [str(p) for p in info.value.problems] == [
        "defaults.api_key_env: $FLEET_KEY is not set"] * 2


def test_unset_key_variable_is_a_warning_at_load(tmp_path: Path) -> None:
    text = edit(SIM, "mem_fraction_static = 0.4\n",
                'mem_fraction_static = 0.4\napi_key_env = "FLEET_KEY"\n')
    cfg = load(tmp_path, text)
    assert [w.path for w in cfg.warnings] == ["defaults.api_key_env"]


def test_key_file_readable_by_others_is_a_warning(tmp_path: Path) -> None:
    key = tmp_path / "key.txt"
    key.write_text("sk-1")
    key.chmod(0o644)
    cfg = load(tmp_path, edit(SIM, "[defaults]\n", '[defaults]\napi_key_file = "key.txt"\n'))
    assert any(w.path == "defaults.api_key_file" and "chmod 600" in w.reason for w in cfg.warnings)


def test_config_path_resolution(tmp_path: Path) -> None:
    assert config_path("x.toml", {"EMBEDOPS_CONFIG": "y.toml"}) == Path("x.toml")
    assert config_path(None, {"EMBEDOPS_CONFIG": "y.toml"}) == Path("y.toml")
    assert config_path(None, {}) == Path("fleet.toml")


def test_paths_relative_to_the_file_and_expanded(tmp_path: Path) -> None:
    model = model_dir(tmp_path)
    sub = tmp_path / "etc"
    sub.mkdir()
    text = edit(SGLANG, 'path = "MODEL"', 'path = "$MODELS/Qwen3-Embedding-4B"')
    cfg = load_config(write(sub, text), catalogue=CAT_023,
                      environ={**ENV, "MODELS": str(model.parent)})
    assert cfg.model.path == str(model)
    text2 = edit(SGLANG, 'path = "MODEL"', 'path = "../models/Qwen3-Embedding-4B"')
    text2 = edit(text2, 'engine = "sglang"\n', 'engine = "sglang"\nstate_dir = "state"\n')
    cfg2 = load_config(write(sub, text2), catalogue=CAT_023, environ=ENV)
    assert Path(cfg2.model.path).resolve() == model.resolve()
    assert cfg2.state_path == sub / "state"


def test_loading_changes_nothing(tmp_path: Path) -> None:
    text = edit(SIM, 'engine = "sim"\n', 'engine = "sim"\nstate_dir = "state"\n')
    path = write(tmp_path, text)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    load_config(path, environ=ENV)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_model_warnings(tmp_path: Path) -> None:
    bert = model_dir(tmp_path, {"architectures": ["BertModel"], "model_type": "bert",
                                "hidden_size": 384}, name="minilm")
    text = edit(SGLANG, 'path = "MODEL"', f'path = "{bert}"')
    cfg = load_config(write(tmp_path, text), catalogue=CAT_023, environ=ENV)
    reasons = {w.path: w.reason for w in cfg.warnings}
    assert "--disable-radix-cache" in reasons["defaults.extra_args"]
    assert "hidden_size 384" in reasons["model.dimension"]
    fixed = edit(text, "mem_fraction_static = 0.42\n",
                 'mem_fraction_static = 0.42\nextra_args = ["--disable-radix-cache"]\n')
    fixed = edit(fixed, "[model]\n", "[model]\ndimension = 384\n")
    assert load_config(write(tmp_path, fixed), catalogue=CAT_023, environ=ENV).warnings == ()
    # Qwen3 weights in a directory without "Embedding" in its name, on SGLang 0.5.2
    plain = model_dir(tmp_path, name="qwen3-4b")
    text = edit(SGLANG, 'path = "MODEL"', f'path = "{plain}"')
    cfg = load_config(write(tmp_path, text), catalogue=CAT_052, environ=ENV)
    assert any(w.path == "model.path" and "Embedding" in w.reason for w in cfg.warnings)


def test_effect_warning_for_cuda_graph_on_052(tmp_path: Path) -> None:
    text = edit(SGLANG, "mem_fraction_static = 0.42\n", "mem_fraction_static = 0.42\ncuda_graph = false\n")
    cfg = load(tmp_path, text, catalogue=CAT_052)
    assert [(w.path, "no effect" in w.reason) for w in cfg.warnings] == [("workers (all)", True)]


# ---- invalid files: one case per kind -----------------------------------------------

INVALID = [
    # id, base, old, new, path, reason fragment
    ("wrong-type", SIM, "port = 30001", 'port = "30001"', "workers[0].port",
     "must be an integer, got string '30001'"),
    ("bool-for-int", SIM, "port = 30001", "port = true", "workers[0].port",
     "must be an integer, got boolean true"),
    ("duplicate-name", SIM, 'name = "b"', 'name = "a"', "workers[1].name",
     "duplicate worker name 'a' (also workers[0])"),
    ("duplicate-port", SIM, "port = 30002", "port = 30001", "workers[1].port",
     "port 30001 is already used by workers[0].port"),
    ("port-vs-balancer", SIM, "port = 30003", "port = 30100", "workers[2].port",
     "already used by balancer.port"),
    ("port-vs-prometheus", SIM, "port = 30003", "port = 30200", "workers[2].port",
     "already used by balancer.prometheus_port"),
    ("derived-nccl-port", SIM, "port = 30003", "port = 31001", "workers[0].port",
     "derived NCCL port (set nccl_port) 31001 is already used by workers[2].port"),
    ("nccl-port-collision", SIM, 'name = "c"\n', 'name = "c"\nnccl_port = 30001\n',
     "workers[2].nccl_port", "NCCL port 30001 is already used by workers[0].port"),
    ("port-range", SIM, "port = 30001", "port = 70000", "workers[0].port",
     "70000 is out of range 1..65535"),
    ("port-zero", SIM, "port = 30001", "port = 0", "workers[0].port", "0 is out of range 1..65535"),
    ("mem-fraction-above-1", SIM, "mem_fraction_static = 0.4", "mem_fraction_static = 1.2",
     "defaults.mem_fraction_static", "1.2 is outside (0, 1)"),
    ("mem-fraction-zero", SIM, 'name = "c"\n', 'name = "c"\nmem_fraction_static = 0\n',
     "workers[2].mem_fraction_static", "0 is outside (0, 1)"),
    ("mem-fraction-sum", SIM, "mem_fraction_static = 0.4", "mem_fraction_static = 0.6",
     "workers[1].mem_fraction_static", "on GPU 0 sum to 1.2, above 1 (workers[0], workers[1])"),
    ("mem-fraction-unset-shared-gpu", SIM, "mem_fraction_static = 0.4\n", "",
     "workers[0].mem_fraction_static", "must be set: 2 workers share GPU 0"),
    ("unknown-key", SIM, 'name = "c"\n', 'name = "c"\nmem_fraction_statc = 0.3\n',
     "workers[2].mem_fraction_statc",
     "unknown key 'mem_fraction_statc'; did you mean 'mem_fraction_static'?"),
    ("unknown-section", SIM, "[balancer]", "[balancr]", "balancr",
     "unknown key 'balancr'; did you mean 'balancer'?"),
    ("unknown-flag", SIM, "[defaults]\n", '[defaults]\nextra_args = ["--mem-fraction-statc", "0.3"]\n',
     "defaults.extra_args[0]",
     "unknown flag --mem-fraction-statc for SGLang 0.5.23; did you mean --mem-fraction-static?"),
    ("removed-flag", SIM, "[defaults]\n", '[defaults]\nextra_args = ["--cuda-graph-max-bs", "8"]\n',
     "defaults.extra_args[0]", "--cuda-graph-max-bs was removed in SGLang 0.5.20"),
    ("ambiguous-flag", SIM, "[defaults]\n", '[defaults]\nextra_args = ["--disable-cuda", "1"]\n',
     "defaults.extra_args[0]", "ambiguous option: --disable-cuda could match"),
    ("router-flag", SIM, 'name = "b"\n', 'name = "b"\nextra_args = ["--health-check-interval", "5"]\n',
     "workers[1].extra_args[0]", "sglang-router"),
    ("vllm-flag", SIM, 'name = "b"\n', 'name = "b"\nextra_args = ["--num-scheduler-steps", "8"]\n',
     "workers[1].extra_args[0]", "vLLM"),
    ("flag-duplicates-field", SIM, "[defaults]\n",
     '[defaults]\nextra_args = ["--mem-fraction-static", "0.3"]\n', "defaults.extra_args[0]",
     "--mem-fraction-static duplicates the typed setting mem_fraction_static"),
    ("abbreviation-duplicates-field", SIM, 'name = "a"\n', 'name = "a"\nextra_args = ["--po", "1"]\n',
     "workers[0].extra_args[0]", "--po duplicates the typed setting port"),
    ("api-key-in-extra-args", SIM, "[defaults]\n", '[defaults]\nextra_args = ["--api-key=sk-1"]\n',
     "defaults.extra_args[0]", "--api-key must not be written in the file"),
    ("nan", SIM, "mem_fraction_static = 0.4", "mem_fraction_static = nan",
     "defaults.mem_fraction_static", "must be a finite number, got nan"),
    ("inf", SIM, "[balancer]\n", "[balancer]\nrequest_timeout_s = inf\n",
     "balancer.request_timeout_s", "must be a finite number, got inf"),
    ("nan-in-list", SIM, "[balancer]\n",
     "[metrics]\ne2e_latency_buckets_s = [0.1, nan, 1.2]\n\n[balancer]\n",
     "metrics.e2e_latency_buckets_s[1]", "must be a finite number, got nan"),
    ("literal-api-key", SIM, "[defaults]\n", '[defaults]\napi_key = "sk-123"\n', "defaults.api_key",
     "a literal API key is not allowed in the file"),
    ("key-env-holds-a-key", SIM, "[defaults]\n", '[defaults]\napi_key_env = "sk-abc-123"\n',
     "defaults.api_key_env", "must name an environment variable"),
    ("two-key-sources", SIM, "[defaults]\n", '[defaults]\napi_key_env = "K"\napi_key_file = "k"\n',
     "defaults.api_key_file", "set only one of api_key_env and api_key_file"),
    ("key-file-missing", SIM, 'name = "b"\n', 'name = "b"\napi_key_file = "nope.key"\n',
     "workers[1].api_key_file", "nope.key does not exist"),
    ("engine-typo", SIM, 'engine = "sim"', 'engine = "sglng"', "engine",
     "string 'sglng' is not one of 'sglang', 'sim'; did you mean 'sglang'?"),
    ("literal-choice", SIM, "[balancer]\n", '[balancer]\nkind = "haproxy"\n', "balancer.kind",
     "is not one of 'sglang-router', 'nginx', 'none'"),
    ("not-loopback", SIM, 'name = "a"\n', 'name = "a"\nhost = "0.0.0.0"\n', "workers[0].host",
     "'0.0.0.0' is not a loopback address"),
    ("cuda-visible-devices-env", SIM, "[defaults]\n",
     '[defaults]\nenv = { CUDA_VISIBLE_DEVICES = "1" }\n', "defaults.env.CUDA_VISIBLE_DEVICES",
     "is set from each worker's gpu"),
    ("sim-gpu-index", SIM, "gpu = 1", "gpu = 5", "workers[2].gpu",
     "GPU 5 does not exist: sim.gpu_count is 2"),
    ("bad-duration", SIM, "[balancer]\n", '[restart]\nreset_after_s = "10 minutes"\n\n[balancer]\n',
     "restart.reset_after_s", "is not a duration"),
    ("not-positive", SIM, "[balancer]\n", "[probe]\ninterval_s = 0\n\n[balancer]\n",
     "probe.interval_s", "must be greater than 0 (got 0)"),
    ("backoff-cap-below-base", SIM, "[balancer]\n",
     "[restart]\nbackoff_base_s = 5\nbackoff_cap_s = 2\n\n[balancer]\n", "restart.backoff_cap_s",
     "2 is below restart.backoff_base_s (5)"),
    ("alert-unknown-metric", SIM, "[balancer]\n",
     '[[alerts]]\nname = "x"\nwhen = [{ metric = "gpu_mem_pct", op = ">", value = 90 }]\n\n[balancer]\n',
     "alerts[0].when[0].metric", "unknown metric 'gpu_mem_pct'; did you mean 'gpu_memory_pct'?"),
    ("alert-threshold-without-bucket", SIM, "[balancer]\n",
     '[[alerts]]\nname = "x"\nwhen = [{ metric = "p95_latency_s", op = ">", value = 0.9 }]\n\n[balancer]\n',
     "metrics.e2e_latency_buckets_s", "has no edge at 0.9 s, the threshold of alerts[0].when[0]"),
    ("alert-auto-remediate-without-action", SIM, "[balancer]\n",
     ('[[alerts]]\nname = "x"\nwhen = [{ metric = "error_rate", op = ">", value = 0.1 }]\n'
      "auto_remediate = true\n\n[balancer]\n"), "alerts[0].remediation", "needs a remediation"),
    ("buckets-not-increasing", SIM, "[balancer]\n",
     "[metrics]\ne2e_latency_buckets_s = [0.1, 0.05, 1.2]\n\n[balancer]\n",
     "metrics.e2e_latency_buckets_s[1]", "0.05 is not greater than the edge before it (0.1)"),
    ("bad-fleet-name", SIM, 'name = "t"', 'name = "my fleet"', "name", "invalid fleet name"),
    ("served-name-colon", SIM, 'path = "m"', 'path = "m"\nserved_name = "q:1"', "model.served_name",
     "contains ':'"),
    ("no-workers-key", NO_WORKERS, "[balancer]", "[balancer]", "workers",
     "at least one [[workers]] entry is required"),
    ("empty-workers", NO_WORKERS, 'engine = "sim"\n', 'engine = "sim"\nworkers = []\n',
     "workers", "at least one [[workers]] entry is required"),
    ("worker-not-a-table", NO_WORKERS, 'engine = "sim"\n', 'engine = "sim"\nworkers = [1]\n',
     "workers[0]", "must be a table, got int 1"),
    ("model-path-missing", SGLANG, 'path = "MODEL"', 'path = "/nonexistent/model"', "model.path",
     "/nonexistent/model does not exist"),
    ("model-path-unset-variable", SGLANG, 'path = "MODEL"', 'path = "$NO_SUCH_VAR/m"', "model.path",
     "uses $NO_SUCH_VAR, which is not set"),
    ("repo-id-not-cached", SGLANG, 'path = "MODEL"', 'path = "Qwen/Qwen3-Embedding-4B"',
     "model.path", "nor a model in the local Hugging Face cache"),
    ("python-missing", SGLANG, 'engine = "sglang"\n',
     'engine = "sglang"\n\n[sglang]\npython = "/nonexistent/python3"\n', "sglang.python",
     "is not an executable interpreter"),
]


@pytest.mark.parametrize("base,old,new,path,reason", [c[1:] for c in INVALID],
                         ids=[c[0] for c in INVALID])
def test_invalid(tmp_path: Path, base: str, old: str, new: str, path: str, reason: str) -> None:
    catalogue = CAT_023 if base is SGLANG else None
    problems = problems_of(tmp_path, edit(base, old, new), catalogue=catalogue)
    matching = [p for p in problems if p.path == path and reason in p.reason]
    assert matching, "\n".join(map(str, problems))


def test_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, edit(SIM, "port = 30002", "port = = 30002"))
    assert len(problems) == 1
    assert re.fullmatch(r".*fleet\.toml:\d+:\d+", problems[0].path)
    line = int(problems[0].path.split(":")[-2])
    assert "port = = 30002" in SIM.replace("port = 30002", "port = = 30002").splitlines()[line - 1]
    assert "TOML syntax error" in problems[0].reason


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert info.value.problems[0].reason == "no such file"
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert "directory" in info.value.problems[0].reason


def test_every_problem_listed_at_once(tmp_path: Path) -> None:
    text = edit(SIM, "port = 30001", "port = 70000")
    text = edit(text, 'name = "b"', 'name = "c"')
    text = edit(text, "[balancer]\n", '[balancer]\nkind = "haproxy"\nhealth_check_intervl_s = 2\n')
    text = edit(text, "[defaults]\n", '[defaults]\nextra_args = ["--num-scheduler-steps", "8"]\n')
    text = edit(text, 'path = "m"', 'path = "m"\ndimension = "2560"')
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    paths = {p.path for p in info.value.problems}
    assert paths >= {"workers[0].port", "workers[2].name", "balancer.kind",
                     "balancer.health_check_intervl_s", "defaults.extra_args[0]",
                     "model.dimension"}, info.value.problems
    assert str(info.value).startswith(f"{tmp_path / 'fleet.toml'}: ")
    assert "workers[0].port: 70000 is out of range 1..65535" in str(info.value)


def test_a_bad_value_does_not_cascade(tmp_path: Path) -> None:
    # the invalid fraction is reported once, not again as "must be set" or a bad sum
    problems = problems_of(tmp_path, edit(SIM, "mem_fraction_static = 0.4",
                                          "mem_fraction_static = 2"))
    assert [p.path for p in problems] == ["defaults.mem_fraction_static"]
    problems = problems_of(tmp_path, edit(SIM, "[balancer]\n",
                                          "[metrics]\ne2e_latency_buckets_s = [0.1, nan, 1.2]\n"
                                          "\n[balancer]\n"))
    assert [p.path for p in problems] == ["metrics.e2e_latency_buckets_s[1]"]
    problems = problems_of(tmp_path, edit(SIM, 'engine = "sim"', 'engine = "sglng"'))
    assert [p.path for p in problems] == ["engine"]


def test_python_interpreter_is_used_for_the_version(tmp_path: Path) -> None:
    text = edit(SGLANG, 'engine = "sglang"\n',
                f'engine = "sglang"\n\n[sglang]\npython = "{sys.executable}"\nversion = "0.5.2"\n')
    text = text.replace("MODEL", str(model_dir(tmp_path)))
    cfg = load_config(write(tmp_path, text), environ=ENV)
    # no SGLang in the test venv: the configured version's built-in flag list is used
    assert cfg.catalogue is not None and cfg.catalogue.source == "builtin"
    assert cfg.catalogue.version == "0.5.2" and cfg.python == sys.executable
    assert any(w.path == "sglang" and "not installed" in w.reason for w in cfg.warnings)
