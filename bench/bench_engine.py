"""Engine benchmark: sagas/s and CPU microseconds per saga (run on demand, not a test).

    python bench/bench_engine.py [--quick]

Cases: a 3-step saga of no-op async steps in memory, sequentially and 100 at a time;
the same with step 3 failing and two compensations; and 500 sagas durable on a
SQLite file, sequentially, every transition recorded. The "floor" column is the same
work written by hand with no library (three plain awaits; raw INSERT/UPDATE + COMMIT
of the same transitions with sqlite3), measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sagaz.core import InMemorySagaStorage, RetryPolicy, Saga, SagaConfig, SagaStatus


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def fail(ctx: dict[str, Any]) -> None:
    raise RuntimeError("declined")


def three_steps(config: SagaConfig, *, failing: bool = False) -> Saga:
    saga = Saga(name="bench-fail" if failing else "bench", config=config)
    saga.add_step("a", noop, noop).add_step("b", noop, noop)
    saga.add_step("c", fail if failing else noop)
    return saga


async def measure(n: int, batch: int, run_one: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """Return (sagas per second, CPU microseconds per saga) for n runs, batch at a time."""
    for _ in range(min(200, n)):  # warm-up
        await run_one()
    wall, cpu = time.perf_counter(), time.process_time()
    if batch == 1:
        for _ in range(n):
            await run_one()
    else:
        for _ in range(n // batch):
            await asyncio.gather(*(run_one() for _ in range(batch)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return n / wall, cpu / n * 1e6


async def floor_memory() -> None:
    await noop({})
    await noop({})
    await noop({})


def floor_sqlite(path: str, n: int) -> float:
    """Raw sqlite3: the same 4 commits per saga the engine makes, no library."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE s (id TEXT PRIMARY KEY, status TEXT, ctx TEXT, updated REAL)")
    db.execute("CREATE TABLE h (id TEXT, seq INT, kind TEXT, step TEXT, PRIMARY KEY (id, seq))")
    started = time.perf_counter()
    for i in range(n):
        sid = f"saga-{i}"
        seq = 0
        writes = [
            ("RUNNING", ["saga_started", "step_started"]),
            ("RUNNING", ["step_completed", "step_started"]),
            ("RUNNING", ["step_completed", "step_started"]),
            ("COMPLETED", ["step_completed", "saga_completed"]),
        ]
        for n_write, (status, kinds) in enumerate(writes):
            db.execute("BEGIN IMMEDIATE")
            if n_write == 0:
                db.execute("INSERT INTO s VALUES (?, ?, ?, ?)", (sid, status, json.dumps({}), 0.0))
            else:
                db.execute(
                    "UPDATE s SET status = ?, ctx = ?, updated = ? WHERE id = ?",
                    (status, json.dumps({}), time.time(), sid),
                )
            for kind in kinds:
                seq += 1
                db.execute("INSERT INTO h VALUES (?, ?, ?, ?)", (sid, seq, kind, "x"))
            db.execute("COMMIT")
    rate = n / (time.perf_counter() - started)
    db.close()
    return rate


async def main(quick: bool) -> None:
    n = 5_000 if quick else 50_000
    rows: list[tuple[str, float, float, float | None]] = []
    memory = SagaConfig(storage=InMemorySagaStorage())
    ok = three_steps(memory)
    bad = three_steps(memory, failing=True)
    floor_rate, _ = await measure(n, 1, floor_memory)
    rate, cpu = await measure(n, 1, lambda: ok.run({"order": 1}))
    rows.append(("3 no-op steps, sequential, memory", rate, cpu, floor_rate))
    rate, cpu = await measure(n, 100, lambda: ok.run({"order": 1}))
    rows.append(("3 no-op steps, 100 at a time, memory", rate, cpu, floor_rate))
    result = await bad.run({})
    assert result.status is SagaStatus.COMPENSATED
    assert result.compensated_steps == ["b", "a"]
    rate, cpu = await measure(n, 1, lambda: bad.run({"order": 1}))
    rows.append(("step 3 fails, 2 compensations, memory", rate, cpu, None))

    with tempfile.TemporaryDirectory() as tmp:
        from sagaz.core.storage.sqlite import SQLiteSagaStorage

        storage = SQLiteSagaStorage(os.path.join(tmp, "bench.db"))
        durable = three_steps(SagaConfig(storage=storage, retry=RetryPolicy()))
        try:
            rate, cpu = await measure(500, 1, lambda: durable.run({"order": 1}))
        finally:
            await storage.close()
        sqlite_floor = floor_sqlite(os.path.join(tmp, "floor.db"), 500)
        rows.append(("500 durable sagas, sequential, SQLite", rate, cpu, sqlite_floor))

    print(f"{'case':42} {'sagas/s':>10} {'CPU us/saga':>12} {'floor/s':>10} {'ratio':>6}")
    for name, rate, cpu, floor in rows:
        ratio = f"{rate / floor:6.2f}" if floor else "     -"
        floor_text = f"{floor:10.0f}" if floor else "         -"
        print(f"{name:42} {rate:10.0f} {cpu:12.1f} {floor_text} {ratio}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    asyncio.run(main(parser.parse_args().quick))
