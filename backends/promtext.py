"""Prometheus text / OpenMetrics exposition → samples, with the lookups the supervisor needs.

The classic text format is read by a fast line parser here (`_fast_text_families`) that
returns exactly what ``prometheus_client``'s text parser returns (family naming, counter
``_total`` handling, untyped singletons); anything it does not fully understand (a
quoted UTF-8 metric name, a label it cannot read, a bad value) falls back to
``prometheus_client``, as does OpenMetrics. prometheus_client's pure-Python parser took
~13 ms for one SGLang scrape of ~250 samples, the bulk of the supervisor's CPU at 64
workers scraped every second. This module then indexes the families:

* SGLang metric names carry a colon (``sglang:num_running_reqs``). prometheus_client 0.26's
  OpenMetrics *exposition* writes such sample names with the colon escaped to ``_``
  (``sglang_num_requests_total``) while keeping the colon on ``# TYPE``; older versions keep
  the colon everywhere. Lookups therefore compare names with ``:`` folded to ``_``.
* prometheus_client strips ``_total`` from counter family names and groups
  ``_bucket``/``_count``/``_sum`` under the histogram's family name. Lookups here are by
  *sample* name (``sglang:num_requests_total``, ``sglang:e2e_request_latency_seconds``
  for a histogram), and a counter may be named with or without ``_total``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as _parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as _parse_text

__all__ = [
    "Histogram",
    "MetricsParseError",
    "MetricsSnapshot",
    "Sample",
    "detect_reset",
    "parse_metrics",
]

_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created", "_gcount", "_gsum", "_info")


class MetricsParseError(ValueError):
    """The exposition could not be parsed by prometheus_client."""


@dataclass(frozen=True)
class Sample:
    """One exposed series value.

    `name` is the sample name as exposed (e.g. ``sglang:num_requests_total``);
    `kind` is the type of its family (``counter``, ``gauge``, ``histogram``, ``unknown``...).
    """

    name: str
    labels: Mapping[str, str]
    value: float
    kind: str


@dataclass(frozen=True)
class Histogram:
    """A cumulative histogram: `buckets` are ``(le, cumulative count)`` ascending, ending at +Inf."""

    buckets: tuple[tuple[float, float], ...]
    count: float
    sum: float


def _fold(name: str) -> str:
    return name.replace(":", "_")


def _matches(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    for key, value in wanted.items():
        if labels.get(key) != value:
            return False
    return True


def _filter(label_filter: Mapping[str, object] | None, kw: Mapping[str, object]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for source in (label_filter or {}), kw:
        for key, value in source.items():
            merged[key] = str(value)
    return merged


class MetricsSnapshot:
    """The samples of one scrape, indexed by (colon-folded) sample name.

    Values of several series that match a label filter are summed (the usual way to
    aggregate a gauge or counter over `tp_rank`, `is_streaming`, ...).
    """

    def __init__(self, samples: Iterable[Sample], families: Mapping[str, str]) -> None:
        self._by_name: dict[str, list[Sample]] = {}
        for sample in samples:
            self._by_name.setdefault(_fold(sample.name), []).append(sample)
        self._families = dict(families)

    @property
    def families(self) -> dict[str, str]:
        """Family name (as declared on ``# TYPE``) → type."""
        return dict(self._families)

    def samples(self, name: str, label_filter: Mapping[str, object] | None = None,
                **labels: object) -> list[Sample]:
        """All samples named `name` whose labels include the given ones.

        A counter can be asked for with or without its ``_total`` suffix.
        Label names that are not Python identifiers go in `label_filter`.
        """
        wanted = _filter(label_filter, labels)
        return [s for s in self._series(name) if _matches(s.labels, wanted)]

    def _series(self, name: str) -> list[Sample]:
        key = _fold(name)
        found = self._by_name.get(key)
        if found is None:
            alt = key[: -len("_total")] if key.endswith("_total") else key + "_total"
            found = [s for s in self._by_name.get(alt, ()) if s.kind == "counter"]
        return found

    def has(self, name: str) -> bool:
        """Whether any series of this name (or histogram family) is present."""
        return bool(self._series(name)) or bool(self._by_name.get(_fold(name) + "_bucket"))

    def value(self, name: str, label_filter: Mapping[str, object] | None = None,
              **labels: object) -> float | None:
        """Sum of matching series (gauge or counter); ``None`` when no series matches."""
        found = self.samples(name, label_filter, **labels)
        if not found:
            return None
        return math.fsum(s.value for s in found)

    gauge = value
    counter = value

    def label_values(self, name: str, label: str) -> set[str]:
        """Distinct values of `label` among the series of `name` (or of a histogram's buckets)."""
        series = self._series(name) or self._by_name.get(_fold(name) + "_bucket", [])
        return {s.labels[label] for s in series if label in s.labels}

    def histogram(self, name: str, label_filter: Mapping[str, object] | None = None,
                  **labels: object) -> Histogram | None:
        """The histogram `name` (family name, no ``_bucket``), merged across matching series.

        Bucket counts are summed per `le` over the edges that every matching series has
        (SGLang series of one metric share their edges; keeping only common edges keeps
        every reported cumulative count exact). ``None`` when no series matches.
        """
        wanted = _filter(label_filter, labels)
        key = _fold(name)
        groups: dict[tuple[tuple[str, str], ...], dict[float, float]] = {}
        for s in self._by_name.get(key + "_bucket", ()):
            if not _matches(s.labels, wanted) or "le" not in s.labels:
                continue
            ident = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            groups.setdefault(ident, {})[float(s.labels["le"])] = s.value
        if not groups:
            return None
        common = set.intersection(*(set(edges) for edges in groups.values()))
        buckets = tuple((le, math.fsum(g[le] for g in groups.values())) for le in sorted(common))
        count_samples = [s for s in self._by_name.get(key + "_count", ())
                         if _matches(s.labels, wanted)]
        sum_samples = [s for s in self._by_name.get(key + "_sum", ())
                       if _matches(s.labels, wanted)]
        if count_samples:
            count = math.fsum(s.value for s in count_samples)
        else:
            count = buckets[-1][1] if buckets and math.isinf(buckets[-1][0]) else 0.0
        total = math.fsum(s.value for s in sum_samples) if sum_samples else 0.0
        return Histogram(buckets=buckets, count=count, sum=total)

    def monotonic_series(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every counter sample and histogram bucket/count, keyed by (folded name, labels)."""
        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for key, samples in self._by_name.items():
            for s in samples:
                counter = s.kind == "counter" and not key.endswith("_created")
                bucket = s.kind == "histogram" and key.endswith(("_bucket", "_count"))
                if counter or bucket:
                    out[(key, tuple(sorted(s.labels.items())))] = s.value
        return out

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_name.values())


class _Fallback(Exception):
    """The fast parser met something it does not handle: use prometheus_client."""


@dataclass
class _FastSample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class _FastFamily:
    name: str
    type: str
    samples: list[_FastSample] = field(default_factory=list)
    skipped: bool = False
    """A family a filtered parse does not keep (no samples)."""


_SAMPLE_RE = re.compile(
    r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+([^ \t]+)(?:[ \t]+[^ \t]+)?")
_LABEL_RE = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\]|\\.)*)"[ \t]*,?')
_ESCAPE_RE = re.compile(r"\\(.)")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
_TYPES = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})
_ALLOWED = {"summary": ("_count", "_sum", ""), "histogram": ("_count", "_sum", "_bucket")}


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return _ESCAPE_RE.sub(lambda m: _ESCAPES.get(m[1], "\\" + m[1]), value)


@functools.lru_cache(maxsize=16384)
def _labels(text: str | None) -> dict[str, str]:
    """Label text → dict (cached: a worker exposes the same label sets every scrape;
    callers must not mutate the result)."""
    if not text:
        return {}
    out: dict[str, str] = {}
    pos, end = 0, len(text)
    while pos < end:
        m = _LABEL_RE.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip():
                raise _Fallback
            break
        out[m[1]] = _unescape(m[2])
        pos = m.end()
    return out


def _fast_text_families(text: str, want: _Wanted | None = None) -> list[Any]:
    """prometheus_client's ``text_string_to_metric_families`` for plain exposition
    lines, fast; raises `_Fallback` on anything else.

    With `want`, a family none of whose sample names `want` accepts is *skipped*: its
    sample lines are dropped after a prefix check, before any parsing (and are not
    validated), and the family comes out marked `skipped`, without samples (its declared
    type still types untyped samples of kept names, as in a full parse). Sample lines
    outside any kept family are parsed only when their colon-folded text starts with a
    wanted prefix. Every family that `want` accepts comes out as the full parse has it.
    """
    out: list[_FastFamily] = []
    fam: _FastFamily | None = None
    allowed: tuple[str, ...] = ()
    kept = True
    prefixes = want.prefixes if want is not None else ()
    fold_lines = want is not None and ":" in text

    def close() -> None:
        if fam is None:
            return
        if fam.type not in _TYPES:
            raise _Fallback  # prometheus_client rejects (or maps) it
        if fam.type == "untyped":
            fam.type = "unknown"
        if fam.type == "counter":  # prometheus_client's OpenMetrics-style munging
            if fam.name.endswith("_total"):
                fam.name = fam.name[:-6]
            else:
                for smp in fam.samples:
                    smp.name += "_total"
        if not kept:
            fam.samples, fam.skipped = [], True
        out.append(fam)

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line[0] == "#":
            parts = line.split(None, 3)
            if len(parts) < 2 or parts[1] not in ("HELP", "TYPE"):
                continue
            if len(parts) == 2:
                raise _Fallback  # a bare "# HELP": prometheus_client's own odd handling
            name = parts[2]
            if not _SAMPLE_RE.fullmatch(name + " 0"):
                raise _Fallback  # quoted or unusual names: leave them to prometheus_client
            if parts[1] == "HELP":
                if fam is None or name != fam.name:
                    close()
                    fam = _FastFamily(name, "untyped")
                    allowed = (name,)
                    kept = want is None or want.any_of(allowed)
                continue
            if len(parts) < 4:
                raise _Fallback
            if fam is None or name != fam.name:
                close()
                fam = _FastFamily(name, "untyped")
            fam.type = parts[3]
            allowed = tuple(name + sfx for sfx in _ALLOWED.get(fam.type, ("",)))
            kept = want is None or want.any_of(allowed)
            continue
        # Outside a kept family only a sample of a wanted name is kept (as its own
        # untyped family, or in a skipped family: never). A line that cannot name one is
        # dropped unparsed; leaving a skipped family open past it changes nothing kept
        # (its names are all unwanted).
        if (want is not None and (not kept or fam is None) and not (
                line.replace(":", "_") if fold_lines else line).startswith(prefixes)):
            continue
        m = _SAMPLE_RE.fullmatch(line)
        if m is None:
            raise _Fallback
        try:
            value = float(m[3])
        except ValueError:
            raise _Fallback from None
        sample = _FastSample(m[1], _labels(m[2]), value)
        if fam is not None and sample.name in allowed:
            fam.samples.append(sample)
            continue
        close()
        fam, allowed, kept = None, (), True
        if want is None or want.accepts(sample.name):
            out.append(_FastFamily(sample.name, "unknown", [sample]))
    close()
    return out


class _Wanted:
    """The sample names a filtered parse keeps: each wanted family's name, colon-folded
    and without ``_total``, alone or with one of `_SUFFIXES`."""

    def __init__(self, families: Iterable[str]) -> None:
        keys = set()
        for name in families:
            if not isinstance(name, str) or not name:
                raise ValueError(f"families: metric family names expected, got {name!r}")
            key = _fold(name)
            keys.add(key.removesuffix("_total"))
        self.names = frozenset(k + sfx for k in keys for sfx in ("", *_SUFFIXES))
        self.prefixes = tuple(sorted(keys))
        self._any: dict[tuple[str, ...], bool] = {}

    def accepts(self, sample_name: str) -> bool:
        """Whether a sample of this (exposed) name is kept."""
        return _fold(sample_name) in self.names

    def any_of(self, names: tuple[str, ...]) -> bool:
        """Whether any of these sample names is kept (a family's allowed names; cached:
        a worker declares the same families every scrape)."""
        found = self._any.get(names)
        if found is None:
            found = any(_fold(n) in self.names for n in names)
            if len(self._any) < 4096:
                self._any[names] = found
        return found


@functools.lru_cache(maxsize=64)
def _wanted(families: frozenset[str]) -> _Wanted:
    return _Wanted(families)


def _is_openmetrics(text: str, content_type: str | None) -> bool:
    if content_type is not None:
        return content_type.split(";")[0].strip().lower() == "application/openmetrics-text"
    return text.rstrip().endswith("# EOF")


def parse_metrics(text: str, *, content_type: str | None = None,
                  families: Iterable[str] | None = None) -> MetricsSnapshot:
    """Parse a /metrics body. The format follows `content_type` when given, else the
    body (OpenMetrics ends with ``# EOF``). Raises `MetricsParseError` on malformed input.

    `families` (metric family names as looked up, e.g. ``sglang:num_requests_total``,
    ``sglang:e2e_request_latency_seconds``; ``:``/``_`` and a ``_total`` suffix do not
    matter) keeps only the samples of those families: sample names equal to a family's
    name or to it plus ``_total``/``_bucket``/``_count``/``_sum``/``_created``/... . Those
    come out exactly as a full parse gives them (names, labels, values, kinds); the
    lines of other families are skipped after a prefix check, unparsed and unvalidated
    (a malformed line there no longer fails the parse), which makes the parse several
    times cheaper on an SGLang scrape. `MetricsSnapshot.families` then lists the kept
    families only, and `detect_reset` compares the kept series only.
    """
    errors = (ValueError, TypeError, IndexError, KeyError)
    want = _wanted(frozenset(families)) if families is not None else None
    openmetrics = _is_openmetrics(text, content_type)
    families_: list[Any] = []
    try:
        if not openmetrics:
            try:
                families_ = _fast_text_families(text, want)
            except _Fallback:
                families_ = list(_parse_text(text))
        else:
            families_ = list(_parse_openmetrics(text))
    except errors as e:
        fmt = "OpenMetrics" if openmetrics else "Prometheus text"
        if not openmetrics:
            raise MetricsParseError(f"cannot parse {fmt} exposition: {e}") from e
        # prometheus_client 0.26 cannot read back its own OpenMetrics output for colon
        # names with several series ("Clashing name": the escaped sample names start a
        # new family per series). The classic parser has no such check and reads it.
        try:
            families_ = list(_parse_text(text))
        except errors:
            raise MetricsParseError(f"cannot parse {fmt} exposition: {e}") from e

    declared: dict[str, str] = {}
    for fam in families_:
        if fam.type != "unknown":
            declared[_fold(fam.name)] = fam.type
    if want is not None:  # what the fast parser did not already drop (fallback parses)
        kept = [fam for fam in families_ if not getattr(fam, "skipped", False) and (
            any(want.accepts(s.name) for s in fam.samples)
            or (not fam.samples and want.accepts(fam.name)))]
    else:
        kept = families_

    def kind_of(fam_type: str, sample_name: str) -> str:
        if fam_type != "unknown":
            return fam_type
        # OpenMetrics from prometheus_client 0.26: samples escaped into their own
        # untyped families; recover the type from the declared family.
        folded = _fold(sample_name)
        if folded in declared:
            return declared[folded]
        for suffix in _SUFFIXES:
            if folded.endswith(suffix) and folded[: -len(suffix)] in declared:
                return declared[folded[: -len(suffix)]]
        return "unknown"

    samples = [
        Sample(name=s.name, labels=dict(s.labels), value=float(s.value),
               kind=kind_of(fam.type, s.name))
        for fam in kept
        for s in fam.samples
        if want is None or want.accepts(s.name)
    ]
    type_names = {fam.name: fam.type for fam in kept if fam.type != "unknown" or fam.samples}
    return MetricsSnapshot(samples, type_names)


def detect_reset(prev: MetricsSnapshot, cur: MetricsSnapshot) -> bool:
    """Whether the worker's counters were reset between two scrapes.

    True when any counter or histogram bucket/count series decreased, or vanished
    (SGLang creates a labelled series on its first write, so a restarted worker
    has none of the old ones until it serves again).
    """
    before = prev.monotonic_series()
    after = cur.monotonic_series()
    for key, old in before.items():
        new = after.get(key)
        if new is None or new < old:
            return True
    return False
