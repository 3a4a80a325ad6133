"""Engine benchmark: sagas/s and CPU microseconds per saga (run on demand, not a test).

    python bench/bench_engine.py [--quick] [--soak [N]]

Cases: a 3-step saga of no-op async steps in memory, sequentially and 100 at a time;
the same with step 3 failing and two compensations; and 500 sagas durable on a
SQLite file, sequentially, every transition recorded. The "floor" column is the same
work written by hand with no library (three plain awaits; raw INSERT/UPDATE + COMMIT
of the same transitions with sqlite3), measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _table import Row, print_table

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


TARGET_MEMORY = 40_000.0  # three-step sagas/s in memory (issue #8)
TARGET_SQLITE = 1_000.0  # durable SQLite sagas/s (issue #8)


async def _rows(args: argparse.Namespace) -> list[Row]:
    n = 5_000 if args.quick else 50_000
    durable_n = 300 if args.quick else 1_000
    rows: list[Row] = []
    memory = SagaConfig(storage=InMemorySagaStorage())
    ok = three_steps(memory)
    bad = three_steps(memory, failing=True)
    floor_rate, _ = await measure(n, 1, floor_memory)
    floor_batch, _ = await measure(n, 100, floor_memory)
    rate, cpu = await measure(n, 1, lambda: ok.run({"order": 1}))
    rows.append(
        Row("engine", "3 no-op steps, sequential, memory", rate, floor=floor_rate, cpu_us=cpu,
            target=TARGET_MEMORY)
    )  # fmt: skip
    rate, cpu = await measure(n, 100, lambda: ok.run({"order": 1}))
    rows.append(
        Row("engine", "3 no-op steps, 100 concurrent, memory", rate, floor=floor_batch,
            cpu_us=cpu, target=TARGET_MEMORY)
    )  # fmt: skip
    result = await bad.run({})
    assert result.status is SagaStatus.COMPENSATED
    assert result.compensated_steps == ["b", "a"]
    floor_comp, _ = await measure(n, 1, floor_compensation)
    rate, cpu = await measure(n, 1, lambda: bad.run({"order": 1}))
    rows.append(
        Row("engine", "step 3 fails, 2 compensations, memory", rate, floor=floor_comp, cpu_us=cpu)
    )

    with tempfile.TemporaryDirectory() as tmp:
        from sagaz.core.storage.sqlite import SQLiteSagaStorage

        storage = SQLiteSagaStorage(os.path.join(tmp, "bench.db"))
        durable = three_steps(SagaConfig(storage=storage, retry=RetryPolicy()))
        try:
            rate, cpu = await measure(durable_n, 1, lambda: durable.run({"order": 1}))
        finally:
            await storage.close()
        sqlite_floor = floor_sqlite(os.path.join(tmp, "floor.db"), durable_n)
        rows.append(
            Row("sqlite", f"durable SQLite, sequential ({durable_n} sagas)", rate,
                floor=sqlite_floor, cpu_us=cpu, commits=4.0, target=TARGET_SQLITE,
                notes=["floor: raw sqlite3 INSERT/UPDATE + COMMIT of the same 4 writes"])
        )  # fmt: skip
    if args.soak:
        rows.append(await soak(args.soak))
    return rows


async def floor_compensation() -> None:
    """Two steps, a failing third, two compensations: plain awaits and a try."""
    await noop({})
    await noop({})
    try:
        await fail({})
    except RuntimeError:
        await noop({})
        await noop({})


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


async def soak(total: int) -> Row:
    """Run ``total`` sagas in one long-lived process the way a worker does (one storage,
    one definition, 100 in flight), sampling RSS every 10,000; report the slope."""
    gc.collect()
    storage = InMemorySagaStorage()
    saga = three_steps(SagaConfig(storage=storage))
    samples: list[tuple[int, float]] = []
    done = 0
    wall, cpu = time.perf_counter(), time.process_time()
    while done < total:
        for _ in range(100):  # 10,000 sagas, 100 at a time
            await asyncio.gather(*(saga.run({"order": done + i}) for i in range(100)))
        done += 10_000
        samples.append((done, rss_mb()))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    # Least-squares slope of RSS over sagas, after the first sample (warm-up, caches).
    points = samples[1:] if len(samples) > 2 else samples
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0
    per_100k = slope * 100_000
    trace = ", ".join(f"{y:.1f}" for _, y in samples)
    return Row(
        "soak",
        f"{total:,} sagas, 100 concurrent, memory storage",
        total / wall,
        cpu_us=cpu / total * 1e6,
        notes=[
            f"RSS MiB every 10k sagas: {trace}",
            f"slope {per_100k:+.2f} MiB per 100k sagas after the first 10k "
            f"({'flat' if abs(per_100k) < 5 else 'GROWING'}: threshold 5 MiB/100k)",
        ],
    )


def parser() -> argparse.ArgumentParser:
    """The script's options."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer iterations")
    p.add_argument(
        "--soak",
        type=int,
        nargs="?",
        const=100_000,
        default=0,
        help="also run N sagas (default 100,000) in one process, RSS sampled every 10k",
    )
    return p


def rows(args: argparse.Namespace) -> list[Row]:
    """Engine, compensation and durable-SQLite rows (and the soak row with --soak)."""
    return asyncio.run(_rows(args))


if __name__ == "__main__":
    print_table(rows(parser().parse_args()), "engine")
