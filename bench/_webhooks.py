"""The harness the three webhook benchmarks share.

One server process (the plugin's app behind its real server) serves two routes:
the plugin's webhook route, and a *floor* route: a bare endpoint of the same framework
that does by hand, with raw SQL, the same durable work a webhook causes in Sagaz, inline
before answering 202: the event and the saga row (one commit), then the saga's four
transitions (saga+step 1 started; step 1 done+step 2 started; ...; step 3 done+saga
completed), one commit each: five commits per webhook, as the library makes.

Each route gets a warm-up, then ``requests`` POSTs over ``concurrency`` keep-alive
connections (:mod:`_http_load`); then the harness waits until every saga is terminal
(read from the database) and reads the server's CPU (the process tree: gunicorn's workers
too).
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _http_load import LoadResult, post_load
from _services import cpu_seconds, stop
from _table import Row

__all__ = ["FLOOR_CODE", "FLOOR_SCHEMA", "SAGA_CODE", "Phase", "create_floor_schema", "measure"]

#: The saga every plugin's app runs: three steps triggered by ``order_created``.
SAGA_CODE = """
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
        return {"tracking_id": "T-" + ctx["order_id"]}
"""

FLOOR_SCHEMA = [
    "CREATE TABLE floor_events (id TEXT PRIMARY KEY, source TEXT NOT NULL, payload TEXT,"
    " correlation_id TEXT, at DOUBLE PRECISION)",
    "CREATE TABLE floor_sagas (id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL,"
    " context TEXT, idem TEXT UNIQUE, updated DOUBLE PRECISION)",
    "CREATE TABLE floor_history (saga_id TEXT, seq INTEGER, kind TEXT, step TEXT,"
    " at DOUBLE PRECISION, PRIMARY KEY (saga_id, seq))",
]

#: Hand-written, no library: the same five commits per webhook (``%s`` placeholders;
#: ``transactions`` builds them, ``write_sqlite`` / ``write_pg`` run them on a
#: per-thread connection).
FLOOR_CODE = '''
import json, threading, time, uuid

_local = threading.local()
_H = "INSERT INTO floor_history VALUES (%s, %s, %s, %s, %s), (%s, %s, %s, %s, %s)"
_U = "UPDATE floor_sagas SET status = %s, context = %s, updated = %s WHERE id = %s"


def transactions(payload):
    """The five transactions of one webhook: [[(sql, params), ...], ...]."""
    if not isinstance(payload, dict) or "order_id" not in payload:
        return None
    sid, now = str(uuid.uuid4()), time.time()
    ctx = {"order_id": payload["order_id"], "amount": payload.get("amount")}
    txs = [[
        ("INSERT INTO floor_events VALUES (%s, %s, %s, %s, %s)",
         (str(uuid.uuid4()), "order_created", json.dumps(payload), None, now)),
        ("INSERT INTO floor_sagas VALUES (%s, %s, %s, %s, %s, %s)",
         (sid, "bench-order", "PENDING", json.dumps(ctx), payload["order_id"], now)),
    ]]
    steps = [("reserve_inventory", "reservation_id", "R-"), ("charge_payment", "payment_id", "P-"),
             ("ship_order", "tracking_id", "T-")]
    seq = 0
    prev = None
    for name, key, tag in steps + [(None, None, None)]:
        first = ("saga_started", None) if prev is None else ("step_completed", prev)
        second = ("saga_completed", None) if name is None else ("step_started", name)
        status = "COMPLETED" if name is None else "RUNNING"
        txs.append([
            (_U, (status, json.dumps(ctx), time.time(), sid)),
            (_H, (sid, seq + 1, first[0], first[1], now, sid, seq + 2, second[0], second[1], now)),
        ])
        seq += 2
        if name is not None:
            ctx[key] = tag + str(payload["order_id"])
        prev = name
    return sid, txs


def write_sqlite(path, txs):
    db = getattr(_local, "sqlite", None)
    if db is None:
        db = _local.sqlite = __import__("sqlite3").connect(path, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
    for tx in txs:
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in tx:
                db.execute(sql.replace("%s", "?"), params)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def write_pg(url, txs):
    conn = getattr(_local, "pg", None)
    if conn is None:
        conn = _local.pg = __import__("psycopg").connect(url)
    for tx in txs:
        with conn.transaction():
            for sql, params in tx:
                conn.execute(sql, params)
'''


def create_floor_schema(db: str) -> None:
    """Create the floor's tables in ``db`` (a SQLite path or a PostgreSQL URL)."""
    if db.startswith("postgresql"):
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            for statement in FLOOR_SCHEMA:
                conn.execute(statement)
        return
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        for statement in FLOOR_SCHEMA:
            conn.execute(statement)


