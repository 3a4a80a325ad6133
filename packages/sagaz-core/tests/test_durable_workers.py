"""Durable execution across processes: ``sagaz worker`` subprocesses on SQLite and PostgreSQL.

Workers are real ``sagaz worker`` processes (the console script next to this
interpreter) running :mod:`sagaz_durable_test_sagas`; their steps log every run to a
file (see that module), from which the tests check what ran where and how often:

- a worker killed with SIGKILL mid-run (forward, and while compensating): another
  worker finishes every saga, and no step (or compensation) whose completion had been
  recorded runs again;
- two and four workers split 1,000 sagas on one PostgreSQL (200 on one SQLite file)
  without running a saga twice at once;
- SIGTERM: the worker stops claiming, finishes (or releases) what it runs, and another
  worker takes over at once;
- a saga that kills its own process is parked as FAILED after ``max_recoveries``;
  ``sagaz retry`` re-drives it;
- 50 concurrent starts with one idempotency key give one saga (in one process and
  across four);
- PostgreSQL connections: at most the pool's size after 1,000 sagas, zero after close.

PostgreSQL: 127.0.0.1:5432 as ``postgres`` (``SAGAZ_TEST_POSTGRES_URL`` overrides); this
module creates its own database and drops it at the end. Without a server the PostgreSQL
cases skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sagaz.core import (
    RetryPolicy,
    SagaConfig,
    SagaQuery,
    SagaStatus,
    __version__,
    cancel_saga,
    start_saga,
)
from sagaz.core.records import SagaRecord, TransitionKind
from sagaz.core.runner import get_runner
from sagaz.core.storage.base import SagaStorage

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from sagaz_durable_test_sagas import (  # noqa: E402
    LOG_ENV,
    DurableLinearSaga,
    LogLine,
    SuicideSaga,
    Worker,
    child_env,
    count,
    interleaving_problems,
    pg_create_database,
    pg_drop_database,
    pg_reachable,
    pg_truncate,
    pg_url_for,
    read_log,
    rerun_problems,
    runs,
    sagaz_command,
    skip_or_fail,
    workers_cleanup,
)

pytestmark = pytest.mark.slow

UNFINISHED = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)
FAST_UNDO = RetryPolicy(max_attempts=1)


def report(message: str) -> None:
    """Measured figures: printed (pytest -s shows them) and appended to a report file."""
    print(f"[durable] {message}")
    path = os.environ.get("SAGAZ_DURABLE_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(message + "\n")


# --------------------------------------------------------------------------- storages


@pytest.fixture(scope="module")
def pg_database() -> Iterator[tuple[str, str]]:
    """(name, url) of this module's own PostgreSQL database, migrated; dropped after."""
    reason = pg_reachable()
    if reason:
        skip_or_fail(reason)
    name = pg_create_database("sagaz_durable_workers")
    url = pg_url_for(name)

    async def migrate() -> None:
        config = SagaConfig(storage_url=url)
        try:
            await config.storage.ensure_open()
        finally:
            await config.storage.close()

    try:
        asyncio.run(migrate())
        yield name, url
    finally:
        pg_drop_database(name)


@pytest.fixture
def pg_url(pg_database: tuple[str, str]) -> str:
    """The module database's URL, its tables emptied."""
    _, url = pg_database
    pg_truncate(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sagas.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def config(storage_url: str) -> AsyncIterator[SagaConfig]:
    """The test's own config on the storage (small pool on PostgreSQL), closed after."""
    url = storage_url + ("?pool_max=4" if storage_url.startswith("postgresql") else "")
    cfg = SagaConfig(storage_url=url, compensation_retry=FAST_UNDO)
    await cfg.storage.ensure_open()
    try:
        yield cfg
    finally:
        await cfg.storage.close()


def worker_url(storage_url: str, pool_max: int = 6) -> str:
    if storage_url.startswith("postgresql"):
        return f"{storage_url}?pool_max={pool_max}"
    return storage_url


# --------------------------------------------------------------------------- helpers


async def create_pending(
    config: SagaConfig, n: int, context: dict[str, Any], saga_cls: type = DurableLinearSaga
) -> list[str]:
    """Record ``n`` PENDING sagas (nothing runs them in this process)."""
    saga = saga_cls(config=config)
    ids: list[str] = []
    for start in range(0, n, 50):
        chunk = await asyncio.gather(
            *(start_saga(saga, dict(context), run=False) for _ in range(start, min(n, start + 50)))
        )
        ids.extend(saga_id for saga_id, created in chunk if created)
    assert len(ids) == n
    return ids


async def unfinished(storage: SagaStorage) -> int:
    return len(await storage.list_sagas(SagaQuery(status=UNFINISHED, limit=100_000)))


async def wait_until(
    check: Callable[[], Awaitable[bool] | bool],
    *,
    timeout: float,
    what: str,
    workers: list[Worker],
    interval: float = 0.1,
) -> float:
    """Poll ``check`` until true; fail (with the workers' output) on timeout or when a
    worker that should run has died. Returns the seconds waited."""
    began = time.monotonic()
    while True:
        outcome = check()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return time.monotonic() - began
        dead = [w for w in workers if not w.alive()]
        if dead:
            raise AssertionError(
                f"worker(s) {[w.name for w in dead]} exited (codes "
                f"{[w.proc.returncode for w in dead]}) while waiting for {what}\n"
                + "\n".join(w.output() for w in dead)
            )
        if time.monotonic() - began > timeout:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}\n"
                + "\n".join(w.output() for w in workers)
            )
        await asyncio.sleep(interval)


