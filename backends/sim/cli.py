"""Command line of the simulated worker: SGLang's flags (per version) plus ``--sim-*``.

The parser is a plain `argparse.ArgumentParser` with ``allow_abbrev=True`` and
``parse_args`` (not ``parse_known_args``), as SGLang's `prepare_server_args` builds it,
so unknown flags exit with status 2 and ``unrecognized arguments``, and ambiguous
prefixes (``--cuda-graph-max-bs`` on 0.5.23) exit with status 2 and ``ambiguous option``.
The flag list mirrors `backends.sglang`'s built-in catalogue (checked against the real
``--help`` of each version).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from backends.sim.faults import FaultError, Faults, parse_fault_flags
from backends.sim.gpumem import default_chunked_prefill, default_mem_fraction

VERSIONS = ("0.5.2", "0.5.23")
DEFAULT_VERSION = "0.5.23"
ATTENTIONS = ("causal", "bidirectional")
DEFAULT_CONTEXT_LENGTH = 32768
"""`max_position_embeddings` the simulated model reports when `--context-length` is unset."""

_ALL = ("0.5.2", "0.5.23")
_NEW = ("0.5.23",)
_OLD = ("0.5.2",)

# (option strings, nargs, versions, type, default). nargs "0" is a store_true flag.
_FLAGS: tuple[tuple[str, str, tuple[str, ...], Any, Any], ...] = (
    ("--model-path --model", "1", _ALL, str, None),
    ("--tokenizer-path", "1", _ALL, str, None),
    ("--tokenizer-mode", "1", _ALL, str, "auto"),
    ("--tokenizer-worker-num", "1", _ALL, int, 1),
    ("--skip-tokenizer-init", "0", _ALL, None, False),
    ("--load-format", "1", _ALL, str, "auto"),
    ("--trust-remote-code", "0", _ALL, None, False),
    ("--context-length", "1", _ALL, int, None),
    ("--is-embedding", "0", _ALL, None, False),
    ("--revision", "1", _ALL, str, None),
    ("--model-impl", "1", _ALL, str, "auto"),
    ("--host", "1", _ALL, str, "127.0.0.1"),
    ("--port", "1", _ALL, int, 30000),
    ("--skip-server-warmup", "0", _ALL, None, False),
    ("--warmups", "1", _ALL, str, None),
    ("--nccl-port", "1", _ALL, int, None),
    ("--dtype", "1", _ALL, str, "auto"),
    ("--quantization", "1", _ALL, str, None),
    ("--kv-cache-dtype", "1", _ALL, str, "auto"),
    ("--mem-fraction-static", "1", _ALL, float, None),
    ("--max-running-requests", "1", _ALL, int, None),
    ("--max-queued-requests", "1", _ALL, int, None),
    ("--max-total-tokens", "1", _ALL, int, None),
    ("--chunked-prefill-size", "1", _ALL, int, None),
    ("--max-prefill-tokens", "1", _ALL, int, 16384),
    ("--schedule-policy", "1", _ALL, str, "fcfs"),
    ("--schedule-conservativeness", "1", _ALL, float, 1.0),
    ("--page-size", "1", _ALL, int, 1),
    ("--device", "1", _ALL, str, None),
    ("--tp-size --tensor-parallel-size", "1", _ALL, int, 1),
    ("--dp-size --data-parallel-size", "1", _ALL, int, 1),
    ("--pp-size --pipeline-parallel-size", "1", _ALL, int, 1),
    ("--random-seed", "1", _ALL, int, None),
    ("--watchdog-timeout", "1", _ALL, float, 300.0),
    ("--soft-watchdog-timeout", "1", _NEW, float, None),
    ("--dist-timeout", "1", _ALL, int, None),
    ("--download-dir", "1", _ALL, str, None),
    ("--base-gpu-id", "1", _ALL, int, 0),
    ("--gpu-id-step", "1", _ALL, int, 1),
    ("--log-level", "1", _ALL, str, "info"),
    ("--log-level-http", "1", _ALL, str, None),
    ("--log-requests", "0", _ALL, None, False),
    ("--log-requests-level", "1", _ALL, int, 2),
    ("--crash-dump-folder", "1", _ALL, str, None),
    ("--enable-metrics", "0", _ALL, None, False),
    ("--enable-metrics-for-all-schedulers", "0", _ALL, None, False),
    ("--bucket-time-to-first-token", "+", _ALL, float, None),
    ("--bucket-inter-token-latency", "+", _ALL, float, None),
    ("--bucket-e2e-request-latency", "+", _ALL, float, None),
    ("--collect-tokens-histogram", "0", _OLD, None, False),
    ("--prompt-tokens-buckets", "+", _ALL, str, None),
    ("--extra-metric-labels", "1", _NEW, str, None),
    ("--uvicorn-access-log-exclude-prefixes", "*", _NEW, str, None),
    ("--api-key", "1", _ALL, str, None),
    ("--admin-api-key", "1", _NEW, str, None),
    ("--served-model-name", "1", _ALL, str, None),
    ("--enable-cache-report", "0", _ALL, None, False),
    ("--json-model-override-args", "1", _ALL, str, "{}"),
    ("--disable-radix-cache", "0", _ALL, None, False),
    ("--radix-eviction-policy", "1", _NEW, str, "lru"),
    ("--prefill-only-disable-kv-cache", "0", _NEW, None, False),
    ("--attention-backend", "1", _ALL, str, None),
    ("--sampling-backend", "1", _ALL, str, None),
    ("--grammar-backend", "1", _ALL, str, None),
    ("--allow-auto-truncate", "0", _ALL, None, False),
    ("--enable-nan-detection", "0", _OLD, None, False),
    ("--disable-overlap-schedule", "0", _ALL, None, False),
    ("--enable-mixed-chunk", "0", _ALL, None, False),
    ("--num-continuous-decode-steps", "1", _ALL, int, 1),
    ("--stream-interval", "1", _ALL, int, 1),
    ("--stream-output", "0", _OLD, None, False),
    ("--enable-torch-compile", "0", _ALL, None, False),
    ("--enable-p2p-check", "0", _ALL, None, False),
    ("--disable-custom-all-reduce", "0", _ALL, None, False),
    ("--disable-cuda-graph", "0", _ALL, None, False),
    ("--disable-cuda-graph-padding", "0", _ALL, None, False),
    ("--cuda-graph-max-bs", "1", _OLD, int, None),
    ("--cuda-graph-bs", "+", _OLD, int, None),
    ("--cuda-graph-config", "1", _NEW, str, None),
    ("--cuda-graph-backend-decode", "1", _NEW, str, None),
    ("--cuda-graph-backend-prefill", "1", _NEW, str, None),
    ("--cuda-graph-max-bs-decode", "1", _NEW, int, None),
    ("--cuda-graph-max-bs-prefill", "1", _NEW, int, None),
    ("--cuda-graph-bs-decode", "+", _NEW, int, None),
    ("--cuda-graph-bs-prefill", "+", _NEW, int, None),
    ("--disable-prefill-cuda-graph", "0", _NEW, None, False),
    ("--disable-decode-cuda-graph", "0", _NEW, None, False),
    ("--config", "1", _NEW, str, None),
    ("--ssl-keyfile", "1", _NEW, str, None),
    ("--ssl-certfile", "1", _NEW, str, None),
)

SIM_DEFAULTS: dict[str, Any] = {
    "sim_sglang_version": DEFAULT_VERSION,
    "sim_load_s": 1.0,
    "sim_warmup_s": 0.5,
    "sim_gpu_mib": 81559,
    "sim_weights_mib": 7680,
    "sim_base_latency_ms": 8.0,
    "sim_per_token_us": 20.0,
    "sim_dim": 2560,
    "sim_attention": "causal",
    "sim_crash_wait_s": 5.0,
    "sim_drain_poll_s": 5.0,
}


def _add_sim_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("simulated worker (not SGLang flags)")
    g.add_argument("--sim-sglang-version", choices=VERSIONS, default=DEFAULT_VERSION,
                   help="SGLang surface to imitate where versions differ (default 0.5.23)")
    g.add_argument("--sim-load-s", type=float, default=SIM_DEFAULTS["sim_load_s"],
                   help="seconds 'loading weights' with the port closed (default 1.0)")
    g.add_argument("--sim-warmup-s", type=float, default=SIM_DEFAULTS["sim_warmup_s"],
                   help="seconds of warmup with /health 503 (default 0.5)")
    g.add_argument("--sim-gpu-mib", type=int, default=SIM_DEFAULTS["sim_gpu_mib"],
                   help="simulated card memory in MiB (default 81559, an H100 80GB)")
    g.add_argument("--sim-weights-mib", type=int, default=SIM_DEFAULTS["sim_weights_mib"],
                   help="model weights in MiB (default 7680)")
    g.add_argument("--sim-base-latency-ms", type=float,
                   default=SIM_DEFAULTS["sim_base_latency_ms"],
                   help="fixed time of one forward batch in ms (default 8)")
    g.add_argument("--sim-per-token-us", type=float, default=SIM_DEFAULTS["sim_per_token_us"],
                   help="extra forward time per token in the batch, µs (default 20)")
    g.add_argument("--sim-dim", type=int, default=SIM_DEFAULTS["sim_dim"],
                   help="embedding dimension / hidden size (default 2560)")
    g.add_argument("--sim-attention", choices=ATTENTIONS, default="causal",
                   help="attention kind reported in /model_info (default causal)")
    g.add_argument("--sim-crash-wait-s", type=float, default=SIM_DEFAULTS["sim_crash_wait_s"],
                   help="wait after a child crash before the tree is killed (default 5)")
    g.add_argument("--sim-drain-poll-s", type=float, default=SIM_DEFAULTS["sim_drain_poll_s"],
                   help="SIGTERM drain poll interval, SGLang's is 5 s (default 5)")
    g.add_argument("--sim-fault", action="append", default=[], metavar="NAME[=VALUE]",
                   help="fault switch, repeatable (see backends/sim/worker.py)")


def build_parser(version: str) -> argparse.ArgumentParser:
    """The argparse parser SGLang `version` builds, plus the ``--sim-*`` flags."""
    prog = "sglang serve" if version == "0.5.23" else "launch_server.py"
    p = argparse.ArgumentParser(prog=prog)
    for opts, nargs, versions, typ, default in _FLAGS:
        if version not in versions:
            continue
        names = opts.split()
        kw: dict[str, Any] = {"default": default}
        if nargs == "0":
            kw["action"] = "store_true"
        else:
            if nargs in ("+", "*"):
                kw["nargs"] = nargs
            if typ is not None:
                kw["type"] = typ
        if names[0] == "--model-path":
            kw["required"] = True
        p.add_argument(*names, **kw)
    _add_sim_flags(p)
    return p


def _peek_version(argv: Sequence[str]) -> str:
    """`--sim-sglang-version` (any accepted spelling) before the real parse."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--sim-sglang-version", default=DEFAULT_VERSION)
    ns, _ = pre.parse_known_args(list(argv))
    return ns.sim_sglang_version if ns.sim_sglang_version in VERSIONS else DEFAULT_VERSION


