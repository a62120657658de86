"""Wire format between the launcher and the ``sglang::scheduler`` child.

One message per line, each an orjson-encoded JSON array whose first item is the
message kind. Launcher → scheduler:

* ``["r", [[rid, n_tokens, key, kind], ...]]`` — requests (kind: `KIND_*`)
* ``["f", {fault switches}]`` — scheduler-side fault settings (`Faults.scheduler_part`)
* ``["x", flush_id]`` — flush the radix cache

Scheduler → launcher:

* ``["ready", {info}]`` — weights loaded, KV pool allocated
* ``["d", [[rid, variant, cached_tokens, queue_time_s], ...]]`` — finished requests
* ``["q", [rid, ...]]`` — rejected: waiting queue full (--max-queued-requests)
* ``["s", {stats}]`` — scheduler gauges
* ``["x", flush_id, ok]`` — flush result
"""

from __future__ import annotations

from typing import Any

import orjson

KIND_REQUEST = 0
KIND_HEALTH = 1

REQ = "r"
FAULTS = "f"
FLUSH = "x"
READY = "ready"
DONE = "d"
QUEUE_FULL = "q"
STATS = "s"


def encode(msg: list[Any]) -> bytes:
    """One framed message."""
    return orjson.dumps(msg) + b"\n"


class LineBuffer:
    """Splits a byte stream into decoded messages."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[list[Any]]:
        """Add `data`; return the complete messages it finished."""
        buf = self._buf + data if self._buf else data
        if b"\n" not in buf:
            self._buf = buf
            return []
        *lines, rest = buf.split(b"\n")
        self._buf = rest
        return [orjson.loads(line) for line in lines if line]
