"""SGLang launch command lines and the flag catalogue of an SGLang version.

* `build_launch` turns a `WorkerSpec` into the argv and environment of
  `python -m sglang.launch_server --is-embedding ...` (or of the simulated worker,
  `python -m backends.sim.worker`, which accepts the same flags).
* `FlagCatalogue` knows which flags an SGLang version accepts. It is parsed from the
  installed SGLang's own `--help` (run once per version, cached as JSON in the state
  directory by `load_catalogue`), or, where SGLang is absent, taken from a built-in
  table for 0.5.2, 0.5.17 and 0.5.23. `FlagCatalogue.check_args` reports what
  SGLang's `argparse` would reject (unknown, removed, ambiguous abbreviations) and
  what it would accept with a caveat (deprecated flags, abbreviations).
* `effect_warnings` names settings that are accepted but do nothing for an
  embedding model.
* `mask_argv` / `format_argv` hide API keys in command lines shown or logged;
  `parse_launch_argv` recovers worker settings from a running server's command line.

Facts used here are from shared/reference/sglang-surface.md §1 and the `--help`
output of the published 0.5.2, 0.5.17 and 0.5.23 wheels.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal

from console.model import Engine, LaunchCommand, WorkerSpec

# --------------------------------------------------------------------------------------
# Versions
# --------------------------------------------------------------------------------------

BUILTIN_VERSIONS: tuple[str, ...] = ("0.5.2", "0.5.17", "0.5.23")
"""SGLang versions with a built-in flag catalogue."""

DEFAULT_VERSION = "0.5.23"
"""Version assumed when nothing better is known (newest built-in)."""

SGLANG_MODULE = "sglang.launch_server"
SIM_MODULE = "backends.sim.worker"

NCCL_PORT_OFFSET = 1000
"""Default `--nccl-port` = worker port + this offset (port - offset when that would
exceed 65535). SGLang otherwise picks a random port for torch.distributed, which can
collide with a neighbour's HTTP port; an explicit one makes every port known ahead."""

DEFAULT_E2E_BUCKETS_S: tuple[float, ...] = (
    0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
    0.75, 1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
)
"""`--bucket-e2e-request-latency` edges (seconds). SGLang's default smallest bucket is
0.1 s, which cannot tell 9 ms from 90 ms, and it has no edge at the 1.2 s alert
threshold (sglang-observed.md, reliability.md §1.2)."""


def version_key(version: str) -> tuple[int, ...]:
    """Numeric release tuple of a version string: ``"0.5.10.post1"`` → ``(0, 5, 10)``."""
    m = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    if not m:
        return ()
    return tuple(int(p) for p in m.group(1).split("."))


def nearest_builtin_version(version: str) -> str:
    """The newest built-in catalogue version not newer than `version` (else the oldest)."""
    key = version_key(version)
    older = [v for v in BUILTIN_VERSIONS if version_key(v) <= key]
    return older[-1] if older else BUILTIN_VERSIONS[0]


# --------------------------------------------------------------------------------------
# Catalogue data types
# --------------------------------------------------------------------------------------

Arity = str
"""How many values a flag takes, in argparse's terms: "0" (a switch), "1", "2", ...
(exactly N), "?" (optional value), "+" (one or more), "*" (zero or more)."""


@dataclass(frozen=True)
class FlagInfo:
    """One SGLang command-line option (with its aliases)."""

    names: tuple[str, ...]
    """Every option string of the option, e.g. ``("--model-path", "--model")``."""
    arity: Arity = "1"
    """Number of values (see `Arity`)."""
    choices: tuple[str, ...] = ()
    """Allowed values, when argparse has `choices` (empty = any)."""
    deprecated: bool = False
    """The version's help calls the flag deprecated (still accepted)."""
    replacement: str | None = None
    """What the help says to use instead of a deprecated flag."""
    help: str = ""
    """The flag's help text, whitespace-normalised."""

    @property
    def name(self) -> str:
        """The first option string (argparse's own primary spelling)."""
        return self.names[0]


Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class FlagProblem:
    """Something wrong (error: SGLang exits 2) or doubtful (warning) in a flag list."""

    index: int
    """Position of the offending token in the checked argument list."""
    flag: str
    """The token as written (without ``=value``)."""
    severity: Severity
    kind: str
    """One of: unknown, unverified, removed, not-sglang, ambiguous, abbreviation,
    deprecated, missing-value, unexpected-value, bad-choice."""
    message: str
    """Human-readable reason, e.g. ``--cuda-graph-max-bs was removed in SGLang 0.5.20;
    use --cuda-graph-max-bs-decode``."""
    suggestion: str | None = None
    """The flag to write instead, when one is known."""

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


@dataclass(frozen=True)
class _Removed:
    gone_in: str
    hint: str


# Flags that existed in an older release and are gone later. `gone_in` is the first
# release known not to have them (0.5.20 from the upstream history in
# sglang-surface §1.2; the others from comparing the 0.5.2/0.5.17/0.5.23 --help).
_REMOVED: dict[str, _Removed] = {
    "--cuda-graph-max-bs": _Removed("0.5.20", "use --cuda-graph-max-bs-decode (decode graphs are "
                                    "never captured for embedding models, so it can be dropped)"),
    "--cuda-graph-bs": _Removed("0.5.20", "use --cuda-graph-bs-decode / --cuda-graph-bs-prefill"),
    "--enable-breakable-cuda-graph": _Removed("0.5.23", "use --cuda-graph-backend-prefill breakable"),
    "--disable-piecewise-cuda-graph": _Removed("0.5.23", "use --cuda-graph-backend-prefill disabled"),
    "--enforce-piecewise-cuda-graph": _Removed("0.5.23", "use --cuda-graph-backend-prefill"),
    "--piecewise-cuda-graph-max-tokens": _Removed("0.5.23", "use --cuda-graph-max-bs-prefill"),
    "--collect-tokens-histogram": _Removed("0.5.23", "token histograms are always collected with "
                                           "--enable-metrics"),
    "--enable-nan-detection": _Removed("0.5.17", "no replacement"),
    "--stream-output": _Removed("0.5.23", "no replacement (generation only)"),
    "--torchao-config": _Removed("0.5.23", "use --quantization"),
}

