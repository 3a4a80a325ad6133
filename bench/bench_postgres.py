"""Throughput of the PostgreSQL storage backend, driven by the real engine.

Runs ``--sagas`` sagas of 3 no-op steps, durable on PostgreSQL, ``--concurrency`` in
flight (``asyncio.gather`` under a semaphore), and reports, for each way of writing:

* **engine**: ``Saga(...).add_step(...)`` x3 ``.run()`` with
  ``SagaConfig(storage=PostgresSagaStorage(...))``. The engine calls ``create_saga``
  once and ``record`` three times per saga (it merges "step N completed" with "step N+1
  started" into one write);
* **storage**: the same four calls made directly on the storage (no engine);
* **floor (pipelined)**: the same rows written by hand with psycopg, raw INSERT/UPDATE +
  COMMIT, four transactions per saga, each sent as one pipeline (one round trip);
* **floor (naive)**: the same, awaiting each statement (BEGIN, ..., COMMIT) in turn.

Figures: sagas/s (best of ``--repeat``, and the median); commits per saga, counted by
the server (``pg_stat_database.xact_commit``; a separate pass, see :func:`commits_per_saga`);
statements per saga, counted in this process (every statement psycopg sends; for the
storage each is also one round trip); CPU per saga of this process and of the PostgreSQL
backends serving it (read from ``/proc``, so only for a server on this machine); and the
CPU ceiling, the rate those CPU costs allow on this machine when nothing else runs on it
(``cpus / (python + postgres)``, at most ``1 / python``: one Python thread). On a busy
machine the measured rate falls far below the ceiling; the CPU figures move much less.

Each run uses a fresh database, created on the server of ``--url`` and dropped at the end.

    python bench/bench_postgres.py [--url postgresql://postgres@127.0.0.1/test]
        [--sagas 1000] [--concurrency 32] [--pool 8] [--repeat 3] [--outbox]
        [--workloads engine,storage,floor,naive] [--uvloop] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from _services import PG_URL
from _table import Row, print_table
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from sagaz.core import Saga, SagaConfig
from sagaz.core.records import NewSaga, Transition, TransitionKind
from sagaz.core.status import SagaStatus
from sagaz.core.storage.postgres import PostgresSagaStorage

K = TransitionKind
WARMUP = 200


# --------------------------------------------------------------------------- counting


class StatementCounter:
    """Counts the statements psycopg's async cursors send from this process."""

    def __init__(self) -> None:
        self.count = 0
        self._original: Any = None

    def install(self) -> None:
        original = self._original = psycopg.AsyncCursor.execute
        counter = self

        async def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
            counter.count += 1
            return await original(self, *args, **kwargs)

        psycopg.AsyncCursor.execute = execute  # type: ignore[method-assign]


STATEMENTS = StatementCounter()
_HZ = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of a local process, None if not visible."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _HZ


class Server:
    """The admin connection: creates the scratch database and reads statistics."""

    def __init__(self, url: str) -> None:
        self.admin_url = make_conninfo(url)
        self.dbname = f"sagaz_bench_{uuid.uuid4().hex[:10]}"
        self.url = make_conninfo(url, dbname=self.dbname)

    async def _one(self, query: Any, params: Any = None) -> Any:
        async with await psycopg.AsyncConnection.connect(self.admin_url, autocommit=True) as c:
            cur = await c.execute(query, params)
            return await cur.fetchall() if cur.description else None

    @contextlib.asynccontextmanager
    async def database(self) -> AsyncIterator[None]:
        name = sql.Identifier(self.dbname)
        await self._one(sql.SQL("CREATE DATABASE {}").format(name))
        try:
            async with PostgresSagaStorage(self.url) as storage:
                await storage.migrate()
            yield
        finally:
            await self._one(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))

    async def backends(self) -> list[int]:
        rows = await self._one(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.dbname,)
        )
        return [r[0] for r in rows]

    async def commits(self) -> int:
        """Committed transactions of the database, once its backends have exited."""
        for _ in range(100):
            if not await self.backends():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.6)  # exited backends' statistics reach the cumulative view
        rows = await self._one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (self.dbname,)
        )
        return int(rows[0][0])


# --------------------------------------------------------------------------- the workloads


async def noop(ctx: dict[str, Any]) -> None:
    """A step that does nothing."""