async def load_all(storage: SagaStorage, ids: list[str]) -> dict[str, SagaRecord]:
    records: dict[str, SagaRecord] = {}
    for start in range(0, len(ids), 50):
        chunk = ids[start : start + 50]
        loaded = await asyncio.gather(*(storage.load(i) for i in chunk))
        for saga_id, record in zip(chunk, loaded, strict=True):
            assert record is not None, saga_id
            records[saga_id] = record
    return records


def stopped_stats(worker: Worker) -> dict[str, int]:
    """The WorkerStats a stopped worker printed."""
    text = worker.err_path.read_text(errors="replace")
    found = re.search(r"sagaz worker stopped: WorkerStats\(([^)]*)\)", text)
    assert found, f"no stats printed\n{worker.output()}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", found.group(1))}


def in_flight(lines: list[LogLine], pid: int, kind: str) -> list[tuple[str, str]]:
    """(saga, step) of ``kind`` that ``pid`` started and never finished."""
    open_runs: dict[tuple[str, str], int] = Counter()
    for line in lines:
        if line.pid != pid or line.kind != kind:
            continue
        key = (line.saga_id, line.step)
        open_runs[key] += 1 if line.phase == "start" else -1
    return [key for key, n in open_runs.items() if n > 0]


# --------------------------------------------------------------------------- python -m


