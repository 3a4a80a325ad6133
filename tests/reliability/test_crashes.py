"""Process crashes: sagas across three ``sagaz worker`` processes on PostgreSQL while a
random worker is SIGKILLed every few seconds and restarted.

At the end every saga is terminal with the status its input asks for, and its history (read
back through the public storage API) is consistent: no step completed twice, only completed
steps compensated, in reverse order; a step ran again only when a recovery found it in flight.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from sagaz_reliability_sagas import RelOrderSaga
from sagaz_reliability_support import (
    Worker,
    pg_database,
    pg_problem,
    read_log,
    record,
    scaled,
    skip_or_fail,
    starts_by_step,
)

from sagaz.core import SagaConfig, SagaQuery, SagaStatus, start_saga
from sagaz.core.records import SagaRecord, TransitionKind

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

K = TransitionKind
UNFINISHED = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)
STEPS = ("reserve", "charge", "ship")


def history_problems(rec: SagaRecord, expect_failure: bool) -> list[str]:
    """What is wrong with one saga's stored history (empty when consistent)."""
    problems = []
    sid = rec.saga_id
    want = SagaStatus.COMPENSATED if expect_failure else SagaStatus.COMPLETED
    if rec.status is not want:
        problems.append(f"{sid}: {rec.status} instead of {want} (error {rec.error})")
    done = [h.step for h in rec.history if h.kind is K.STEP_COMPLETED]
    undone = [h.step for h in rec.history if h.kind is K.COMPENSATION_COMPLETED]
    for step, n in Counter(done).items():
        if n > 1:
            problems.append(f"{sid}: step {step} completed {n} times")
    for step, n in Counter(undone).items():
        if n > 1:
            problems.append(f"{sid}: step {step} compensated {n} times")
    if not set(undone) <= set(done):
        problems.append(f"{sid}: compensated {undone} but completed only {done}")
    if undone != list(reversed(done)) and expect_failure:
        problems.append(f"{sid}: completed {done}, compensated {undone} (not in reverse order)")
    if not expect_failure and (done != list(STEPS) or undone):
        problems.append(f"{sid}: completed {done}, compensated {undone}")
    return problems


def rerun_problems(lines: list, records: dict[str, SagaRecord], kind: str) -> tuple[list[str], int]:
    """A step (or compensation) that ran n > 1 times needs n - 1 recoveries that each found
    it started and not completed in the stored history. Returns (problems, re-runs)."""
    started_kind, completed_kind = {
        "action": (K.STEP_STARTED, K.STEP_COMPLETED),
        "compensate": (K.COMPENSATION_STARTED, K.COMPENSATION_COMPLETED),
    }[kind]
    problems: list[str] = []
    reruns = 0
    for (saga_id, step), starts in starts_by_step(lines, kind).items():
        if len(starts) == 1:
            continue
        reruns += len(starts) - 1
        rec = records.get(saga_id)
        if rec is None:
            problems.append(f"{saga_id}: ran {kind} {step} but is not stored")
            continue
        history = rec.history
        in_flight = 0
        for i, entry in enumerate(history):
            if entry.kind is not K.SAGA_RESUMED:
                continue
            before = history[:i]
            started = any(h.kind is started_kind and h.step == step for h in before)
            completed = any(h.kind is completed_kind and h.step == step for h in before)
            in_flight += started and not completed
        if len(starts) - 1 > in_flight:
            problems.append(
                f"{saga_id}: {kind} {step} ran {len(starts)} times (pids "
                f"{[s.pid for s in starts]}) but only {in_flight} recoveries found it in flight"
            )
    return problems, reruns


