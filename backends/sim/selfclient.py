"""A minimal HTTP/1.1 client on asyncio streams, for the worker's warmup requests to
itself (SGLang's warmup thread posts to its own port the same way)."""

from __future__ import annotations

import asyncio


async def http_request(host: str, port: int, method: str, path: str, *, body: bytes = b"",
                       headers: dict[str, str] | None = None,
                       timeout: float = 10.0) -> tuple[int, bytes]:
    """One request on a fresh connection → (status, body). Raises OSError/TimeoutError."""

    async def go() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}",
                     "Connection: close", f"Content-Length: {len(body)}"]
            if body:
                lines.append("Content-Type: application/json")
            for k, v in (headers or {}).items():
                lines.append(f"{k}: {v}")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
        head, _, payload = raw.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].split()
        if len(status_line) < 2:
            raise OSError(f"malformed HTTP response: {head[:80]!r}")
        return int(status_line[1]), payload

    return await asyncio.wait_for(go(), timeout)