def test_python_dash_m_runs_the_cli() -> None:
    """``python -m sagaz.core.cli`` must run the CLI (the worker docs and process
    managers use it), not import the module and exit silently."""
    done = subprocess.run(
        [sys.executable, "-m", "sagaz.core.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert done.returncode == 0, done.stderr
    assert __version__ in done.stdout, (
        f"`python -m sagaz.core.cli --version` printed {done.stdout!r} (stderr "
        f"{done.stderr!r}); cli.py has no `if __name__ == '__main__': main()`"
    )


# --------------------------------------------------------------------------- 1. crashes


async def test_a_killed_worker_s_sagas_are_finished_by_another_without_rerunning_steps(
    storage_url: str, config: SagaConfig, tmp_path: Path
) -> None:
    n = 200
    log = tmp_path / "run.log"
    storage = config.storage
    ids = await create_pending(config, n, {"sleep": 0.05})
    url = worker_url(storage_url)
    with workers_cleanup() as started:
        a = Worker(url, tmp_path, log, name="worker-a", lease_seconds=1, concurrency=20)
        started.append(a)
        await wait_until(
            lambda: count(read_log(log), kind="action", phase="end", step="c") >= 40,
            timeout=60,
            what="worker A to complete 40 sagas",
            workers=[a],
        )
        a.kill()
        assert a.proc.returncode == -9
        at_kill = read_log(log)
        flying = in_flight(at_kill, a.pid, "action")
        killed_at = time.monotonic()
        b = Worker(url, tmp_path, log, name="worker-b", lease_seconds=1, concurrency=50)
        started.append(b)
        await wait_until(
            lambda: _none_unfinished(storage),
            timeout=90,
            what="worker B to finish every saga",
            workers=[b],
            interval=0.2,
        )
        took = time.monotonic() - killed_at
        assert b.stop() == 0, b.output()

    records = await load_all(storage, ids)
    statuses = Counter(r.status for r in records.values())
    assert statuses == {SagaStatus.COMPLETED: n}, statuses
    lines = read_log(log)
    done_c = {line.saga_id for line in lines if line.step == "c" and line.phase == "end"}
    assert done_c == set(ids)
    problems, reruns = rerun_problems(lines, records, "action")
    assert not problems, "\n".join(problems[:10])
    assert flying, "the kill landed between steps: nothing was in flight"
    recovered = [r for r in records.values() if r.recoveries]
    # Every saga with a step in flight at the kill was recovered (resumed) once.
    assert {s for s, _ in flying} <= {r.saga_id for r in recovered}
    assert all(r.recoveries == 1 for r in recovered)
    touched_by_b = {line.saga_id for line in lines if line.pid == b.pid}
    assert {r.saga_id for r in recovered} <= touched_by_b
    report(
        f"crash/forward {storage_url.split(':')[0]}: {n} sagas, 1 SIGKILL with "
        f"{len(flying)} steps in flight, {len(recovered)} sagas recovered, {reruns} step "
        f"re-runs (all in flight at the kill), worker B finished in {took:.1f}s"
    )


async def _none_unfinished(storage: SagaStorage) -> bool:
    return not await storage.list_sagas(SagaQuery(status=UNFINISHED, limit=1))


async def test_a_worker_killed_while_compensating_leaves_every_saga_compensated(
    storage_url: str, config: SagaConfig, tmp_path: Path
) -> None:
    n = 100
    log = tmp_path / "run.log"
    storage = config.storage
    ids: list[str] = []
    for i in range(5):  # compensations of 0.1 to 0.3 s, so the sagas drift apart
        ctx = {"sleep": 0.01, "comp_sleep": 0.1 + 0.05 * i, "fail_last": True}
        ids += await create_pending(config, n // 5, ctx)
    url = worker_url(storage_url)

    def compensating() -> bool:
        lines = read_log(log)
        done = count(lines, kind="compensate", phase="end")
        return done >= 30 and bool(in_flight(lines, a.pid, "compensate"))

    with workers_cleanup() as started:
        a = Worker(url, tmp_path, log, name="worker-a", lease_seconds=1, concurrency=25)
        started.append(a)
        await wait_until(
            compensating,
            timeout=60,
            what="worker A to complete 30 compensations and run more",
            workers=[a],
            interval=0.01,
        )
        a.kill()
        at_kill = read_log(log)
        flying = in_flight(at_kill, a.pid, "compensate")
        b = Worker(url, tmp_path, log, name="worker-b", lease_seconds=1, concurrency=50)
        started.append(b)
        await wait_until(
            lambda: _none_unfinished(storage),
            timeout=90,
            what="worker B to finish every saga",
            workers=[b],
            interval=0.2,
        )
        assert b.stop() == 0, b.output()

    records = await load_all(storage, ids)
    statuses = Counter(r.status for r in records.values())
    assert statuses == {SagaStatus.COMPENSATED: n}, statuses
    lines = read_log(log)
    for step in ("a", "b"):
        undone = {
            line.saga_id
            for line in lines
            if line.kind == "compensate" and line.step == step and line.phase == "end"
        }
        assert undone == set(ids), f"compensation of {step} missing"
    problems, comp_reruns = rerun_problems(lines, records, "compensate")
    action_problems, action_reruns = rerun_problems(lines, records, "action")
    assert not problems + action_problems, "\n".join((problems + action_problems)[:10])
    assert flying, "the kill landed between compensations: nothing was in flight"
    recovered = [r for r in records.values() if r.recoveries]
    assert {s for s, _ in flying} <= {r.saga_id for r in recovered}
    for record in recovered:
        if record.saga_id in {s for s, _ in flying}:
            kinds = [h.kind for h in record.history]
            resumed = kinds.index(TransitionKind.SAGA_RESUMED)
            assert TransitionKind.SAGA_COMPENSATING in kinds[:resumed]
    report(
        f"crash/compensation {storage_url.split(':')[0]}: {n} sagas, 1 SIGKILL with "
        f"{len(flying)} compensations in flight, {len(recovered)} sagas recovered, "
        f"{comp_reruns} compensation re-runs and {action_reruns} step re-runs (all in "
        "flight at the kill)"
    )


# --------------------------------------------------------------------------- 2. scale


@pytest.mark.parametrize(
    ("backend", "n_workers", "n_sagas"),
    [
        pytest.param("postgres", 2, 1000, marks=pytest.mark.postgres, id="postgres-2x1000"),
        pytest.param("postgres", 4, 1000, marks=pytest.mark.postgres, id="postgres-4x1000"),
        pytest.param("sqlite", 2, 200, id="sqlite-2x200"),
    ],
)
async def test_workers_split_sagas_without_running_one_twice(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, n_workers: int, n_sagas: int
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'sagas.db'}"
        own = SagaConfig(storage_url=url)
    else:
        url = request.getfixturevalue("pg_url")
        own = SagaConfig(storage_url=url + "?pool_max=4")
    log = tmp_path / "run.log"
    storage = own.storage
    try:
        ids = await create_pending(own, n_sagas, {})
        with workers_cleanup() as started:
            began = time.monotonic()
            for i in range(n_workers):
                started.append(
                    Worker(
                        worker_url(url, pool_max=6),
                        tmp_path,
                        log,
                        name=f"worker-{i}",
                        concurrency=25,
                        poll_interval=0.05,
                    )
                )
            await wait_until(
                lambda: _none_unfinished(storage),
                timeout=120,
                what=f"{n_workers} workers to finish {n_sagas} sagas",
                workers=started,
                interval=0.1,
            )
            wall = time.monotonic() - began
            for worker in started:
                assert worker.stop() == 0, worker.output()
        records = await load_all(storage, ids)
    finally:
        await storage.close()

    statuses = Counter(r.status for r in records.values())
    assert statuses == {SagaStatus.COMPLETED: n_sagas}, statuses
    lines = read_log(log)
    problems = interleaving_problems(lines, "action")
    assert not problems, "\n".join(problems[:10])
    starts = runs(lines, "action")
    assert set(starts) == {(i, s) for i in ids for s in ("a", "b", "c")}
    twice = {key: v for key, v in starts.items() if len(v) != 1}
    assert not twice, f"{len(twice)} steps ran more than once: {list(twice.items())[:3]}"
    per_pid: dict[int, set[str]] = defaultdict(set)
    for line in lines:
        per_pid[line.pid].add(line.saga_id)
    if n_sagas >= 1000:
        # A long enough run for every worker to take a share (with 200 short SQLite
        # sagas the first worker up may finish them all before the next one starts).
        assert len(per_pid) == n_workers, f"not every worker ran sagas: {per_pid.keys()}"
    # One saga, one worker (nobody died, so nobody took a saga over).
    owners = defaultdict(set)
    for line in lines:
        owners[line.saga_id].add(line.pid)
    assert all(len(p) == 1 for p in owners.values())
    span = max(line.at for line in lines) - min(line.at for line in lines)
    split = sorted(len(s) for s in per_pid.values())
    report(
        f"scale {backend}: {n_workers} workers, {n_sagas} sagas in {wall:.1f}s wall "
        f"(from launch) = {n_sagas / wall:.0f} sagas/s; first to last step {span:.1f}s = "
        f"{n_sagas / span:.0f} sagas/s; split {split}"
    )


# --------------------------------------------------------------------------- 3. SIGTERM


async def test_sigterm_lets_running_sagas_finish_and_stops_claiming(
    storage_url: str, config: SagaConfig, tmp_path: Path
) -> None:
    n = 30
    log = tmp_path / "run.log"
    storage = config.storage
    ids = await create_pending(config, n, {"sleep": 0.3})
    url = worker_url(storage_url)
    with workers_cleanup() as started:
        a = Worker(url, tmp_path, log, name="worker-a", concurrency=5, grace_period=10)
        started.append(a)
        await wait_until(
            lambda: count(read_log(log), kind="action", phase="start", step="a") >= 5,
            timeout=60,
            what="worker A to start 5 sagas",
            workers=[a],
            interval=0.02,
        )
        term_at = time.time()
        begun_before_term = {line.saga_id for line in read_log(log) if line.pid == a.pid}
        a.terminate()
        try:
            a.proc.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker A did not stop within its grace period\n{a.output()}")
        stopped_in = time.time() - term_at
        assert a.proc.returncode == 0, a.output()
        stats = stopped_stats(a)
        lines = read_log(log)
        mine = {line.saga_id for line in lines if line.pid == a.pid}
        # Every saga A had begun finished within the grace period, by A.
        finished_by_a = {
            line.saga_id
            for line in lines
            if line.pid == a.pid and line.step == "c" and line.phase == "end"
        }
        assert mine == finished_by_a
        assert stats["claimed"] == stats["completed"] == len(mine), stats
        # It stopped claiming: at most the claim under way when the signal came (one
        # batch of at most `concurrency`) began after it, where a worker that went on
        # claiming would have run all 30 within its 10 s grace period.
        assert len(mine - begun_before_term) <= 5, (len(mine), len(begun_before_term))
        left = await unfinished(storage)
        assert left == n - len(mine) > 0
        b = Worker(url, tmp_path, log, name="worker-b", concurrency=25)
        started.append(b)
        waited = await wait_until(
            lambda: _none_unfinished(storage),
            timeout=20,
            what="worker B to finish the rest",
            workers=[b],
        )
        assert b.stop() == 0, b.output()
    records = await load_all(storage, ids)
    assert Counter(r.status for r in records.values()) == {SagaStatus.COMPLETED: n}
    assert all(r.recoveries == 0 for r in records.values())
    report(
        f"sigterm/finish {storage_url.split(':')[0]}: A finished its {len(mine)} sagas and "
        f"stopped in {stopped_in:.1f}s; B finished the other {left} in {waited:.1f}s"
    )


async def test_sigterm_releases_the_leases_of_sagas_it_cannot_finish(
    storage_url: str, config: SagaConfig, tmp_path: Path
) -> None:
    """Grace period shorter than the steps: A cancels them and releases their leases,
    so B (leases of 30 s) resumes them at once instead of after the lease expires."""
    n = 6
    log = tmp_path / "run.log"
    storage = config.storage
    ids = await create_pending(config, n, {"sleep": 1.0})
    url = worker_url(storage_url)
    with workers_cleanup() as started:
        a = Worker(
            url, tmp_path, log, name="worker-a", concurrency=3, grace_period=0.2, lease_seconds=30
        )
        started.append(a)
        await wait_until(
            lambda: count(read_log(log), kind="action", phase="start", step="a") >= 3,
            timeout=60,
            what="worker A to start 3 sagas",
            workers=[a],
            interval=0.02,
        )
        a.terminate()
        try:
            a.proc.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker A did not stop after its grace period\n{a.output()}")
        assert a.proc.returncode == 0, a.output()
        stats = stopped_stats(a)
        interrupted = {line.saga_id for line in read_log(log) if line.pid == a.pid}
        assert len(interrupted) == 3
        for saga_id in interrupted:
            record = await storage.load(saga_id)
            assert record is not None
            assert record.status is SagaStatus.RUNNING
            assert record.lease_owner is None, f"lease of {saga_id} kept by {record.lease_owner}"
        assert stats["released"] >= 3, stats
        b = Worker(url, tmp_path, log, name="worker-b", concurrency=10, lease_seconds=30)
        started.append(b)
        waited = await wait_until(
            lambda: _none_unfinished(storage),
            timeout=20,
            what="worker B to finish (leases of 30 s must have been released)",
            workers=[b],
        )
        assert b.stop() == 0, b.output()
    records = await load_all(storage, ids)
    assert Counter(r.status for r in records.values()) == {SagaStatus.COMPLETED: n}
    report(
        f"sigterm/release {storage_url.split(':')[0]}: A released {stats['released']} leases; "
        f"B finished all {n} in {waited:.1f}s (lease 30s)"
    )


# --------------------------------------------------------------------------- 4. recoveries


async def _run_suicide_workers(
    url: str,
    storage: SagaStorage,
    saga_id: str,
    tmp_path: Path,
    log: Path,
    *,
    max_launches: int,
    env: dict[str, str] | None = None,
) -> tuple[int, SagaRecord]:
    """Launch workers one after the other until the saga is FAILED; (crashes, record)."""
    crashes = 0
    with workers_cleanup() as started:
        for launch in range(max_launches):
            worker = Worker(
                url,
                tmp_path,
                log,
                name=f"worker-{launch}",
                lease_seconds=0.5,
                poll_interval=0.05,
                env=env,
            )
            started.append(worker)
            deadline = time.monotonic() + 30
            while True:
                record = await storage.load(saga_id)
                assert record is not None
                if record.status is SagaStatus.FAILED:
                    assert worker.stop() == 0, worker.output()
                    return crashes, record
                if not worker.alive():
                    assert worker.proc.returncode == 3, worker.output()
                    crashes += 1
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"worker {launch} neither crashed nor parked\n{worker.output()}")
                await asyncio.sleep(0.05)
    record = await storage.load(saga_id)
    assert record is not None
    return crashes, record


async def test_a_saga_that_keeps_killing_its_worker_is_parked_then_retried(
    storage_url: str, config: SagaConfig, tmp_path: Path
) -> None:
    log = tmp_path / "run.log"
    crash_file = tmp_path / "crash"
    crash_file.touch()
    storage = config.storage
    (saga_id,) = await create_pending(config, 1, {"crash_file": str(crash_file)}, SuicideSaga)
    url = worker_url(storage_url)
    max_recoveries = SagaConfig().max_recoveries
    crashes, record = await _run_suicide_workers(
        url, storage, saga_id, tmp_path, log, max_launches=max_recoveries + 3
    )
    assert record.status is SagaStatus.FAILED, (crashes, record.status)
    # The first run plus one per recovery crashed; the next claim parked it.
    assert crashes == max_recoveries + 1
    assert record.recoveries == max_recoveries
    assert record.error is not None
    assert f"max_recoveries={max_recoveries}" in record.error
    assert f"sagaz retry {saga_id}" in record.error
    assert record.lease_owner is None
    lines = read_log(log)
    assert count(lines, kind="action", phase="start", step="prepare") == 1
    assert count(lines, kind="action", phase="start", step="boom") == crashes

    crash_file.unlink()
    retried = subprocess.run(
        [
            *sagaz_command(),
            "--storage-url",
            url,
            "retry",
            saga_id,
            "--module",
            "sagaz_durable_test_sagas",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=child_env(log),
    )
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert f"saga {saga_id}: COMPLETED" in retried.stdout
    final = await storage.load(saga_id)
    assert final is not None
    assert final.status is SagaStatus.COMPLETED
    assert final.context["survived"] is True
    lines = read_log(log)
    assert count(lines, kind="action", phase="start", step="prepare") == 1
    assert count(lines, kind="action", phase="end", step="boom") == 1
    report(
        f"recovery-limit {storage_url.split(':')[0]}: {crashes} worker crashes, parked after "
        f"{record.recoveries} recoveries; sagaz retry completed it"
    )


async def test_the_worker_reads_max_recoveries_from_the_environment(tmp_path: Path) -> None:
    """SAGAZ_MAX_RECOVERIES (listed in ENVIRONMENT_VARIABLES) must reach ``sagaz worker``."""
    url = f"sqlite:///{tmp_path / 'sagas.db'}"
    config = SagaConfig(storage_url=url)
    log = tmp_path / "run.log"
    crash_file = tmp_path / "crash"
    crash_file.touch()
    try:
        (saga_id,) = await create_pending(config, 1, {"crash_file": str(crash_file)}, SuicideSaga)
        crashes, record = await _run_suicide_workers(
            url,
            config.storage,
            saga_id,
            tmp_path,
            log,
            max_launches=3,
            env={"SAGAZ_MAX_RECOVERIES": "1"},
        )
    finally:
        await config.storage.close()
    assert record.status is SagaStatus.FAILED, (
        f"after {crashes} crashes the saga is {record.status} with {record.recoveries} "
        "recoveries: `sagaz worker` ignored SAGAZ_MAX_RECOVERIES=1"
    )
    assert crashes == 2
    assert "max_recoveries=1" in (record.error or "")


# --------------------------------------------------------------------------- 5. idempotency


async def test_concurrent_starts_with_one_key_give_one_saga(
    config: SagaConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "run.log"
    monkeypatch.setenv(LOG_ENV, str(log))
    saga = DurableLinearSaga(config=config)
    results = await asyncio.wait_for(
        asyncio.gather(*(saga.run({"sleep": 0.05}, idempotency_key="order-42") for _ in range(50))),
        60,
    )
    ids = {r.saga_id for r in results}
    assert len(ids) == 1
    assert sum(r.created for r in results) == 1
    (saga_id,) = ids
    recorded = await config.storage.list_sagas(SagaQuery(saga_name="durable-linear"))
    assert [r.saga_id for r in recorded] == [saga_id]
    record = await config.storage.load(saga_id)
    assert record is not None
    assert record.status is SagaStatus.COMPLETED
    starts = runs(read_log(log), "action")
    assert {k: len(v) for k, v in starts.items()} == {(saga_id, s): 1 for s in ("a", "b", "c")}


async def test_concurrent_starts_with_one_key_across_four_processes_give_one_saga(
    storage_url: str, config: SagaConfig, tmp_path: Path
) -> None:
    log = tmp_path / "run.log"
    go = tmp_path / "go"
    key = "order-across-processes"
    url = worker_url(storage_url, pool_max=4)
    procs = []
    try:
        for n in (13, 13, 12, 12):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(TESTS_DIR / "sagaz_durable_test_sagas.py"),
                        "idem",
                        url,
                        key,
                        str(n),
                        str(go),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    cwd=tmp_path,
                    env=child_env(log),
                )
            )
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("go.ready.*"))) < len(procs):  # storages open
            assert all(p.poll() is None for p in procs), [p.returncode for p in procs]
            assert time.monotonic() < deadline, "the children did not get ready"
            await asyncio.sleep(0.02)
        go.touch()
        outputs: list[dict[str, Any]] = []
        for proc in procs:
            out, err = await asyncio.to_thread(proc.communicate, timeout=60)
            assert proc.returncode == 0, err
            outputs.extend(json.loads(line) for line in out.splitlines() if line.strip())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    assert len(outputs) == 50
    ids = {o["saga_id"] for o in outputs}
    assert len(ids) == 1, ids
    assert sum(o["created"] for o in outputs) == 1
    (saga_id,) = ids
    recorded = await config.storage.list_sagas(SagaQuery(saga_name="durable-linear"))
    assert [r.saga_id for r in recorded] == [saga_id]
    starts = runs(read_log(log), "action")
    assert {k: len(v) for k, v in starts.items()} == {(saga_id, s): 1 for s in ("a", "b", "c")}