# Flags people pass to SGLang that belong to another program.
_NOT_SGLANG: dict[str, str] = {
    "--health-check-interval": "is not an SGLang server flag: health checking is configured on "
        "sglang-router (--health-check-interval-secs); set balancer.health_check_interval_s",
    "--health-check-interval-secs": "is a sglang-router flag, not a server flag; set "
        "balancer.health_check_interval_s",
    "--health-check-timeout": "is not an SGLang server flag (the server only reads the "
        "SGLANG_HEALTH_CHECK_TIMEOUT environment variable); the router's is "
        "balancer.health_check_timeout_s",
    "--health-check-timeout-secs": "is a sglang-router flag; set balancer.health_check_timeout_s",
    "--health-failure-threshold": "is a sglang-router flag; set balancer.health_failure_threshold",
    "--health-success-threshold": "is a sglang-router flag; set balancer.health_success_threshold",
    "--health-check-endpoint": "is a sglang-router flag; set balancer.health_check_endpoint",
    "--request-timeout-secs": "is a sglang-router flag; set balancer.request_timeout_s",
    "--cb-failure-threshold": "is a sglang-router flag; set balancer.cb_failure_threshold",
    "--policy": "is a sglang-router flag; set balancer.policy",
    "--worker-urls": "is a sglang-router flag; embedops registers workers itself",
    "--num-scheduler-steps": "is a vLLM flag (multi-step scheduling); SGLang has no such "
        "setting and exits with code 2",
    "--gpu-memory-utilization": "is a vLLM flag; SGLang's counterpart is --mem-fraction-static "
        "(set mem_fraction_static)",
    "--max-num-seqs": "is a vLLM flag; SGLang's counterpart is --max-running-requests "
        "(set max_running_requests)",
    "--max-model-len": "is a vLLM flag; SGLang's counterpart is --context-length "
        "(set context_length)",
    "--max-num-batched-tokens": "is a vLLM flag; SGLang's counterpart is --chunked-prefill-size "
        "(set chunked_prefill_size)",
    "--enforce-eager": "is a vLLM flag; turn CUDA graphs off with cuda_graph = false",
}

_ALL = BUILTIN_VERSIONS
_V17 = ("0.5.17", "0.5.23")

# The built-in catalogue: flags an embedding deployment uses, plus the ones whose
# history matters (removed, deprecated). Rows: option strings (primary first), arity,
# versions that accept them. Checked against the real --help of each version by
# tests/unit/test_flag_catalogue.py.
_BUILTIN_FLAGS: tuple[tuple[str, Arity, tuple[str, ...]], ...] = (
    ("-h --help", "0", _ALL),
    ("--model-path --model", "1", _ALL),
    ("--tokenizer-path", "1", _ALL),
    ("--tokenizer-mode", "1", _ALL),
    ("--tokenizer-worker-num", "1", _ALL),
    ("--skip-tokenizer-init", "0", _ALL),
    ("--load-format", "1", _ALL),
    ("--trust-remote-code", "0", _ALL),
    ("--context-length", "1", _ALL),
    ("--is-embedding", "0", _ALL),
    ("--revision", "1", _ALL),
    ("--model-impl", "1", _ALL),
    ("--host", "1", _ALL),
    ("--port", "1", _ALL),
    ("--skip-server-warmup", "0", _ALL),
    ("--warmups", "1", _ALL),
    ("--nccl-port", "1", _ALL),
    ("--dtype", "1", _ALL),
    ("--quantization", "1", _ALL),
    ("--kv-cache-dtype", "1", _ALL),
    ("--mem-fraction-static", "1", _ALL),
    ("--max-running-requests", "1", _ALL),
    ("--max-queued-requests", "1", _ALL),
    ("--max-total-tokens", "1", _ALL),
    ("--chunked-prefill-size", "1", _ALL),
    ("--max-prefill-tokens", "1", _ALL),
    ("--schedule-policy", "1", _ALL),
    ("--schedule-conservativeness", "1", _ALL),
    ("--page-size", "1", _ALL),
    ("--device", "1", _ALL),
    ("--tp-size --tensor-parallel-size", "1", _ALL),
    ("--dp-size --data-parallel-size", "1", _ALL),
    ("--pp-size --pipeline-parallel-size", "1", _ALL),
    ("--random-seed", "1", _ALL),
    ("--watchdog-timeout", "1", _ALL),
    ("--soft-watchdog-timeout", "1", _V17),
    ("--dist-timeout", "1", _ALL),
    ("--download-dir", "1", _ALL),
    ("--base-gpu-id", "1", _ALL),
    ("--gpu-id-step", "1", _ALL),
    ("--log-level", "1", _ALL),
    ("--log-level-http", "1", _ALL),
    ("--log-requests", "0", _ALL),
    ("--log-requests-level", "1", _ALL),
    ("--crash-dump-folder", "1", _ALL),
    ("--enable-metrics", "0", _ALL),
    ("--enable-metrics-for-all-schedulers", "0", _ALL),
    ("--bucket-time-to-first-token", "+", _ALL),
    ("--bucket-inter-token-latency", "+", _ALL),
    ("--bucket-e2e-request-latency", "+", _ALL),
    ("--collect-tokens-histogram", "0", ("0.5.2", "0.5.17")),
    ("--prompt-tokens-buckets", "+", _ALL),
    ("--extra-metric-labels", "1", _V17),
    ("--uvicorn-access-log-exclude-prefixes", "*", _V17),
    ("--api-key", "1", _ALL),
    ("--admin-api-key", "1", _V17),
    ("--served-model-name", "1", _ALL),
    ("--enable-cache-report", "0", _ALL),
    ("--json-model-override-args", "1", _ALL),
    ("--disable-radix-cache", "0", _ALL),
    ("--radix-eviction-policy", "1", _V17),
    ("--prefill-only-disable-kv-cache", "0", _V17),
    ("--attention-backend", "1", _ALL),
    ("--sampling-backend", "1", _ALL),
    ("--grammar-backend", "1", _ALL),
    ("--allow-auto-truncate", "0", _ALL),
    ("--enable-nan-detection", "0", ("0.5.2",)),
    ("--disable-overlap-schedule", "0", _ALL),
    ("--enable-mixed-chunk", "0", _ALL),
    ("--num-continuous-decode-steps", "1", _ALL),
    ("--stream-interval", "1", _ALL),
    ("--stream-output", "0", ("0.5.2", "0.5.17")),
    ("--enable-torch-compile", "0", _ALL),
    ("--enable-p2p-check", "0", _ALL),
    ("--disable-custom-all-reduce", "0", _ALL),
    ("--disable-cuda-graph", "0", _ALL),
    ("--disable-cuda-graph-padding", "0", _ALL),
    ("--cuda-graph-max-bs", "1", ("0.5.2", "0.5.17")),
    ("--cuda-graph-bs", "+", ("0.5.2", "0.5.17")),
    ("--cuda-graph-config", "1", _V17),
    ("--cuda-graph-backend-decode", "1", _V17),
    ("--cuda-graph-backend-prefill", "1", _V17),
    ("--cuda-graph-max-bs-decode", "1", _V17),
    ("--cuda-graph-max-bs-prefill", "1", _V17),
    ("--cuda-graph-bs-decode", "+", _V17),
    ("--cuda-graph-bs-prefill", "+", _V17),
    ("--disable-prefill-cuda-graph", "0", _V17),
    ("--disable-decode-cuda-graph", "0", _V17),
    ("--enable-breakable-cuda-graph", "0", ("0.5.17",)),
    ("--disable-piecewise-cuda-graph", "0", ("0.5.17",)),
    ("--config", "1", _V17),
    ("--ssl-keyfile", "1", _V17),
    ("--ssl-certfile", "1", _V17),
)

