"""Webhook ingest of sagaz-fastapi behind uvicorn, on SQLite and PostgreSQL, on loopback.

Starts ``uvicorn`` (one process: the application's lifespan owns the storage and runs the
sagas in process) with a small app: one 3-step order saga triggered by ``order_created``,
SagaContextMiddleware and the webhook router; and a floor route, a bare FastAPI endpoint
doing the same five commits by hand (see ``_webhooks.py``). Sends ``--requests`` POSTs
over ``--concurrency`` keep-alive connections to each, waits until every saga is
terminal, stops the server with SIGTERM.

    python bench/bench_fastapi_webhooks.py [--quick] [--requests 2000] [--concurrency 32]
        [--storage sqlite,postgres]

Prints accepted requests/s, p50/p99 latency, seconds until all sagas are terminal, the
server's CPU per request, each beside the floor's. Needs uvicorn, ``sagaz-core[sqlite,
postgres]`` and ``sagaz-fastapi``; PostgreSQL (``SAGAZ_BENCH_PG_URL``, default
postgres@127.0.0.1:5432/test) gets a scratch database, dropped afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from _services import free_port, pg_reachable, scratch_pg_database, wait_http
from _table import Row, print_table
from _webhooks import FLOOR_CODE, SAGA_CODE, create_floor_schema, measure

APP = (
    SAGA_CODE
    + FLOOR_CODE
    + """
import os
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from sagaz.core import SagaConfig
from sagaz.integrations.fastapi import (
    SagaContextMiddleware, create_lifespan, create_webhook_router,
)

FLOOR_DB = os.environ["FLOOR_DB"]
_write = write_pg if FLOOR_DB.startswith("postgresql") else write_sqlite

app = FastAPI(lifespan=create_lifespan(SagaConfig.from_env(), shutdown_grace=30))
app.add_middleware(SagaContextMiddleware)
app.include_router(create_webhook_router())


@app.post("/floor/order_created")
async def floor(request: Request):
    try:
        made = transactions(await request.json())
    except ValueError:
        made = None
    if made is None:
        return JSONResponse({"error": "bad payload"}, status_code=400)
    sid, txs = made
    await run_in_threadpool(_write, FLOOR_DB, txs)
    return JSONResponse({"status": "accepted", "saga_ids": [sid]}, status_code=202)
"""
)

TARGET_PG = 1000.0  # accepted requests/s, FastAPI on uvicorn with PostgreSQL (issue #8)


@contextlib.contextmanager
def _databases(storage: str, folder: Path) -> Iterator[tuple[str, str]]:
    """(sagaz storage URL, floor database) for ``storage``."""
    if storage == "sqlite":
        floor = str(folder / "floor.db")
        create_floor_schema(floor)
        yield f"sqlite:///{folder / 'sagas.db'}", floor
        return
    with scratch_pg_database() as url:
        create_floor_schema(url)
        yield url, url


def one(storage: str, args: argparse.Namespace) -> Row:
    """Measure one storage: start uvicorn, load both routes, stop it."""
    with tempfile.TemporaryDirectory(prefix="sagaz-bench-fastapi-") as tmp:
        folder = Path(tmp)
        (folder / "bench_fastapi_app.py").write_text(APP)
        with _databases(storage, folder) as (storage_url, floor_db):
            port = free_port()
            log = folder / "uvicorn.log"
            env = {**os.environ, "SAGAZ_STORAGE_URL": storage_url, "FLOOR_DB": floor_db}
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [
                        sys.executable, "-m", "uvicorn", "bench_fastapi_app:app",
                        "--app-dir", str(folder), "--host", "127.0.0.1", "--port", str(port),
                        "--backlog", "2048", "--no-access-log", "--log-level", "warning",
                    ],
                    cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            wait_http(proc, f"http://127.0.0.1:{port}/webhooks/health", log)
            library_db = storage_url if storage == "postgres" else str(folder / "sagas.db")
            return measure(
                group="webhooks",
                case=f"FastAPI/uvicorn, {'PostgreSQL' if storage == 'postgres' else 'SQLite'}",
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
                target=TARGET_PG if storage == "postgres" else None,
            )


def parser() -> argparse.ArgumentParser:
    """The script's options."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="500 requests instead of 2,000")
    p.add_argument("--requests", type=int, default=None, help="POSTs per route (2000)")
    p.add_argument("--concurrency", type=int, default=32)
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
            out.append(Row("webhooks", "FastAPI/uvicorn, PostgreSQL", None, notes=[why]))
            continue
        out.append(one(storage, args))
    return out


if __name__ == "__main__":
    print_table(rows(parser().parse_args()), "sagaz-fastapi webhook ingest")