async def test_sigkilled_workers_lose_no_saga_and_rerun_only_in_flight_steps(
    tmp_path: Path,
) -> None:
    if problem := pg_problem():
        skip_or_fail(problem)
    n = scaled(1000, minimum=60)
    n_workers = 3
    rng = random.Random(10)
    log = tmp_path / "steps.log"
    with pg_database("sagaz_rel_crash") as (_, url):
        config = SagaConfig(storage_url=f"{url}?pool_max=4")
        storage = config.storage
        await storage.ensure_open()
        try:
            saga = RelOrderSaga(config=config)
            failing: set[str] = set()
            ids: list[str] = []
            for start in range(0, n, 50):
                batch = []
                for i in range(start, min(n, start + 50)):
                    fail = i % 10 == 0
                    ctx = {"order_id": f"o-{i}", "sleep": 0.25, "fail_last": fail}
                    batch.append((fail, start_saga(saga, ctx, run=False)))
                created = await asyncio.gather(*(c for _, c in batch))
                for (fail, _), (saga_id, _) in zip(batch, created, strict=True):
                    ids.append(saga_id)
                    if fail:
                        failing.add(saga_id)

            worker_url = f"{url}?pool_max=5"
            workers: list[Worker] = []
            all_workers: list[Worker] = []
            kills = 0
            in_flight_at_kills = 0

            def spawn(i: int) -> Worker:
                w = Worker(worker_url, tmp_path, log, name=f"w{len(all_workers)}", concurrency=10)
                all_workers.append(w)
                workers.insert(i, w)
                return w

            async def unfinished() -> int:
                left = await storage.list_sagas(SagaQuery(status=UNFINISHED, limit=n + 1))
                return len(left)

            began = time.monotonic()
            deadline = began + 300
            try:
                for i in range(n_workers):
                    spawn(i)
                next_kill = time.monotonic() + rng.uniform(1.0, 2.0)
                while (left := await unfinished()) > 0:
                    if time.monotonic() > deadline:
                        pytest.fail(
                            f"{left} of {n} sagas still unfinished after 300 s\n"
                            + "\n".join(w.output() for w in workers)
                        )
                    for w in workers:
                        if not w.alive():
                            pytest.fail(f"a worker exited on its own\n{w.output()}")
                    if time.monotonic() >= next_kill:
                        victim = rng.randrange(len(workers))
                        w = workers.pop(victim)
                        w.kill()
                        kills += 1
                        lines = read_log(log)
                        opened = Counter()
                        for line in lines:
                            if line.pid == w.pid:
                                opened[line.saga_id, line.step, line.kind] += (
                                    1 if line.phase == "start" else -1
                                )
                        in_flight_at_kills += sum(1 for v in opened.values() if v > 0)
                        spawn(victim)
                        next_kill = time.monotonic() + rng.uniform(1.5, 3.0)
                    await asyncio.sleep(0.2)
                took = time.monotonic() - began
                for w in workers:
                    assert w.stop() == 0, w.output()
            finally:
                for w in all_workers:
                    w.kill()

            records: dict[str, SagaRecord] = {}
            for start in range(0, n, 100):
                chunk = ids[start : start + 100]
                for saga_id, rec in zip(
                    chunk, await asyncio.gather(*(storage.load(i) for i in chunk)), strict=True
                ):
                    assert rec is not None, f"saga {saga_id} is not stored any more"
                    records[saga_id] = rec
        finally:
            await storage.close()

    problems = [p for sid, r in records.items() for p in history_problems(r, sid in failing)]
    lost = sum(1 for r in records.values() if not r.status.is_terminal)
    lines = read_log(log)
    action_problems, action_reruns = rerun_problems(lines, records, "action")
    comp_problems, comp_reruns = rerun_problems(lines, records, "compensate")
    recoveries = sum(r.recoveries for r in records.values())
    statuses = Counter(r.status.value for r in records.values())
    record(
        "crashes: 3 sagaz workers, SIGKILL",
        sagas=n,
        kills=kills,
        recoveries=recoveries,
        rerun_in_flight_steps=action_reruns + comp_reruns,
        in_flight_at_kills=in_flight_at_kills,
        statuses=dict(statuses),
        seconds=round(took, 1),
        lost=lost,
    )
    assert kills >= 2, f"only {kills} kills: the run ended before the crashes mattered"
    assert not problems, "\n".join(problems[:20])
    assert not action_problems, "\n".join(action_problems[:20])
    assert not comp_problems, "\n".join(comp_problems[:20])
    assert lost == 0
    assert recoveries > 0, "no saga was recovered: the kills never hit a running saga"