# Deprecated flags per version, with what the help text says to use instead.
_BUILTIN_DEPRECATED: dict[str, dict[str, str | None]] = {
    "0.5.2": {},
    "0.5.17": {
        "--disable-cuda-graph": "--cuda-graph-backend-{decode,prefill}=disabled",
        "--cuda-graph-max-bs": "--cuda-graph-max-bs-decode",
        "--cuda-graph-bs": "--cuda-graph-bs-decode",
        "--enable-breakable-cuda-graph": "--cuda-graph-backend-prefill=breakable",
        "--disable-piecewise-cuda-graph": "--cuda-graph-backend-prefill=disabled",
        "--collect-tokens-histogram": None,
    },
    "0.5.23": {
        "--disable-cuda-graph": "--cuda-graph-backend-{decode,prefill}=disabled",
    },
}

_CUDA_GRAPH_BACKENDS_017 = ("full", "breakable", "tc_piecewise", "disabled")
_CUDA_GRAPH_BACKENDS_023 = ("full", "breakable", "disabled")

_SIM_FLAGS: tuple[tuple[str, Arity], ...] = (
    ("--sim-sglang-version", "1"), ("--sim-load-s", "1"), ("--sim-warmup-s", "1"),
    ("--sim-gpu-mib", "1"), ("--sim-weights-mib", "1"), ("--sim-base-latency-ms", "1"),
    ("--sim-per-token-us", "1"), ("--sim-dim", "1"), ("--sim-fault", "1"),
)
"""Flags only the simulated worker accepts (docs: notes/contracts.md)."""

SIM_VERSIONS: tuple[str, ...] = ("0.5.2", "0.5.23")
"""SGLang versions the simulated worker can imitate (`--sim-sglang-version`)."""

# --------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------

_NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _is_option(token: str) -> bool:
    """Would argparse read `token` as an option (not a value)? Negative numbers are values."""
    return token.startswith("-") and token != "-" and not _NUMBER.fullmatch(token)