async def gather_limited(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> None:
    semaphore = asyncio.Semaphore(concurrency)

    async def guarded(i: int) -> None:
        async with semaphore:
            await one(i)

    await asyncio.gather(*(guarded(i) for i in range(n)))


class Workload:
    """One way of writing sagas: ``open``, ``run(n, tag)`` any number of times, ``close``."""

    label = ""

    def __init__(self, args: argparse.Namespace, url: str) -> None:
        self.args = args
        self.url = url

    async def open(self) -> None:
        raise NotImplementedError

    async def run(self, n: int, tag: str) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class EngineWorkload(Workload):
    label = "engine (PostgresSagaStorage)"

    async def open(self) -> None:
        pool = self.args.pool
        self.storage = PostgresSagaStorage(
            self.url, pool_min=pool, pool_max=pool, migrate_on_open=False
        )
        await self.storage.ensure_open()
        config = SagaConfig(storage=self.storage, outbox=self.args.outbox)
        self.saga = (
            Saga(name="BenchSaga", config=config)
            .add_step("reserve", noop)
            .add_step("charge", noop)
            .add_step("ship", noop)
        )

    async def run(self, n: int, tag: str) -> None:
        async def one(i: int) -> None:
            result = await self.saga.run(
                {"order_id": i, "amount": 42.5}, idempotency_key=f"{tag}{i}"
            )
            assert result.status is SagaStatus.COMPLETED, result

        await gather_limited(n, self.args.concurrency, one)

    async def close(self) -> None:
        await self.storage.close()


class StorageWorkload(EngineWorkload):
    label = "storage calls, no engine"

    async def run(self, n: int, tag: str) -> None:
        storage = self.storage

        async def one(i: int) -> None:
            saga_id = str(uuid.uuid4())
            context = {"order_id": i, "amount": 42.5}
            _, created = await storage.create_saga(
                NewSaga(saga_id, "BenchSaga", context, SagaStatus.RUNNING, None, f"{tag}{i}"),
                [Transition(K.SAGA_STARTED), Transition(K.STEP_STARTED, "reserve", 1)],
            )
            assert created
            prev = "reserve"
            for step in ("charge", "ship"):
                await storage.record(
                    saga_id,
                    [Transition(K.STEP_COMPLETED, prev, 1), Transition(K.STEP_STARTED, step, 1)],
                )
                prev = step
            await storage.record(
                saga_id, [Transition(K.STEP_COMPLETED, "ship", 1), Transition(K.SAGA_COMPLETED)]
            )

        await gather_limited(n, self.args.concurrency, one)


_F_SAGA = """INSERT INTO sagaz_sagas (saga_id, saga_name, status, context, idempotency_key,
    created_at, updated_at, lease_owner, lease_expires_at, history_seq)
VALUES (%s, 'FloorSaga', 'RUNNING', %s::jsonb, %s, %s, %s, 'floor', %s, 2)"""
_F_HISTORY = """INSERT INTO sagaz_history (saga_id, seq, at, kind, step, attempt)
VALUES (%s, %s, %s, %s, %s, %s), (%s, %s, %s, %s, %s, %s)"""
_F_STEP_START = """INSERT INTO sagaz_steps (saga_id, name, ord, status, attempts, started_at)
VALUES (%s, %s, %s, 'RUNNING', 1, %s)"""
_F_STEP_DONE = """UPDATE sagaz_steps SET status = 'COMPLETED', finished_at = %s
WHERE saga_id = %s AND name = %s"""
_F_SAGA_UPDATE = """UPDATE sagaz_sagas SET updated_at = %s, lease_expires_at = %s,
    history_seq = history_seq + 2 WHERE saga_id = %s AND lease_owner = 'floor'"""
_F_SAGA_DONE = """UPDATE sagaz_sagas SET status = 'COMPLETED', updated_at = %s,
    lease_owner = NULL, lease_expires_at = NULL, history_seq = history_seq + 2
WHERE saga_id = %s AND lease_owner = 'floor'"""

_Tx = list[tuple[str, tuple[Any, ...]]]


def floor_transactions(i: int, tag: str) -> list[Callable[[], _Tx]]:
    """The rows of one saga, as the engine's four writes: four transactions."""
    sid = str(uuid.uuid4())

    def lines(seq: int, now: float, *entries: tuple[str, str | None, int]) -> tuple[Any, ...]:
        """Two history lines, from ``seq + 1`` on."""
        (k1, s1, a1), (k2, s2, a2) = entries
        return (sid, seq + 1, now, k1, s1, a1, sid, seq + 2, now, k2, s2, a2)

    def first() -> _Tx:
        now = time.time()
        context = json.dumps({"order_id": i, "amount": 42.5})
        started = lines(0, now, ("saga_started", None, 0), ("step_started", "reserve", 1))
        return [
            (_F_SAGA, (sid, context, f"{tag}{i}", now, now, now + 30)),
            (_F_HISTORY, started),
            (_F_STEP_START, (sid, "reserve", 2, now)),
        ]

    def middle(seq: int, prev: str, step: str) -> Callable[[], _Tx]:
        def tx() -> _Tx:
            now = time.time()
            moved = lines(seq, now, ("step_completed", prev, 1), ("step_started", step, 1))
            return [
                (_F_STEP_DONE, (now, sid, prev)),
                (_F_STEP_START, (sid, step, seq + 2, now)),
                (_F_HISTORY, moved),
                (_F_SAGA_UPDATE, (now, now + 30, sid)),
            ]

        return tx

    def last() -> _Tx:
        now = time.time()
        done = lines(6, now, ("step_completed", "ship", 1), ("saga_completed", None, 0))
        return [
            (_F_STEP_DONE, (now, sid, "ship")),
            (_F_HISTORY, done),
            (_F_SAGA_DONE, (now, sid)),
        ]

    return [first, middle(2, "reserve", "charge"), middle(4, "charge", "ship"), last]


class FloorWorkload(Workload):
    label = "floor (hand-written, pipelined)"
    pipelined = True

    async def open(self) -> None:
        pool = self.args.pool
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            self.url, min_size=pool, max_size=pool, kwargs={"autocommit": True}, open=False
        )
        await self.pool.open(wait=True)

    async def _transact(self, statements: _Tx) -> None:
        async with self.pool.connection() as conn:
            if self.pipelined:
                async with conn.pipeline(), conn.transaction():
                    for query, params in statements:
                        await conn.execute(query, params)
            else:
                async with conn.transaction():
                    for query, params in statements:
                        await conn.execute(query, params)

    async def run(self, n: int, tag: str) -> None:
        async def one(i: int) -> None:
            for tx in floor_transactions(i, tag):
                await self._transact(tx())

        await gather_limited(n, self.args.concurrency, one)

    async def close(self) -> None:
        await self.pool.close()