def count_terminal(db: str, table: str) -> tuple[int, int]:
    """(sagas recorded, sagas terminal) in ``table`` of ``db``."""
    query = (
        f"SELECT COUNT(*), COALESCE(SUM(CASE WHEN status IN ('COMPLETED', 'COMPENSATED',"
        f" 'FAILED') THEN 1 ELSE 0 END), 0) FROM {table}"
    )
    if db.startswith("postgresql"):
        import psycopg

        with psycopg.connect(db, autocommit=True) as conn:
            row = conn.execute(query).fetchone()
    else:
        with sqlite3.connect(db, timeout=30) as conn:
            row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@dataclass
class Phase:
    """One route's measurement."""

    load: LoadResult
    terminal_s: float
    cpu_s: float | None
    recorded: int
    left: int


def _body(tag: str) -> Callable[[int], dict[str, object]]:
    return lambda n: {"order_id": f"{tag}-{n}", "amount": 10 + n % 50}


def _phase(
    proc: subprocess.Popen[bytes],
    port: int,
    path: str,
    db: str,
    table: str,
    tag: str,
    requests: int,
    concurrency: int,
    deadline: float,
) -> Phase:
    total_before, _ = count_terminal(db, table)
    cpu = cpu_seconds(proc.pid)
    started = time.perf_counter()
    load = post_load(
        port, path, _body(tag), requests=requests, concurrency=concurrency, deadline=deadline
    )
    limit = time.monotonic() + deadline
    recorded, done = count_terminal(db, table)
    while done < recorded and time.monotonic() < limit:
        time.sleep(0.05)
        recorded, done = count_terminal(db, table)
    terminal = time.perf_counter() - started
    cpu_after = cpu_seconds(proc.pid)
    used = None if cpu is None or cpu_after is None else cpu_after - cpu
    return Phase(load, terminal, used, recorded - total_before, recorded - done)


def measure(
    *,
    group: str,
    case: str,
    proc: subprocess.Popen[bytes],
    port: int,
    library_path: str,
    library_db: str,
    library_table: str,
    floor_path: str,
    floor_db: str,
    requests: int,
    concurrency: int,
    deadline: float,
    log: Path,
    target: float | None = None,
    warmup: int = 100,
) -> Row:
    """Warm up and measure both routes of a running server, stop it, return the row."""
    try:
        for path, db, table in (
            (library_path, library_db, library_table),
            (floor_path, floor_db, "floor_sagas"),
        ):
            _phase(proc, port, path, db, table, "warm", warmup, concurrency, deadline)
        lib = _phase(
            proc,
            port,
            library_path,
            library_db,
            library_table,
            "lib",
            requests,
            concurrency,
            deadline,
        )
        floor = _phase(
            proc,
            port,
            floor_path,
            floor_db,
            "floor_sagas",
            "floor",
            requests,
            concurrency,
            deadline,
        )
    finally:
        code = stop(proc)
    notes = []
    for name, phase in (("library", lib), ("floor", floor)):
        if phase.load.count(202) != requests or phase.left or phase.load.errors:
            notes.append(
                f"{name}: answers {dict(sorted(phase.load.statuses.items()))}, errors "
                f"{phase.load.errors}, {phase.left} of {phase.recorded} sagas not terminal"
            )
    text = log.read_text(errors="replace")
    if tracebacks := text.count("Traceback"):
        last = text[text.rfind("Traceback") :].strip().splitlines()
        notes.append(f"{tracebacks} traceback(s) in the server log, the last ends: {last[-1]}")
    if code not in (0, -15):
        notes.append(f"server exit code {code}")
    accepted = lib.load.count(202)
    return Row(
        group,
        case,
        lib.load.rate(),
        "accepted/s",
        floor.load.rate(),
        cpu_us=None if lib.cpu_s is None or not accepted else lib.cpu_s / accepted * 1e6,
        p50_ms=lib.load.p(50),
        p99_ms=lib.load.p(99),
        terminal_s=lib.terminal_s,
        floor_terminal_s=floor.terminal_s,
        target=target,
        notes=notes,
    )