@dataclass(frozen=True)
class FlagCatalogue:
    """The command-line flags one SGLang version accepts."""

    version: str
    """SGLang version the catalogue describes."""
    flags: tuple[FlagInfo, ...]
    """Every known option."""
    source: str = "builtin"
    """Where it came from: ``help`` (the installed SGLang's --help), ``builtin``, ``sim``."""
    complete: bool = False
    """True when `flags` is every flag the program accepts (so an unknown flag is an
    error); the built-in table lists only the flags that matter here."""
    note: str = ""
    """Why this catalogue was chosen, for display (e.g. why --help could not be read)."""
    _index: dict[str, FlagInfo] = field(default_factory=dict, init=False, repr=False,
                                        compare=False)

    def __post_init__(self) -> None:
        for info in self.flags:
            for name in info.names:
                self._index.setdefault(name, info)

    # ---- lookup -------------------------------------------------------------------

    def option_strings(self) -> list[str]:
        """Every option string, sorted."""
        return sorted(self._index)

    def get(self, option: str) -> FlagInfo | None:
        """The option spelled exactly `option`, or None."""
        return self._index.get(option)

    def has(self, option: str) -> bool:
        """Whether `option` is spelled out exactly in this version."""
        return option in self._index

    def prefix_matches(self, option: str) -> list[str]:
        """Option strings that `option` abbreviates (argparse `allow_abbrev`)."""
        if not option.startswith("--") or option == "--":
            return []
        return sorted(o for o in self._index if o.startswith(option) and o != option)

    def resolve(self, option: str) -> FlagInfo | None:
        """The option `option` means to argparse: exact, or a unique abbreviation."""
        option = option.split("=", 1)[0]
        info = self._index.get(option)
        if info is not None:
            return info
        matches = self.prefix_matches(option)
        if len(matches) == 1:
            return self._index[matches[0]]
        return None

    # ---- checking -----------------------------------------------------------------

    def check_args(self, args: Sequence[str]) -> list[FlagProblem]:
        """What SGLang's argparse would reject (errors) or accept with a caveat
        (warnings) in `args`, a list of server flags and their values."""
        problems: list[FlagProblem] = []
        i = 0
        n = len(args)
        while i < n:
            token = args[i]
            if not _is_option(token):
                problems.append(FlagProblem(
                    i, token, "error", "unexpected-value",
                    f"{token!r} is not a flag and follows no flag that takes a value"))
                i += 1
                continue
            option, eq, inline = token.partition("=")
            info, found = self._check_option(option, i)
            problems.extend(found)
            i += 1
            if info is None:
                while i < n and not _is_option(args[i]):
                    i += 1  # skip the unknown flag's values: one problem per flag is enough
                continue
            values: list[str] = []
            if eq:
                if info.arity == "0":
                    problems.append(FlagProblem(
                        i - 1, option, "error", "unexpected-value",
                        f"{option} takes no value (got {option}={inline})"))
                    continue
                values = [inline]
            elif info.arity == "0":
                pass
            elif info.arity == "?":
                if i < n and not _is_option(args[i]):
                    values = [args[i]]
                    i += 1
            elif info.arity in ("+", "*"):
                while i < n and not _is_option(args[i]):
                    values.append(args[i])
                    i += 1
                if info.arity == "+" and not values:
                    problems.append(FlagProblem(
                        i - 1, option, "error", "missing-value",
                        f"{option} expects at least one value"))
            else:
                want = int(info.arity)
                while i < n and len(values) < want and not _is_option(args[i]):
                    values.append(args[i])
                    i += 1
                if len(values) < want:
                    problems.append(FlagProblem(
                        i - 1 - len(values), option, "error", "missing-value",
                        f"{option} expects {want} value{'s' if want > 1 else ''}"))
            if info.choices:
                for v in values:
                    if v not in info.choices:
                        problems.append(FlagProblem(
                            i - 1, option, "error", "bad-choice",
                            f"{option}: invalid choice {v!r} (choose from "
                            f"{', '.join(info.choices)})"))
        return problems

    def _check_option(self, option: str, index: int) -> tuple[FlagInfo | None, list[FlagProblem]]:
        v = self.version
        info = self._index.get(option)
        if info is not None:
            if info.deprecated:
                hint = f"; use {info.replacement}" if info.replacement else ""
                return info, [FlagProblem(index, option, "warning", "deprecated",
                                          f"{option} is deprecated in SGLang {v}{hint}",
                                          info.replacement)]
            return info, []
        removed = _REMOVED.get(option)
        if removed is not None and version_key(v) >= version_key(removed.gone_in):
            return None, [FlagProblem(
                index, option, "error", "removed",
                f"{option} was removed in SGLang {removed.gone_in} (this is {v}); {removed.hint}",
                _first_flag(removed.hint))]
        matches = self.prefix_matches(option)
        if len(matches) == 1:
            full = matches[0]
            return self._index[full], [FlagProblem(
                index, option, "warning", "abbreviation",
                f"{option} is accepted by SGLang as an abbreviation of {full}; spell it out",
                full)]
        if len(matches) > 1:
            shown = ", ".join(matches[:6])
            if len(matches) > 6:
                shown += f" and {len(matches) - 6} more"
            return None, [FlagProblem(
                index, option, "error", "ambiguous",
                f"ambiguous option: {option} could match {shown}")]
        foreign = _NOT_SGLANG.get(option)
        if foreign is not None:
            return None, [FlagProblem(index, option, "error", "not-sglang",
                                      f"{option} {foreign}")]
        close = difflib.get_close_matches(option, self.option_strings(), n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else ""
        if self.complete:
            return None, [FlagProblem(
                index, option, "error", "unknown",
                f"unknown flag {option} for SGLang {v}{hint}", close[0] if close else None)]
        return None, [FlagProblem(
            index, option, "warning", "unverified",
            f"{option} is not in the built-in flag list for SGLang {v} and SGLang's own "
            f"--help was not read here, so it cannot be verified{hint}",
            close[0] if close else None)]

    # ---- construction -------------------------------------------------------------

    @classmethod
    def parse_help(cls, text: str, version: str, *, note: str = "") -> FlagCatalogue:
        """Parse argparse `--help` output (as printed by `sglang.launch_server --help`)."""
        return cls(version=version, flags=tuple(_parse_help_flags(text)), source="help",
                   complete=True, note=note)

    @classmethod
    def builtin(cls, version: str = DEFAULT_VERSION) -> FlagCatalogue:
        """The built-in (partial) catalogue for `version`, or the nearest older one."""
        base = nearest_builtin_version(version)
        deprecated = _BUILTIN_DEPRECATED.get(base, {})
        flags: list[FlagInfo] = []
        for names, arity, versions in _BUILTIN_FLAGS:
            if base not in versions:
                continue
            opts = tuple(names.split())
            choices: tuple[str, ...] = ()
            if opts[0].startswith("--cuda-graph-backend-"):
                choices = (_CUDA_GRAPH_BACKENDS_017 if base == "0.5.17"
                           else _CUDA_GRAPH_BACKENDS_023)
            flags.append(FlagInfo(opts, arity, choices, opts[0] in deprecated,
                                  deprecated.get(opts[0])))
        note = f"built-in flag list for SGLang {base}"
        if base != version:
            note += f" (nearest to {version})"
        return cls(version=version, flags=tuple(flags), source="builtin", complete=False,
                   note=note)

    @classmethod
    def sim(cls, version: str = DEFAULT_VERSION) -> FlagCatalogue:
        """What the simulated worker imitating `version` accepts: the built-in flags of
        that version plus the ``--sim-*`` flags. Complete: the sim rejects the rest."""
        base = cls.builtin(version)
        extra = tuple(FlagInfo((name,), arity) for name, arity in _SIM_FLAGS)
        return cls(version=version, flags=base.flags + extra, source="sim", complete=True,
                   note=f"simulated worker imitating SGLang {version}")

    def to_json(self) -> dict[str, object]:
        """JSON-serialisable form (the cache file's content)."""
        return {"format": 1, "version": self.version, "source": self.source,
                "complete": self.complete, "note": self.note,
                "flags": [asdict(f) for f in self.flags]}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> FlagCatalogue:
        """Inverse of `to_json`; raises ValueError on a malformed document."""
        if data.get("format") != 1:
            raise ValueError("unknown catalogue format")
        raw = data.get("flags")
        if not isinstance(raw, list):
            raise ValueError("catalogue without flags")
        flags = []
        for f in raw:
            if not isinstance(f, dict):
                raise ValueError("malformed flag entry")
            flags.append(FlagInfo(names=tuple(f["names"]), arity=str(f["arity"]),
                                  choices=tuple(f.get("choices", ())),
                                  deprecated=bool(f.get("deprecated", False)),
                                  replacement=f.get("replacement"), help=str(f.get("help", ""))))
        return cls(version=str(data["version"]), flags=tuple(flags),
                   source=str(data.get("source", "help")),
                   complete=bool(data.get("complete", True)), note=str(data.get("note", "")))


def _first_flag(text: str) -> str | None:
    m = re.search(r"--[A-Za-z0-9][\w{},=-]*", text)
    return m.group(0).rstrip(".,") if m else None


_OPTION_LINE = re.compile(r"^  (?P<inv>-\S.*?)(?:\s{2,}(?P<help>\S.*))?$")
_DEPRECATED = re.compile(r"^\(?\s*deprecated\b", re.IGNORECASE)
_REPLACEMENT = re.compile(r"(?:\buse|\balias for|\breplaced by)\s+'?(--[A-Za-z0-9][^\s']*)",
                          re.IGNORECASE)


def _arity_and_choices(metavar: str) -> tuple[Arity, tuple[str, ...]]:
    """Arity and choices from the metavar part of one option invocation."""
    metavar = metavar.strip()
    choices: tuple[str, ...] = ()
    m = re.search(r"\{([^{}]*)\}", metavar)
    if m:
        choices = tuple(c for c in m.group(1).split(",") if c)
    if not metavar:
        return "0", choices
    if metavar.endswith("...]"):
        return ("*" if metavar.startswith("[") else "+"), choices
    if metavar.startswith("[") and metavar.endswith("]"):
        return "?", choices
    return str(len(metavar.split())), choices


def _join_help(lines: list[str]) -> str:
    text = ""
    for line in lines:
        line = line.strip()
        if not line:
            continue
        # argparse wraps at hyphens ("--cuda-graph-" / "backend-decode"): rejoin those
        if text.endswith("-") and len(text) > 1 and text[-2].isalnum():
            text += line
        else:
            text = f"{text} {line}" if text else line
    return text


def _parse_help_flags(text: str) -> list[FlagInfo]:
    flags: list[FlagInfo] = []
    current: tuple[str, str] | None = None  # (invocation, first help line)
    help_lines: list[str] = []

    def flush() -> None:
        if current is None:
            return
        invocation, _ = current
        names: list[str] = []
        arity: Arity = "0"
        choices: tuple[str, ...] = ()
        for part in re.split(r", (?=-)", invocation):
            opt, _, metavar = part.partition(" ")
            names.append(opt)
            arity, choices = _arity_and_choices(metavar)
        help_text = _join_help(help_lines)
        deprecated = bool(_DEPRECATED.match(help_text)) or "deprecated alias" in help_text.lower()
        replacement = None
        if deprecated:
            m = _REPLACEMENT.search(help_text)
            if m:
                replacement = m.group(1).rstrip(".,;)")
        flags.append(FlagInfo(tuple(names), arity, choices, deprecated, replacement, help_text))

    in_usage = False
    for line in text.splitlines():
        if line.startswith("usage:"):
            in_usage = True
            continue
        if in_usage:
            if line.strip() and not line.startswith(" "):
                in_usage = False
            else:
                continue
        m = _OPTION_LINE.match(line)
        if m:
            flush()
            current = (m.group("inv"), m.group("help") or "")
            help_lines = [m.group("help") or ""]
            continue
        if current is not None and line.startswith("   ") and line.strip():
            help_lines.append(line)
        elif current is not None and (not line.strip() or not line.startswith(" ")):
            flush()
            current = None
            help_lines = []
    flush()
    return flags


# --------------------------------------------------------------------------------------
# The installed SGLang: version and --help, cached
# --------------------------------------------------------------------------------------

_VERSION_SCRIPT = (
    "import importlib.metadata as m\n"
    "try:\n    print(m.version('sglang'))\n"
    "except m.PackageNotFoundError:\n    pass\n"
)


def installed_version(python: str = sys.executable, env: Mapping[str, str] | None = None,
                      *, timeout_s: float = 60.0) -> str | None:
    """Version of SGLang installed for `python` (with `env` added), without importing
    sglang (package metadata only). None when it is not installed or `python` fails."""
    if python == sys.executable and not env:
        try:
            return metadata.version("sglang")
        except metadata.PackageNotFoundError:
            return None
    try:
        proc = subprocess.run([python, "-c", _VERSION_SCRIPT], capture_output=True, text=True,
                              timeout=timeout_s, env={**os.environ, **(env or {})},
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = proc.stdout.strip()
    if proc.returncode != 0 or not out:
        return None
    return out


def catalogue_cache_path(state_dir: Path, version: str) -> Path:
    """Where the parsed catalogue of `version` is cached."""
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", version)
    return Path(state_dir) / f"sglang-flags-{safe}.json"


def read_cached_catalogue(state_dir: Path, version: str) -> FlagCatalogue | None:
    """The cached catalogue of `version`, or None (missing or unreadable)."""
    path = catalogue_cache_path(state_dir, version)
    try:
        cat = FlagCatalogue.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return cat if cat.version == version else None


def read_help_text(python: str = sys.executable, env: Mapping[str, str] | None = None,
                   *, timeout_s: float = 300.0) -> str:
    """Run ``python -m sglang.launch_server --help`` and return its stdout.

    Raises RuntimeError with the tail of stderr when it fails. Importing SGLang takes
    tens of seconds on a GPU box, hence the generous timeout.
    """
    run_env = {**os.environ, **(env or {}), "COLUMNS": "400"}
    try:
        proc = subprocess.run([python, "-m", SGLANG_MODULE, "--help"], capture_output=True,
                              text=True, timeout=timeout_s, env=run_env,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{SGLANG_MODULE} --help did not finish in {timeout_s:g} s") from e
    except OSError as e:
        raise RuntimeError(f"cannot run {python}: {e}") from e
    if proc.returncode != 0 or "--model-path" not in proc.stdout:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{SGLANG_MODULE} --help exited {proc.returncode}: "
                           + " / ".join(tail))
    return proc.stdout


def load_catalogue(state_dir: Path | None, *, python: str = sys.executable,
                   env: Mapping[str, str] | None = None,
                   fallback_version: str = DEFAULT_VERSION,
                   run_help: bool = True, timeout_s: float = 300.0) -> FlagCatalogue:
    """The flag catalogue of the SGLang installed for `python`.

    The installed version is read from package metadata. Its catalogue comes from the
    cache in `state_dir` when present; otherwise (with `run_help`) from running its
    `--help` once, which is then cached. Without SGLang, or when `--help` fails, the
    built-in catalogue of the nearest version is returned with a `note` saying why.
    """
    version = installed_version(python, env)
    if version is None:
        cat = FlagCatalogue.builtin(fallback_version)
        return _with_note(cat, f"SGLang is not installed for {python}; {cat.note}")
    if state_dir is not None:
        cached = read_cached_catalogue(Path(state_dir), version)
        if cached is not None:
            return cached
    if not run_help:
        cat = FlagCatalogue.builtin(version)
        return _with_note(cat, f"SGLang {version}'s --help not read yet; {cat.note}")
    try:
        text = read_help_text(python, env, timeout_s=timeout_s)
    except RuntimeError as e:
        cat = FlagCatalogue.builtin(version)
        return _with_note(cat, f"{e}; {cat.note}")
    cat = FlagCatalogue.parse_help(text, version, note=f"--help of SGLang {version} ({python})")
    if state_dir is not None:
        _write_atomic(catalogue_cache_path(Path(state_dir), version),
                      json.dumps(cat.to_json(), indent=1))
    return cat


def _with_note(cat: FlagCatalogue, note: str) -> FlagCatalogue:
    return FlagCatalogue(version=cat.version, flags=cat.flags, source=cat.source,
                         complete=cat.complete, note=note)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------
# Settings without effect
# --------------------------------------------------------------------------------------

_DECODE_ONLY = {
    "--cuda-graph-max-bs": "it sizes decode CUDA graphs",
    "--cuda-graph-bs": "it sizes decode CUDA graphs",
    "--cuda-graph-max-bs-decode": "it sizes decode CUDA graphs",
    "--cuda-graph-bs-decode": "it sizes decode CUDA graphs",
    "--cuda-graph-backend-decode": "it selects the decode CUDA graph backend",
    "--disable-decode-cuda-graph": "it turns off decode CUDA graphs",
    "--num-continuous-decode-steps": "it batches decode steps",
    "--stream-interval": "it paces streamed generation",
    "--enable-cache-report": "/v1/embeddings reports no cached-token details",
}


def effect_warnings(spec: WorkerSpec, version: str,
                    catalogue: FlagCatalogue | None = None) -> list[str]:
    """Settings of `spec` that SGLang `version` accepts but that do nothing (or less
    than they seem to) for an embedding model, as sentences the UI can show."""
    cat = catalogue or FlagCatalogue.builtin(version)
    modern = cat.has("--cuda-graph-backend-prefill")
    out: list[str] = []
    if spec.cuda_graph is not None and not modern:
        out.append(
            f"cuda_graph = {str(spec.cuda_graph).lower()} has no effect on SGLang {version}: "
            "it captures CUDA graphs only for decode steps, which an embedding model never "
            "runs (the memory heuristic still reserves room for them)")
    elif spec.cuda_graph is False:
        out.append(
            f"cuda_graph = false on SGLang {version} turns off prefill CUDA graphs only: "
            "decode graphs are never captured for an embedding model")
    seen: set[str] = set()
    for token in spec.extra_args:
        if not _is_option(token):
            continue
        info = cat.resolve(token)
        name = info.name if info else token.split("=", 1)[0]
        names = set(info.names) if info else {name}
        if name in seen:
            continue
        seen.add(name)
        if "--disable-cuda-graph" in names:
            if modern:
                out.append(f"--disable-cuda-graph is deprecated on SGLang {version} (still "
                           "honoured: it turns off prefill graphs, decode graphs are never "
                           "captured for embeddings); set cuda_graph = false instead")
            else:
                out.append(f"--disable-cuda-graph has no effect on SGLang {version} for an "
                           "embedding model: no CUDA graphs are captured for it")
            continue
        for flag, why in _DECODE_ONLY.items():
            if flag in names:
                out.append(f"{flag} has no effect for an embedding model: {why}")
                break
    return out


# --------------------------------------------------------------------------------------
# Launch command
# --------------------------------------------------------------------------------------

MANAGED_FLAGS: dict[str, str] = {
    "--model-path": "model.path",
    "--is-embedding": "(always set)",
    "--host": "host",
    "--port": "port",
    "--nccl-port": "nccl_port",
    "--mem-fraction-static": "mem_fraction_static",
    "--max-running-requests": "max_running_requests",
    "--chunked-prefill-size": "chunked_prefill_size",
    "--context-length": "context_length",
    "--served-model-name": "model.served_name",
    "--api-key": "api_key_env / api_key_file",
    "--enable-metrics": "(always set)",
    "--bucket-e2e-request-latency": "metrics.e2e_latency_buckets_s",
    "--disable-cuda-graph": "cuda_graph",
    "--cuda-graph-backend-decode": "cuda_graph",
    "--cuda-graph-backend-prefill": "cuda_graph",
}
"""Flags `build_launch` writes from typed settings, mapped to the setting that owns
them: the same flag in `extra_args` would duplicate (and fight) that setting."""


def default_nccl_port(port: int) -> int:
    """`--nccl-port` used when none is configured: port + 1000, or port - 1000 when
    that would leave the valid range."""
    return port + NCCL_PORT_OFFSET if port + NCCL_PORT_OFFSET <= 65535 else port - NCCL_PORT_OFFSET


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else repr(float(x))


def cuda_graph_off_args(catalogue: FlagCatalogue) -> list[str]:
    """The version's own way of turning CUDA graphs off (empty if it has none)."""
    if catalogue.has("--cuda-graph-backend-decode") and catalogue.has("--cuda-graph-backend-prefill"):
        return ["--cuda-graph-backend-decode", "disabled",
                "--cuda-graph-backend-prefill", "disabled"]
    if catalogue.has("--disable-cuda-graph"):
        return ["--disable-cuda-graph"]
    return []


def build_launch(spec: WorkerSpec, *, python: str = sys.executable,
                 catalogue: FlagCatalogue, nccl_port: int | None = None,
                 bucket_edges: Sequence[float] = DEFAULT_E2E_BUCKETS_S,
                 sim_args: Sequence[str] = ()) -> LaunchCommand:
    """Argv and environment that start the worker described by `spec`.

    Real SGLang: ``python -m sglang.launch_server --is-embedding --model-path ...``;
    sim: the same flags after ``python -m backends.sim.worker``, then `sim_args`.
    `nccl_port` defaults to `default_nccl_port(spec.port)`. Flags missing from
    `catalogue` (e.g. no latency buckets) are left out rather than failing the start.
    The environment adds ``HF_HUB_OFFLINE=1``, `spec.env` and, when `spec.gpu` is set,
    ``CUDA_VISIBLE_DEVICES``.
    """
    module = SIM_MODULE if spec.engine == Engine.SIM else SGLANG_MODULE
    argv: list[str] = [python, "-m", module,
                       "--model-path", spec.model_path, "--is-embedding",
                       "--host", spec.host, "--port", str(spec.port),
                       "--nccl-port", str(nccl_port if nccl_port is not None
                                          else default_nccl_port(spec.port))]
    if spec.served_model_name:
        argv += ["--served-model-name", spec.served_model_name]
    if spec.mem_fraction_static is not None:
        argv += ["--mem-fraction-static", _num(spec.mem_fraction_static)]
    if spec.max_running_requests is not None:
        argv += ["--max-running-requests", str(spec.max_running_requests)]
    if spec.chunked_prefill_size is not None:
        argv += ["--chunked-prefill-size", str(spec.chunked_prefill_size)]
    if spec.context_length is not None:
        argv += ["--context-length", str(spec.context_length)]
    if spec.cuda_graph is False:
        argv += cuda_graph_off_args(catalogue)
    argv.append("--enable-metrics")
    if bucket_edges and catalogue.has("--bucket-e2e-request-latency"):
        argv += ["--bucket-e2e-request-latency", *(_num(e) for e in bucket_edges)]
    if spec.api_key:
        argv += ["--api-key", spec.api_key]
    argv += list(spec.extra_args)
    if spec.engine == Engine.SIM:
        argv += list(sim_args)
    env = {"HF_HUB_OFFLINE": "1", **dict(spec.env)}
    if spec.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(spec.gpu)
    return LaunchCommand(argv=tuple(argv), env=env)


# --------------------------------------------------------------------------------------
# Masking secrets for display
# --------------------------------------------------------------------------------------

MASK = "********"
_SECRET_FLAGS = ("--api-key", "--admin-api-key", "--control-plane-api-keys", "--hf-token")
_SECRET_FLAG_WORDS = re.compile(r"(api-keys?|token|secret|password|passwd)$")
_SECRET_ENV_WORDS = frozenset({"KEY", "APIKEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD",
                               "CREDENTIAL", "CREDENTIALS"})


def _is_secret_flag(option: str) -> bool:
    if option in _SECRET_FLAGS or _SECRET_FLAG_WORDS.search(option):
        return True
    # argparse abbreviations: `--api-k X` is `--api-key X`
    return len(option) >= 5 and any(f.startswith(option) for f in _SECRET_FLAGS)


def is_secret_env(name: str) -> bool:
    """Whether an environment variable name looks like it holds a secret: one of its
    ``_``-separated words is KEY, TOKEN, SECRET, PASSWORD... (``HF_TOKEN``,
    ``EMBEDOPS_API_KEY``; not ``TOKENIZERS_PARALLELISM``)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return False
    return any(word in _SECRET_ENV_WORDS for word in name.upper().split("_"))


def mask_argv(argv: Iterable[str]) -> list[str]:
    """`argv` with API keys and secret-looking ``NAME=value`` tokens masked."""
    out: list[str] = []
    mask_next = False
    for token in argv:
        if mask_next and not token.startswith("--"):
            out.append(MASK)
            mask_next = False
            continue
        mask_next = False
        if _is_option(token):
            option, eq, _ = token.partition("=")
            if _is_secret_flag(option):
                if eq:
                    out.append(f"{option}={MASK}")
                else:
                    out.append(token)
                    mask_next = True
                continue
        elif "=" in token and is_secret_env(token.split("=", 1)[0]):
            out.append(f"{token.split('=', 1)[0]}={MASK}")
            continue
        out.append(token)
    return out


def mask_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with the values of secret-looking variables masked."""
    return {k: (MASK if is_secret_env(k) else v) for k, v in env.items()}


def format_argv(argv: Iterable[str]) -> str:
    """A masked, shell-quoted one-line rendering of `argv` for display and logs."""
    return shlex.join(mask_argv(argv))


# --------------------------------------------------------------------------------------
# Reading a running server's command line
# --------------------------------------------------------------------------------------

_PARSED_FLAGS: dict[str, tuple[str, type]] = {
    "--model-path": ("model_path", str), "--model": ("model_path", str),
    "--host": ("host", str), "--port": ("port", int), "--nccl-port": ("nccl_port", int),
    "--mem-fraction-static": ("mem_fraction_static", float),
    "--max-running-requests": ("max_running_requests", int),
    "--chunked-prefill-size": ("chunked_prefill_size", int),
    "--context-length": ("context_length", int),
    "--served-model-name": ("served_model_name", str),
    "--api-key": ("api_key", str),
    "--tp-size": ("tp_size", int), "--tensor-parallel-size": ("tp_size", int),
    "--dp-size": ("dp_size", int), "--data-parallel-size": ("dp_size", int),
    "--base-gpu-id": ("base_gpu_id", int),
    "--cuda-graph-backend-decode": ("cuda_graph_backend_decode", str),
    "--cuda-graph-backend-prefill": ("cuda_graph_backend_prefill", str),
    "--is-embedding": ("is_embedding", bool), "--enable-metrics": ("enable_metrics", bool),
    "--disable-cuda-graph": ("disable_cuda_graph", bool),
}


def _launch_args_start(argv: Sequence[str]) -> tuple[int, Engine] | None:
    for i, token in enumerate(argv):
        base = os.path.basename(token)
        if token == "-m" and i + 1 < len(argv):
            if argv[i + 1] == SGLANG_MODULE:
                return i + 2, Engine.SGLANG
            if argv[i + 1] == SIM_MODULE:
                return i + 2, Engine.SIM
        if base == "launch_server.py" and "sglang" in token:
            return i + 1, Engine.SGLANG
        if base == "sglang" and i + 1 < len(argv) and argv[i + 1] == "serve":
            return i + 2, Engine.SGLANG
    return None


def parse_launch_argv(argv: Sequence[str]) -> dict[str, object]:
    """Worker settings from the command line of a running SGLang (or simulated) server.

    Understands ``python -m sglang.launch_server ...``, ``sglang serve ...`` and
    ``python -m backends.sim.worker ...``, with ``--flag value`` and ``--flag=value``.
    Returns a dict with ``engine``, ``python`` (argv[0] for ``-m`` forms),
    ``model_path``, ``host`` (default 127.0.0.1), ``port`` (default 30000), the other
    settings present, ``cuda_graph`` (False when disabled by either spelling) and
    ``extra_args`` (every other flag, verbatim). Raises ValueError for anything else.
    """
    start = _launch_args_start(argv)
    if start is None:
        raise ValueError("not an SGLang server command line")
    begin, engine = start
    out: dict[str, object] = {"engine": engine.value, "host": "127.0.0.1", "port": 30000}
    if begin >= 2 and argv[begin - 2] == "-m":
        out["python"] = argv[0]
    extra: list[str] = []
    args = list(argv[begin:])
    i = 0
    while i < len(args):
        token = args[i]
        option, eq, inline = token.partition("=")
        known = _PARSED_FLAGS.get(option) if _is_option(token) else None
        if known is None:
            extra.append(token)
            i += 1
            continue
        key, kind = known
        if kind is bool:
            out[key] = True
            i += 1
            continue
        if eq:
            raw = inline
            i += 1
        elif i + 1 < len(args):
            raw = args[i + 1]
            i += 2
        else:
            raise ValueError(f"{option} without a value")
        try:
            out[key] = kind(raw)
        except ValueError as e:
            raise ValueError(f"{option}: bad value {raw!r}") from e
    if out.get("disable_cuda_graph") or (
            out.get("cuda_graph_backend_decode") == "disabled"
            and out.get("cuda_graph_backend_prefill") == "disabled"):
        out["cuda_graph"] = False
    if "model_path" not in out:
        raise ValueError("no --model-path in the command line")
    out["extra_args"] = extra
    return out