class NaiveFloorWorkload(FloorWorkload):
    label = "floor (hand-written, naive)"
    pipelined = False


# --------------------------------------------------------------------------- measuring


@dataclass
class Run:
    rate: float
    statements: float
    python_cpu_ms: float
    postgres_cpu_ms: float | None


async def timed_run(server: Server, workload: Workload, tag: str) -> Run:
    """Open, warm up, run ``--sagas`` sagas (measured), close."""
    n = workload.args.sagas
    await workload.open()
    try:
        await workload.run(WARMUP, f"{tag}w")
        pids = await server.backends()
        before = [_proc_cpu(pid) for pid in pids]
        statements = STATEMENTS.count
        cpu = time.process_time()
        start = time.perf_counter()
        await workload.run(n, tag)
        elapsed = time.perf_counter() - start
        python_cpu = time.process_time() - cpu
        statements = STATEMENTS.count - statements
        after = [_proc_cpu(pid) for pid in pids]
    finally:
        await workload.close()
    postgres_cpu: float | None = 0.0
    for a, b in zip(after, before, strict=True):
        if a is None or b is None or postgres_cpu is None:
            postgres_cpu = None
        else:
            postgres_cpu += a - b
    return Run(
        n / elapsed,
        statements / n,
        python_cpu / n * 1000,
        None if postgres_cpu is None else postgres_cpu / n * 1000,
    )


async def commits_per_saga(server: Server, workload: Workload, tag: str) -> float:
    """Commits per saga, counted by the server: the difference of two sessions, one
    that only warms up and one that warms up and then writes ``--sagas`` sagas, so
    connecting, configuring and preparing statements cancel out."""
    counts = []
    for n in (0, workload.args.sagas):
        before = await server.commits()
        await workload.open()
        try:
            await workload.run(WARMUP, f"{tag}{n}w")
            if n:
                await workload.run(n, f"{tag}{n}")
        finally:
            await workload.close()
        counts.append(await server.commits() - before)
    sagas: int = workload.args.sagas
    return (counts[1] - counts[0]) / sagas


