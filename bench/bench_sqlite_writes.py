"""Write throughput of the SQLite storage backend, as the engine drives it.

Each saga is one ``create_saga`` and four ``record`` calls (a 3-step saga: started +
step 1 started; step 1 completed + step 2 started; ...; step 3 completed + saga
completed), awaited one after the other, every one a durable transaction (WAL,
synchronous=NORMAL) in a fresh file.

    python bench/bench_sqlite_writes.py [--sagas 500] [--concurrency 1] [--portable]

``--concurrency N`` runs N sagas at a time (each still sequential inside);
``--portable`` uses the driver that needs only aiosqlite's public API (one thread hop
per statement instead of one per call). The machine's load moves these figures a lot:
compare runs made at the same time, best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from sagaz.core.records import NewSaga, SagaQuery, Transition, TransitionKind
from sagaz.core.status import SagaStatus
from sagaz.core.storage.sqlite import SQLiteSagaStorage

K = TransitionKind
CALLS_PER_SAGA = 5


async def one_saga(storage: SQLiteSagaStorage, n: int) -> None:
    """Record one 3-step saga the way the engine does: 1 create + 4 record calls."""
    context = {"order_id": f"order-{n}", "amount": 42.5, "items": [1, 2, 3]}
    saga_id, _ = await storage.create_saga(
        NewSaga(
            uuid.uuid4().hex,
            "OrderSaga",
            context,
            SagaStatus.RUNNING,  # as the engine creates it: leased to this process
            idempotency_key=f"key-{n}",
        )
    )
    await storage.record(
        saga_id,
        [Transition(K.SAGA_STARTED), Transition(K.STEP_STARTED, "reserve", attempt=1)],
    )
    prev = "reserve"
    for step in ("charge", "ship"):
        result = {f"{prev}_id": uuid.uuid4().hex}
        context.update(result)
        await storage.record(
            saga_id,
            [
                Transition(K.STEP_COMPLETED, prev, attempt=1, result=result),
                Transition(K.STEP_STARTED, step, attempt=1),
            ],
            context,
        )
        prev = step
    result = {"ship_id": uuid.uuid4().hex}
    context.update(result)
    await storage.record(
        saga_id,
        [
            Transition(K.STEP_COMPLETED, "ship", attempt=1, result=result),
            Transition(K.SAGA_COMPLETED),
        ],
        context,
    )


class PortableSQLiteSagaStorage(SQLiteSagaStorage):
    """The driver used when aiosqlite lacks the fast driver's hook."""

    _fast_driver = False


async def run(sagas: int, concurrency: int, portable: bool, path: Path) -> tuple[float, float]:
    """Write ``sagas`` sagas to ``path``; return (elapsed seconds, CPU seconds)."""
    storage = (PortableSQLiteSagaStorage if portable else SQLiteSagaStorage)(path)
    await storage.ensure_open()
    semaphore = asyncio.Semaphore(concurrency)

    async def guarded(n: int) -> None:
        async with semaphore:
            await one_saga(storage, n)

    start, cpu = time.perf_counter(), time.process_time()
    if concurrency == 1:
        for n in range(sagas):
            await one_saga(storage, n)
    else:
        await asyncio.gather(*(guarded(n) for n in range(sagas)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    done = await storage.list_sagas(SagaQuery(limit=sagas))
    assert len(done) == sagas
    assert all(r.status is SagaStatus.COMPLETED for r in done)
    await storage.close()
    return elapsed, cpu


def main() -> None:
    """Parse arguments, run the benchmark, print sagas/s, calls/s and CPU per saga."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sagas", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--portable", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    best = float("inf")
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            elapsed, cpu = asyncio.run(
                run(args.sagas, args.concurrency, args.portable, Path(tmp) / "bench.db")
            )
        best = min(best, elapsed)
        print(
            f"{args.sagas} sagas in {elapsed:.3f}s: {args.sagas / elapsed:,.0f} sagas/s, "
            f"{args.sagas * CALLS_PER_SAGA / elapsed:,.0f} calls/s, "
            f"CPU {cpu / args.sagas * 1e6:,.0f} us/saga"
        )
    driver = "portable" if args.portable else "fast"
    print(
        f"best of {args.repeat}: {args.sagas / best:,.0f} sagas/s "
        f"(driver={driver}, concurrency={args.concurrency})"
    )


if __name__ == "__main__":
    main()
