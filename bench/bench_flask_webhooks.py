"""Webhook ingest of sagaz-flask behind gunicorn, on SQLite and PostgreSQL, on loopback.

Starts ``gunicorn -w WORKERS`` (sync workers; the sagas run in process on each worker's
portal loop) with a small app: one 3-step order saga triggered by ``order_created`` and
``register_webhook_blueprint``; and a floor route, a bare Flask view doing the same five
commits by hand (see ``_webhooks.py``). Sends ``--requests`` POSTs over ``--concurrency``
connections to each (sync workers close every connection: the client reconnects), waits
until every saga is terminal, stops the server.

    python bench/bench_flask_webhooks.py [--quick] [--requests 2000] [--concurrency 16]
        [--workers 2] [--storage sqlite,postgres]

Needs gunicorn, ``sagaz-core[sqlite,postgres]`` and ``sagaz-flask``; PostgreSQL
(``SAGAZ_BENCH_PG_URL``) gets a scratch database, dropped afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from _services import pg_reachable, scratch_pg_database, stop, wait_http
from _table import Row, print_table
from _webhooks import FLOOR_CODE, SAGA_CODE, create_floor_schema, measure

APP = (
    SAGA_CODE
    + FLOOR_CODE
    + """
import os
from flask import Flask, jsonify, request
from sagaz.integrations.flask import SagaFlask

FLOOR_DB = os.environ["FLOOR_DB"]
_write = write_pg if FLOOR_DB.startswith("postgresql") else write_sqlite


def create_app():
    app = Flask(__name__)
    sagaz = SagaFlask(app)
    sagaz.register_webhook_blueprint("/webhooks")

    @app.post("/floor/order_created")
    def floor():
        made = transactions(request.get_json(silent=True))
        if made is None:
            return jsonify({"error": "bad payload"}), 400
        sid, txs = made
        _write(FLOOR_DB, txs)
        return jsonify({"status": "accepted", "saga_ids": [sid]}), 202

    return app
"""
)


@contextlib.contextmanager
def _databases(storage: str, folder: Path) -> Iterator[tuple[str, str, str]]:
    """(sagaz storage URL, the library's database, the floor's database)."""
    if storage == "sqlite":
        floor = str(folder / "floor.db")
        create_floor_schema(floor)
        yield f"sqlite:///{folder / 'sagas.db'}", str(folder / "sagas.db"), floor
        return
    with scratch_pg_database() as url:
        create_floor_schema(url)
        yield url, url, url


def one(storage: str, args: argparse.Namespace) -> Row:
    """Measure one storage: start gunicorn, load both routes, stop it."""
    with tempfile.TemporaryDirectory(prefix="sagaz-bench-flask-") as tmp:
        folder = Path(tmp)
        (folder / "bench_flask_app.py").write_text(APP)
        with _databases(storage, folder) as (storage_url, library_db, floor_db):
            log = folder / "gunicorn.log"
            env = {**os.environ, "SAGAZ_STORAGE_URL": storage_url, "FLOOR_DB": floor_db}
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [
                        sys.executable, "-m", "gunicorn", "-w", str(args.workers), "-k", "sync",
                        "-b", "127.0.0.1:0", "--chdir", str(folder), "--backlog", "2048",
                        "--log-level", "info", "--graceful-timeout", "30",
                        "bench_flask_app:create_app()",
                    ],
                    env=env, stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            port = 0
            deadline = time.monotonic() + 30
            while not port and time.monotonic() < deadline and proc.poll() is None:
                found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", log.read_text())
                port = int(found.group(1)) if found else 0
                time.sleep(0.1)
            if not port:
                stop(proc)
                raise SystemExit(f"gunicorn did not start:\n{log.read_text()[-3000:]}")
            wait_http(proc, f"http://127.0.0.1:{port}/webhooks/health", log)
            name = "PostgreSQL" if storage == "postgres" else "SQLite"
            return measure(
                group="webhooks",
                case=f"Flask/gunicorn -w {args.workers}, {name}",
                proc=proc,
                port=port,
                library_path="/webhooks/order_created",
                library_db=library_db,
                library_table="sagaz_sagas",
                floor_path="/floor/order_created",
                floor_db=floor_db,
                requests=args.requests,
                concurrency=args.concurrency,
                deadline=args.deadline,
                log=log,
            )


def parser() -> argparse.ArgumentParser:
    """The script's options."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="500 requests instead of 2,000")
    p.add_argument("--requests", type=int, default=None, help="POSTs per route (2000)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--storage", default="sqlite,postgres", help="sqlite, postgres or both")
    p.add_argument("--deadline", type=float, default=300.0, help="seconds per phase")
    return p


def rows(args: argparse.Namespace) -> list[Row]:
    """One row per storage."""
    if args.requests is None:
        args.requests = 500 if args.quick else 2000
    out: list[Row] = []
    for storage in args.storage.split(","):
        if storage == "postgres" and (why := pg_reachable()):
            out.append(Row("webhooks", "Flask/gunicorn, PostgreSQL", None, notes=[why]))
            continue
        out.append(one(storage, args))
    return out


if __name__ == "__main__":
    print_table(rows(parser().parse_args()), "sagaz-flask webhook ingest")
