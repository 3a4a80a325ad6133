"""A small keep-alive HTTP/1.1 load generator for the webhook benchmarks.

``N`` connections (``concurrency``) each send POSTs one after the other on one
keep-alive connection until ``requests`` have been sent; every answer's status and
latency (send to last byte) is kept. The client is a minimal HTTP/1.1 writer/reader on
asyncio streams, so its own CPU cost stays well below the server's. A connection the
server closes (``Connection: close``, an error) is reopened and counted.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from _table import percentile

__all__ = ["LoadResult", "post_load"]


@dataclass
class LoadResult:
    """What a load run saw."""

    requests: int
    seconds: float
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests
    bodies: list[bytes] = field(default_factory=list)  # 2xx bodies, when asked to keep them
    reconnects: int = 0

    def count(self, status: int) -> int:
        """How many answers had ``status``."""
        return self.statuses.get(status, 0)

    def rate(self, status: int = 202) -> float:
        """Answers with ``status`` per second of sending time."""
        return self.count(status) / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float | None:
        """The ``q``-th percentile latency in milliseconds."""
        value = percentile(self.latencies, q)
        return None if value is None else value * 1000


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body and whether the server keeps the connection open."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    keep = True
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"connection" and value.strip().lower() == b"close":
            keep = False
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, await reader.readexactly(length), keep
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, body, keep
        body += chunk[:-2]


async def _load(
    port: int,
    path: str,
    make_body: Callable[[int], dict[str, object]],
    requests: int,
    concurrency: int,
    keep_bodies: bool,
    host: str,
) -> LoadResult:
    result = LoadResult(requests, 0.0)
    counter = iter(range(requests))
    prefix = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\n".encode()
    )

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for n in counter:
                body = json.dumps(make_body(n)).encode()
                began = time.perf_counter()
                try:
                    writer.write(prefix + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                    await writer.drain()
                    status, data, keep = await _read_answer(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    name = type(exc).__name__
                    result.errors[name] = result.errors.get(name, 0) + 1
                    result.statuses[0] = result.statuses.get(0, 0) + 1
                    keep = False
                else:
                    result.latencies.append(time.perf_counter() - began)
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                    if keep_bodies and 200 <= status < 300:
                        result.bodies.append(data)
                if not keep:
                    writer.close()
                    result.reconnects += 1
                    reader, writer = await asyncio.open_connection(host, port)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


def post_load(
    port: int,
    path: str,
    make_body: Callable[[int], dict[str, object]],
    *,
    requests: int,
    concurrency: int,
    deadline: float = 300.0,
    keep_bodies: bool = False,
    host: str = "127.0.0.1",
) -> LoadResult:
    """POST ``requests`` JSON bodies (``make_body(n)``) to ``path`` over ``concurrency``
    keep-alive connections; return statuses, errors and latencies. Bounded by ``deadline``
    seconds (``TimeoutError`` beyond)."""
    if not 1 <= requests <= 100_000 or not 1 <= concurrency <= 256:
        raise SystemExit("keep requests within 1..100000 and concurrency within 1..256")

    async def bounded() -> LoadResult:
        async with asyncio.timeout(deadline):
            return await _load(port, path, make_body, requests, concurrency, keep_bodies, host)

    return asyncio.run(bounded())
