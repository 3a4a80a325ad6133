"""Webhook throughput of sagaz-django behind gunicorn, with PostgreSQL storage, on loopback.

Writes a small Django project (one 3-step order saga triggered by ``order_created``) to a
temporary folder, creates a fresh PostgreSQL database on ``--pg-host`` (dropped at the end),
runs ``manage.py migrate``, starts ``gunicorn -w WORKERS --threads THREADS`` (WSGI: the sync
views, sagas run in process on each worker's portal loop) on 127.0.0.1, sends ``--requests``
webhook POSTs from ``--concurrency`` client threads (keep-alive connections), then waits until
every started saga is COMPLETED (read from PostgreSQL) and stops the server.

    python bench/bench_django_webhooks.py [--requests 2000] [--concurrency 16] [--workers 2]
        [--threads 8] [--conn-max-age 60] [--pg-host 127.0.0.1] [--pg-user postgres]

Prints the accepted requests per second (202 answers over the sending time), the seconds
from the first POST until all sagas completed, and the server's connections to the database
afterwards. Bounded: a fixed number of requests, a deadline for each phase, loopback only;
needs gunicorn, psycopg, Django, ``sagaz-core`` and ``sagaz-django`` installed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg

SETTINGS = """
import os
DATABASES = {{"default": {{
    "ENGINE": "django.db.backends.postgresql", "NAME": {db!r}, "USER": {user!r},
    "HOST": {host!r}, "PORT": {port!r}, "CONN_MAX_AGE": {max_age},
}}}}
SECRET_KEY = "bench-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "benchproject.urls"
INSTALLED_APPS = ["django.contrib.contenttypes", "sagaz.integrations.django", "benchapp"]
MIDDLEWARE = ["sagaz.integrations.django.middleware.SagaContextMiddleware"]
SAGAZ = {{"RUN_IN_PROCESS": {run}}}
"""

URLS = """
from django.urls import include, path
urlpatterns = [path("sagaz/", include("sagaz.integrations.django.urls"))]
"""

SAGAS = """
from sagaz.core import Saga, action, compensate, trigger


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
        return {"shipment_id": "S-" + ctx["order_id"]}
"""


def _write_project(root: Path, db: str, args: argparse.Namespace) -> None:
    (root / "benchproject").mkdir()
    (root / "benchproject" / "__init__.py").write_text("")
    (root / "benchproject" / "settings.py").write_text(
        SETTINGS.format(
            db=db,
            user=args.pg_user,
            host=args.pg_host,
            port=str(args.pg_port),
            max_age=args.conn_max_age,
            run=not args.no_run,
        )
    )
    (root / "benchproject" / "urls.py").write_text(URLS)
    (root / "benchproject" / "wsgi.py").write_text(
        "from django.core.wsgi import get_wsgi_application\napplication = get_wsgi_application()\n"
    )
    (root / "benchapp").mkdir()
    (root / "benchapp" / "__init__.py").write_text("")
    (root / "benchapp" / "sagas.py").write_text(SAGAS)


def _admin(args: argparse.Namespace) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host=args.pg_host, port=args.pg_port, user=args.pg_user, dbname="postgres", autocommit=True
    )


def _count(args: argparse.Namespace, db: str, sql: str) -> int:
    with psycopg.connect(
        host=args.pg_host, port=args.pg_port, user=args.pg_user, dbname=db, autocommit=True
    ) as conn:
        row = conn.execute(sql).fetchone()
    return int(row[0]) if row else 0  # type: ignore[call-overload]


def _wait_http(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/sagaz/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("gunicorn did not answer in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--conn-max-age", type=int, default=60)
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument(
        "--no-run",
        action="store_true",
        help="RUN_IN_PROCESS=False: only accept and record (no worker runs the sagas here)",
    )
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds per phase")
    args = parser.parse_args()
    args.requests = max(1, min(args.requests, 100_000))

    db = f"bench_sagaz_django_{os.getpid()}"
    with _admin(args) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    proc: subprocess.Popen[bytes] | None = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            _write_project(root, db, args)
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join([tmp, os.environ.get("PYTHONPATH", "")]),
                "DJANGO_SETTINGS_MODULE": "benchproject.settings",
            }
            subprocess.run(
                [sys.executable, "-m", "django", "migrate", "-v", "0"], env=env, check=True, cwd=tmp
            )
            port = 18000 + os.getpid() % 1000
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gunicorn",
                    "benchproject.wsgi:application",
                    "--bind",
                    f"127.0.0.1:{port}",
                    "--workers",
                    str(args.workers),
                    "--threads",
                    str(args.threads),
                    "--log-level",
                    "warning",
                ],
                env=env,
                cwd=tmp,
            )
            _wait_http(port, time.monotonic() + 60)

            local = threading.local()
            accepted: list[str] = []
            lock = threading.Lock()

            def post(i: int) -> None:
                conn = getattr(local, "conn", None)
                if conn is None:
                    conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                body = json.dumps({"order_id": f"{uuid.uuid4()}", "amount": i})
                conn.request(
                    "POST", "/sagaz/order_created", body, {"Content-Type": "application/json"}
                )
                response = conn.getresponse()
                data = response.read()
                if response.status != 202:
                    raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
                with lock:
                    accepted.extend(json.loads(data)["saga_ids"])

            started = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(post, range(args.requests)))
            sent = time.perf_counter() - started
            deadline = time.monotonic() + (0 if args.no_run else args.deadline)
            done = 0
            while time.monotonic() < deadline:
                done = _count(
                    args, db, "SELECT count(*) FROM sagaz_saga WHERE status = 'COMPLETED'"
                )
                if done >= len(accepted):
                    break
                time.sleep(0.2)
            finished = time.perf_counter() - started
            server_conns = _count(
                args,
                db,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()",
            )
            print(
                f"sagaz-django webhooks, gunicorn -w {args.workers} --threads {args.threads}, "
                f"PostgreSQL, CONN_MAX_AGE={args.conn_max_age}, {args.concurrency} clients, "
                f"RUN_IN_PROCESS={not args.no_run}, load average {os.getloadavg()[0]:.1f}"
            )
            print(
                f"  {len(accepted)} accepted in {sent:.2f}s: {len(accepted) / sent:.0f} req/s "
                f"({sent / len(accepted) * 1000:.1f} ms each at {args.concurrency} in flight)"
            )
            if not args.no_run:
                print(
                    f"  {done}/{len(accepted)} sagas COMPLETED {finished:.2f}s after the first "
                    f"POST ({done / finished:.0f} sagas/s end to end)"
                )
            print(f"  server connections to the database afterwards: {server_conns}")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        with _admin(args) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


if __name__ == "__main__":
    main()
