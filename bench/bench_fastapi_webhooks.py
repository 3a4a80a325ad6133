"""Webhook throughput of sagaz-fastapi behind uvicorn, with SQLite storage, on loopback.

Starts ``uvicorn`` (one process: the application's lifespan owns the SQLite file and runs
the sagas in process) on 127.0.0.1 with a small app (one 3-step order saga triggered by
``order_created``, SagaContextMiddleware, the webhook router) and a fresh SQLite file,
sends ``--requests`` webhook POSTs over ``--concurrency`` keep-alive connections, then
waits until every started saga is COMPLETED (read from the SQLite file) and stops the
server with SIGTERM.

    python bench/bench_fastapi_webhooks.py [--requests 2000] [--concurrency 32]

Prints the accepted requests per second (202 answers over the sending time) and the
seconds from the first POST until all sagas completed. Bounded: a fixed number of
requests, a deadline for each phase, loopback only; needs uvicorn, httpx,
``sagaz-core[sqlite]`` and ``sagaz-fastapi`` installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import httpx
except ImportError:  # pragma: no cover - depends on the environment
    raise SystemExit(
        "bench_fastapi_webhooks needs httpx and uvicorn: pip install httpx uvicorn"
    ) from None

APP = """
from fastapi import FastAPI
from sagaz.core import Saga, SagaConfig, action, compensate, trigger
from sagaz.integrations.fastapi import (
    SagaContextMiddleware, create_lifespan, create_webhook_router,
)


class BenchOrderSaga(Saga):
    saga_name = "bench-order"

    @trigger(source="order_created", idempotency_key="order_id")
    def on_order(self, event):
        return {"order_id": event["order_id"], "amount": event["amount"]}

    @action("reserve_inventory")
    async def reserve(self, ctx):
        return {"reservation_id": "R-" + ctx["order_id"]}

    @compensate("reserve_inventory")
    async def release(self, ctx):
        return None

    @action("charge_payment")
    async def charge(self, ctx):
        return {"payment_id": "P-" + ctx["order_id"]}

    @action("ship_order")
    async def ship(self, ctx):
        return {"tracking_id": "T-" + ctx["order_id"]}


app = FastAPI(lifespan=create_lifespan(SagaConfig.from_env(), shutdown_grace=30))
app.add_middleware(SagaContextMiddleware)
app.include_router(create_webhook_router())
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(folder: Path, db: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    (folder / "bench_fastapi_app.py").write_text(APP)
    log = folder / "uvicorn.log"
    env = {**os.environ, "SAGAZ_STORAGE_URL": f"sqlite:///{db}"}
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench_fastapi_app:app",
                "--app-dir",
                str(folder),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--backlog",
                "2048",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            cwd=folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"uvicorn exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/webhooks/health", timeout=2).status_code == 200:
                return proc, port, log
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("uvicorn did not answer within 30 s")


async def _post_raw(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, n: int
) -> int:
    """One keep-alive HTTP/1.1 POST on an open connection; return the status code."""
    body = json.dumps({"order_id": f"B-{n}", "amount": 10 + n % 50}).encode()
    writer.write(
        b"POST /webhooks/order_created HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{port}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    await reader.readexactly(length)
    return status


async def send_all(
    port: int, requests: int, concurrency: int, deadline: float, errors: dict[str, int]
) -> dict[int, int]:
    """POST ``requests`` webhooks over ``concurrency`` keep-alive connections (a minimal
    HTTP/1.1 client, so the client's own CPU cost does not hide the server's); count the
    answers (status 0: no answer, its exception counted in ``errors``)."""
    statuses: dict[int, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(requests):
        queue.put_nowait(n)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                try:
                    n = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    status = await _post_raw(reader, writer, port, n)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    status = 0
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.wait_for(
        asyncio.gather(*(worker() for _ in range(concurrency))), timeout=deadline
    )
    return statuses


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def unfinished(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db, timeout=30) as conn:
        total, done = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(status = 'COMPLETED'), 0) FROM sagaz_sagas"
        ).fetchone()
    return int(total), int(total) - int(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds per phase")
    args = parser.parse_args()
    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 256:
        raise SystemExit("keep --requests within 1..100000 and --concurrency within 1..256")

    with tempfile.TemporaryDirectory(prefix="sagaz-bench-fastapi-") as tmp:
        folder = Path(tmp)
        db = folder / "sagas.db"
        proc, port, log = start_server(folder, db)
        try:
            cpu_before = cpu_seconds(proc.pid)
            start = time.perf_counter()
            errors: dict[str, int] = {}
            statuses = asyncio.run(
                send_all(port, args.requests, args.concurrency, args.deadline, errors)
            )
            sent = time.perf_counter() - start
            accepted = statuses.get(202, 0)

            deadline = time.monotonic() + args.deadline
            total, left = unfinished(db)
            while left and time.monotonic() < deadline:
                time.sleep(0.05)
                total, left = unfinished(db)
            all_done = time.perf_counter() - start
            cpu_after = cpu_seconds(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait(10)

        import fastapi
        import uvicorn

        print("sagaz-fastapi webhooks: uvicorn (1 process, asyncio), SQLite (WAL), loopback")
        print(
            f"  python {sys.version.split()[0]}, fastapi {fastapi.__version__}, "
            f"uvicorn {uvicorn.__version__}, {os.cpu_count()} CPUs"
        )
        print(f"  requests            {args.requests} over {args.concurrency} connections")
        print(f"  answers             {dict(sorted(statuses.items()))}")
        if errors:
            print(f"  client errors       {errors}")
        print(f"  sending time        {sent:.2f} s")
        print(f"  accepted            {accepted / sent:.0f} requests/s")
        print(f"  sagas recorded      {total}, not completed: {left}")
        print(f"  all completed after {all_done:.2f} s (from the first POST)")
        if cpu_before is not None and cpu_after is not None and accepted:
            used = cpu_after - cpu_before
            print(
                f"  server CPU          {used:.2f} s, {used / accepted * 1000:.2f} ms per "
                "accepted request and its saga"
            )
        print(f"  server exit code    {code}")
        errors = [line for line in log.read_text().splitlines() if "Traceback" in line]
        # uvicorn >= 0.29 re-raises SIGTERM after its graceful shutdown.
        if accepted != args.requests or left or code not in (0, -signal.SIGTERM) or errors:
            print(log.read_text()[-3000:])
            raise SystemExit(1)


if __name__ == "__main__":
    main()