# --------------------------------------------------------------------------- 7. connections


@pytest.mark.postgres
async def test_postgres_connections_stay_within_the_pool_and_close(
    pg_database: tuple[str, str], pg_url: str
) -> None:
    import psycopg

    name, _ = pg_database
    pool_max = 5
    config = SagaConfig(storage_url=f"{pg_url}?pool_max={pool_max}", compensation_retry=FAST_UNDO)
    storage = config.storage
    saga = DurableLinearSaga(config=config)
    from sagaz_durable_test_sagas import ADMIN_URL

    admin = await psycopg.AsyncConnection.connect(ADMIN_URL, autocommit=True)
    peak = 0
    sampling = True

    async def connections() -> int:
        cur = await admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, await connections())
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        sem = asyncio.Semaphore(50)

        async def one(ctx: dict[str, Any]) -> SagaStatus:
            async with sem:
                return (await saga.run(ctx)).status

        began = time.monotonic()
        plain = [one({}) for _ in range(850)]
        failing = [one({"fail_last": True}) for _ in range(100)]
        statuses = Counter(await asyncio.wait_for(asyncio.gather(*plain, *failing), 120))
        assert statuses == {SagaStatus.COMPLETED: 850, SagaStatus.COMPENSATED: 100}
        # 25 cancelled before they ran, 25 cancelled while running in this process.
        pending = [await start_saga(saga, {}, run=False) for _ in range(25)]
        cancelled = [await cancel_saga(saga_id, config) for saga_id, _ in pending]
        assert Counter(cancelled) == {SagaStatus.COMPENSATED: 25}
        running = [await start_saga(saga, {"sleep": 0.3}) for _ in range(25)]
        await asyncio.sleep(0.1)
        for saga_id, _ in running:
            await cancel_saga(saga_id, config)
        await asyncio.wait_for(get_runner().drain(), 30)
        for saga_id, _ in running:
            record = await storage.load(saga_id)
            assert record is not None
            assert record.status is SagaStatus.COMPENSATED, record
        elapsed = time.monotonic() - began
        sampling = False
        await sampler
        after_run = await connections()
        assert after_run <= pool_max, f"{after_run} connections open, pool_max={pool_max}"
        assert peak <= pool_max, f"peak of {peak} connections, pool_max={pool_max}"
        await storage.close()
        deadline = time.monotonic() + 5
        while (left := await connections()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert left == 0, f"{left} connections still open after storage.close()"
        report(
            f"connections postgres: 1000 sagas in-process in {elapsed:.1f}s; peak {peak}, "
            f"{after_run} after the run (pool_max={pool_max}), {left} after close"
        )
    finally:
        sampling = False
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        await storage.close()
        await admin.close()
