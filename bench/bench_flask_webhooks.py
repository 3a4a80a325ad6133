"""Webhook throughput of sagaz-flask behind gunicorn, with SQLite storage, on loopback.

Starts ``gunicorn -w WORKERS`` (sync workers) on 127.0.0.1 with a small app (one
3-step order saga triggered by ``order_created``) and a fresh SQLite file, sends
``--requests`` webhook POSTs from ``--concurrency`` client threads, then waits until
every started saga is COMPLETED (read from the SQLite file) and stops the server.

    python bench/bench_flask_webhooks.py [--requests 2000] [--concurrency 16] [--workers 2]

Prints the accepted requests per second (202 answers over the sending time) and the
seconds from the first POST until all sagas completed. Bounded: a fixed number of
requests, a deadline for each phase, loopback only; needs gunicorn and
``sagaz-core[sqlite]`` and ``sagaz-flask`` installed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

APP = """
import asyncio
from flask import Flask
from sagaz.core import Saga, action, compensate, trigger
from sagaz.integrations.flask import SagaFlask


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


def create_app():
    app = Flask(__name__)
    sagaz = SagaFlask(app)
    sagaz.register_webhook_blueprint("/webhooks")
    return app
"""


def start_server(folder: Path, db: Path, workers: int) -> tuple[subprocess.Popen[bytes], int, Path]:
    (folder / "bench_flask_app.py").write_text(APP)
    log = folder / "gunicorn.log"
    env = {**os.environ, "SAGAZ_STORAGE_URL": f"sqlite:///{db}"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-w",
                str(workers),
                "-k",
                "sync",
                "-b",
                "127.0.0.1:0",
                "--chdir",
                str(folder),
                "--backlog",
                "2048",
                "--log-level",
                "info",
                "--graceful-timeout",
                "30",
                "bench_flask_app:create_app()",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited:\n{log.read_text()[-3000:]}")
        found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", log.read_text())
        port = int(found.group(1)) if found else 0
        if port and _get(port, "/webhooks/health") == 200:
            return proc, port, log
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("gunicorn did not answer within 30 s")


def _get(port: int, path: str) -> int:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
    except OSError:
        return 0
    return status


def post(port: int, n: int) -> int:
    body = json.dumps({"order_id": f"B-{n}", "amount": 10 + n % 50}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/webhooks/order_created", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def unfinished(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db, timeout=30) as conn:
        total, done = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(status = 'COMPLETED'), 0) FROM sagaz_sagas"
        ).fetchone()
    return int(total), int(total) - int(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds per phase")
    args = parser.parse_args()
    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 256:
        raise SystemExit("keep --requests within 1..100000 and --concurrency within 1..256")

    with tempfile.TemporaryDirectory(prefix="sagaz-bench-flask-") as tmp:
        folder = Path(tmp)
        db = folder / "sagas.db"
        proc, port, log = start_server(folder, db, args.workers)
        try:
            statuses: dict[int, int] = {}
            lock = threading.Lock()

            def one(n: int) -> None:
                try:
                    status = post(port, n)
                except OSError:
                    status = 0
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1

            start = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(one, range(args.requests)))
            sent = time.perf_counter() - start
            accepted = statuses.get(202, 0)

            deadline = time.monotonic() + args.deadline
            total, left = unfinished(db)
            while left and time.monotonic() < deadline:
                time.sleep(0.05)
                total, left = unfinished(db)
            all_done = time.perf_counter() - start
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait(10)

        print(f"sagaz-flask webhooks: gunicorn -w {args.workers} (sync), SQLite (WAL), loopback")
        print(f"  python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
        print(f"  requests            {args.requests} from {args.concurrency} client threads")
        print(f"  answers             {dict(sorted(statuses.items()))}")
        print(f"  sending time        {sent:.2f} s")
        print(f"  accepted            {accepted / sent:.0f} requests/s")
        print(f"  sagas recorded      {total}, not completed: {left}")
        print(f"  all completed after {all_done:.2f} s (from the first POST)")
        print(f"  server exit code    {code}")
        errors = [line for line in log.read_text().splitlines() if "Traceback" in line]
        if accepted != args.requests or left or code != 0 or errors:
            print(log.read_text()[-3000:])
            raise SystemExit(1)


if __name__ == "__main__":
    main()