TARGET = 1_200.0  # sagas/s, 32 in flight (issue #8)


async def _rows(args: argparse.Namespace) -> list[Row]:
    """Measure every workload, print the detailed table, return the summary rows."""
    if args.quick:
        args.sagas, args.repeat = min(args.sagas, 500), 1
    server = Server(args.url)
    STATEMENTS.install()
    results: dict[str, tuple[float, float, Run]] = {}
    async with server.database():
        print(
            f"{args.sagas} sagas x 3 no-op steps, {args.concurrency} in flight, "
            f"pool of {args.pool} connections, outbox {'on' if args.outbox else 'off'}, "
            f"best of {args.repeat} (median in brackets), "
            f"{'uvloop' if args.uvloop else 'asyncio'} event loop, load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
        print(
            f"{'':34} {'sagas/s':>16} {'commits':>8} {'statements':>10} "
            f"{'python CPU':>11} {'postgres CPU':>13} {'CPU ceiling':>12}"
        )
        print(
            f"{'':34} {'':>16} {'/saga':>8} {'/saga':>10} {'ms/saga':>11} {'ms/saga':>13} "
            f"{'sagas/s':>12}"
        )
        kinds = {
            "engine": EngineWorkload,
            "storage": StorageWorkload,
            "floor": FloorWorkload,
            "naive": NaiveFloorWorkload,
        }
        for number, name in enumerate(args.workloads.split(",")):
            workload = kinds[name](args, server.url)
            runs = [
                await timed_run(server, workload, f"m{number}r{r}-") for r in range(args.repeat)
            ]
            commits = await commits_per_saga(server, workload, f"m{number}c-")
            best = max(runs, key=lambda r: r.rate)
            median = statistics.median(r.rate for r in runs)
            # CPU figures of the least disturbed run: the one that used the least CPU.
            calm = min(runs, key=lambda r: r.python_cpu_ms + (r.postgres_cpu_ms or 0.0))
            results[name] = (best.rate, commits, calm)
            pg, ceiling = "n/a", "n/a"
            if calm.postgres_cpu_ms is not None:
                pg = f"{calm.postgres_cpu_ms:.2f}"
                total = calm.python_cpu_ms + calm.postgres_cpu_ms
                cpus = os.cpu_count() or 1
                ceiling = f"{min(cpus * 1000 / total, 1000 / calm.python_cpu_ms):.0f}"
            print(
                f"{workload.label:34} {best.rate:7.0f} ({median:6.0f}) {commits:8.2f} "
                f"{best.statements:10.2f} {calm.python_cpu_ms:11.2f} {pg:>13} {ceiling:>12}"
            )
    floors = [results[k][0] for k in ("floor", "naive") if k in results]
    rows = []
    for name, label in (("engine", "engine"), ("storage", "storage calls, no engine")):
        if name not in results:
            continue
        rate, commits, calm = results[name]
        notes = []
        if calm.postgres_cpu_ms is not None:
            notes.append(
                f"CPU per saga: python {calm.python_cpu_ms:.2f} ms + postgres "
                f"{calm.postgres_cpu_ms:.2f} ms"
            )
        rows.append(
            Row("postgres", f"durable PostgreSQL, {args.concurrency} in flight, {label}", rate,
                floor=max(floors) if floors else None, cpu_us=calm.python_cpu_ms * 1000,
                commits=commits, target=TARGET if name == "engine" else None, notes=notes)
        )  # fmt: skip
    return rows


def rows(args: argparse.Namespace) -> list[Row]:
    """Summary rows (engine, storage) with the best hand-written floor as their floor."""
    if args.uvloop:
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        result: list[Row] = uvloop.run(_rows(args))
        return result
    return asyncio.run(_rows(args))


def parser() -> argparse.ArgumentParser:
    """The script's options."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 sagas, one run")
    parser.add_argument("--url", default=PG_URL)
    parser.add_argument("--sagas", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--pool", type=int, default=8, help="pooled connections")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--outbox", action="store_true", help="also write saga events")
    parser.add_argument(
        "--uvloop", action="store_true", help="run on uvloop's event loop (pip install uvloop)"
    )
    parser.add_argument(
        "--workloads",
        default="engine,storage,floor,naive",
        help="comma-separated, of: engine, storage, floor, naive",
    )
    return parser


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    return parser().parse_args()


if __name__ == "__main__":
    print_table(rows(parse_args()), "durable PostgreSQL")