@dataclass
class SimConfig:
    """Resolved settings of one simulated worker."""

    version: str
    args: dict[str, Any]
    """Every SGLang server arg by dest name, with derived defaults filled in."""
    model_path: str
    served_model_name: str
    host: str
    port: int
    api_key: str | None
    is_embedding: bool
    enable_metrics: bool
    context_length: int
    mem_fraction_static: float
    chunked_prefill_size: int
    max_running_requests: int | None
    """None: derived from the KV pool once the scheduler has planned memory."""
    max_queued_requests: int | None
    max_total_tokens: int | None
    disable_radix_cache: bool
    allow_auto_truncate: bool
    skip_server_warmup: bool
    watchdog_timeout: float
    log_level: str
    cuda_graph: bool
    deprecation_warnings: list[str]
    bucket_e2e: list[float] | None
    bucket_ttft: list[float] | None
    matryoshka: bool
    matryoshka_dimensions: list[int] | None
    gpu_index: int
    load_s: float
    warmup_s: float
    gpu_mib: int
    weights_mib: int
    base_latency_ms: float
    per_token_us: float
    dim: int
    attention: str
    crash_wait_s: float
    drain_poll_s: float
    faults: Faults
    startup_fail: bool
    argv: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Base URL of the HTTP server."""
        return f"http://{self.host}:{self.port}"


def _gpu_index() -> int:
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    try:
        return int(first) if first else 0
    except ValueError:
        return 0


def _cuda_graph(version: str, ns: argparse.Namespace) -> tuple[bool, list[str]]:
    warnings: list[str] = []
    if version == "0.5.2":
        return (not ns.disable_cuda_graph), warnings
    off = False
    if ns.disable_cuda_graph:
        warnings.append("The argument '--disable-cuda-graph' is deprecated. Please use "
                        "'--cuda-graph-backend-decode=disabled "
                        "--cuda-graph-backend-prefill=disabled' instead.")
        off = True
    # Embedding models never capture decode graphs: only the prefill backend matters.
    if (ns.cuda_graph_backend_prefill or "").lower() == "disabled" or ns.disable_prefill_cuda_graph:
        off = True
    return (not off), warnings


def parse_cli(argv: Sequence[str]) -> SimConfig:
    """Parse like SGLang (exit 2 on bad flags) and resolve derived defaults.

    Raises `SystemExit` for argparse errors and ``--help``; `ValueError` for a
    server-arg validation error (SGLang's `check_server_args`, exit 1 there).
    """
    argv = list(argv)
    version = _peek_version(argv)
    parser = build_parser(version)
    ns = parser.parse_args(argv)
    try:
        faults, startup_fail = parse_fault_flags(ns.sim_fault)
    except FaultError as e:
        parser.error(f"argument --sim-fault: {e}")
    if getattr(ns, "config", None):
        parser.error("argument --config: YAML config files are not supported by the "
                     "simulated worker; pass the flags on the command line")
    try:
        overrides = orjson.loads(ns.json_model_override_args or "{}")
    except orjson.JSONDecodeError as e:
        raise ValueError(f"--json-model-override-args is not valid JSON: {e}") from None
    if not isinstance(overrides, dict):
        raise ValueError("--json-model-override-args must be a JSON object")  # noqa: TRY004
    mdims = overrides.get("matryoshka_dimensions")
    if mdims is not None and (not isinstance(mdims, list)
                              or not all(isinstance(d, int) for d in mdims)):
        raise ValueError("matryoshka_dimensions must be a list of integers")
    matryoshka = bool(overrides.get("is_matryoshka")) or bool(mdims)
    served = ns.served_model_name or ns.model_path
    if version == "0.5.23" and ns.served_model_name and ":" in ns.served_model_name:
        raise ValueError(f"served_model_name={ns.served_model_name!r} must not contain ':' "
                         "(reserved for the model:adapter LoRA syntax)")
    if ns.base_gpu_id < 0:
        raise ValueError("base_gpu_id must be non-negative")
    if ns.gpu_id_step < 1:
        raise ValueError("gpu_id_step must be positive")
    for name in ("sim_load_s", "sim_warmup_s", "sim_crash_wait_s", "sim_base_latency_ms",
                 "sim_per_token_us"):
        if getattr(ns, name) < 0:
            parser.error(f"argument --{name.replace('_', '-')}: must be >= 0")
    if ns.sim_drain_poll_s <= 0:
        parser.error("argument --sim-drain-poll-s: must be > 0")
    if ns.sim_dim < 1 or ns.sim_gpu_mib < 1 or ns.sim_weights_mib < 0:
        parser.error("--sim-dim and --sim-gpu-mib must be >= 1, --sim-weights-mib >= 0")
    cuda_graph, warnings = _cuda_graph(version, ns)
    chunked = ns.chunked_prefill_size
    if chunked is None:
        chunked = default_chunked_prefill(version, ns.sim_gpu_mib)
    mem_fraction = ns.mem_fraction_static
    if mem_fraction is None:
        mem_fraction = default_mem_fraction(version, ns.sim_gpu_mib, tp=ns.tp_size,
                                            pp=ns.pp_size, chunked=chunked,
                                            graphs=cuda_graph)
    context = ns.context_length or DEFAULT_CONTEXT_LENGTH
    args = {k: v for k, v in vars(ns).items() if not k.startswith("sim_")}
    args.update(served_model_name=served, tokenizer_path=ns.tokenizer_path or ns.model_path,
                mem_fraction_static=mem_fraction, chunked_prefill_size=chunked,
                context_length=context)
    return SimConfig(
        version=version, args=args, model_path=ns.model_path, served_model_name=served,
        host=ns.host, port=ns.port, api_key=ns.api_key, is_embedding=ns.is_embedding,
        enable_metrics=ns.enable_metrics, context_length=context,
        mem_fraction_static=mem_fraction, chunked_prefill_size=chunked,
        max_running_requests=ns.max_running_requests,
        max_queued_requests=ns.max_queued_requests, max_total_tokens=ns.max_total_tokens,
        disable_radix_cache=ns.disable_radix_cache,
        allow_auto_truncate=ns.allow_auto_truncate,
        skip_server_warmup=ns.skip_server_warmup, watchdog_timeout=ns.watchdog_timeout,
        log_level=ns.log_level, cuda_graph=cuda_graph, deprecation_warnings=warnings,
        bucket_e2e=ns.bucket_e2e_request_latency, bucket_ttft=ns.bucket_time_to_first_token,
        matryoshka=matryoshka, matryoshka_dimensions=mdims, gpu_index=_gpu_index(),
        load_s=ns.sim_load_s, warmup_s=ns.sim_warmup_s, gpu_mib=ns.sim_gpu_mib,
        weights_mib=ns.sim_weights_mib, base_latency_ms=ns.sim_base_latency_ms,
        per_token_us=ns.sim_per_token_us, dim=ns.sim_dim, attention=ns.sim_attention,
        crash_wait_s=ns.sim_crash_wait_s, drain_poll_s=ns.sim_drain_poll_s,
        faults=faults, startup_fail=startup_fail, argv=[sys.argv[0], *argv],
    )


def masked_args(args: dict[str, Any]) -> dict[str, Any]:
    """`args` with secrets replaced, for logging."""
    out = dict(args)
    for key in ("api_key", "admin_api_key"):
        if out.get(key):
            out[key] = "***"
    return out
