"""Running recorded sagas in this process: start without waiting, resume by id.

:func:`start_saga` records a saga as PENDING and returns its id at once (for web
handlers); the :class:`InProcessRunner` of the running event loop then runs it, and
:func:`resume_saga` continues any recorded saga by finding its definition by name.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sagaz.core.config import SagaConfig, get_config
from sagaz.core.context import current_correlation_id
from sagaz.core.engine import check_json
from sagaz.core.errors import SagaNotFoundError
from sagaz.core.records import NewSaga, SagaQuery, SagaRecord
from sagaz.core.registry import registry
from sagaz.core.result import SagaResult
from sagaz.core.status import SagaStatus

if TYPE_CHECKING:
    from sagaz.core.saga import Saga

__all__ = ["InProcessRunner", "get_runner", "recover_unfinished", "resume_saga", "start_saga"]

logger = logging.getLogger("sagaz.runner")


class InProcessRunner:
    """Runs recorded sagas as tasks on one event loop and keeps them referenced.

    Use :func:`get_runner` for the running loop's runner; :meth:`drain` waits for
    what was submitted, :meth:`shutdown` cancels it (the sagas stay recorded as
    RUNNING or PENDING, so a worker or the next start-up resumes them).
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[SagaResult]] = set()
        self._by_id: dict[str, asyncio.Task[SagaResult]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def submit(self, saga: Saga, saga_id: str) -> asyncio.Task[SagaResult]:
        """Run the recorded saga ``saga_id`` with ``saga``'s definition in the background.

        The saga is claimed (leased to this process) and loaded first, as
        :meth:`~sagaz.core.Saga.resume` does. Submitting a saga that is already running
        here returns its running task.
        """
        return self._start(saga, saga_id, None)

    def submit_created(self, saga: Saga, new: NewSaga) -> asyncio.Task[SagaResult]:
        """Run a saga this process has just created with ``new.leased`` (so it holds the
        lease already) from ``new`` itself: no claim, no load.

        Only for a saga the storage reported as created (``created=True``); a duplicate
        was not leased to this process and must be left alone.
        """
        if not new.leased:
            raise ValueError(
                f"submit_created() needs a saga created with NewSaga(leased=True); saga "
                f"{new.saga_id!r} was not, so submit(saga, saga_id) must claim it first"
            )
        record = SagaRecord.from_new(new)
        record.lease_owner = saga.config.storage.owner_id
        return self._start(saga, new.saga_id, record)

    def submit_claimed(self, saga: Saga, record: SagaRecord) -> asyncio.Task[SagaResult]:
        """Run a saga whose lease this process already holds (``record`` from
        :meth:`~sagaz.core.SagaStorage.claim` or ``claim_runnable``) in the background.

        The recovery sweep (:class:`~sagaz.core.recovery.RecoverySweep`) submits what it
        claims this way. A saga already running here keeps its running task.
        """
        return self._start(saga, record.saga_id, record)

    def _start(
        self, saga: Saga, saga_id: str, record: SagaRecord | None
    ) -> asyncio.Task[SagaResult]:
        running = self._by_id.get(saga_id)
        if running is not None and not running.done():
            return running
        if record is None:
            coro = saga.resume(saga_id)
        else:
            # Running here from now on, not only once the task starts: an operation of
            # this process meanwhile (cancel_saga) must leave it to this run (the engine
            # sees a cancel request in the answer to its first write) instead of
            # claiming and running it a second time.
            saga.config.storage.running_here.add(saga_id)
            coro = saga.run_claimed(record)
        task = asyncio.get_running_loop().create_task(coro, name=f"sagaz:{saga.name}:{saga_id}")
        self._tasks.add(task)
        self._by_id[saga_id] = task
        if record is None:
            task.add_done_callback(lambda t: self._done(t, saga_id))
        else:
            storage = saga.config.storage

            def done(t: asyncio.Task[SagaResult]) -> None:
                storage.running_here.discard(saga_id)  # also when cancelled unstarted
                self._done(t, saga_id)

            task.add_done_callback(done)
        return task

    def _done(self, task: asyncio.Task[SagaResult], saga_id: str) -> None:
        self._tasks.discard(task)
        if self._by_id.get(saga_id) is task:
            del self._by_id[saga_id]
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "sagaz: background saga task %s crashed; the saga stays recorded and "
                "resumes on recovery",
                task.get_name(),
                exc_info=task.exception(),
            )

    async def drain(self) -> None:
        """Wait until every submitted saga (and any submitted meanwhile) has finished.

        Bound the wait with ``asyncio.timeout(...)`` around the call if needed.
        """
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def shutdown(self) -> None:
        """Cancel what still runs and wait for it to stop."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_runners: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, InProcessRunner] = (
    weakref.WeakKeyDictionary()
)


def get_runner() -> InProcessRunner:
    """The runner of the running event loop (one per loop, created on first use)."""
    loop = asyncio.get_running_loop()
    runner = _runners.get(loop)
    if runner is None:
        runner = _runners[loop] = InProcessRunner()
    return runner


async def start_saga(
    saga: Saga,
    context: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    correlation_id: str | None = None,
    run: bool = True,
) -> tuple[str, bool]:
    """Record ``saga`` as PENDING and return ``(saga_id, created)`` without waiting.

    The saga is durable once this returns. With ``run=True`` (default) it is also
    submitted to this loop's :class:`InProcessRunner`; it is then recorded already
    leased to this process (one write, no separate claim): if the process dies first,
    a worker takes it over when the lease expires. With ``run=False`` it is recorded
    unowned and a worker (or :func:`resume_saga`) runs it. A known
    ``idempotency_key`` returns the existing saga's id and ``created=False`` (and
    neither runs nor leases it).
    """
    config = saga.config
    storage = config.storage
    ctx = dict(context or {})
    if storage.durable:
        check_json(ctx, "initial context")
    await storage.ensure_open()
    new = NewSaga(
        str(uuid.uuid4()),
        saga.name,
        ctx,
        SagaStatus.PENDING,
        correlation_id if correlation_id is not None else current_correlation_id(),
        idempotency_key,
        leased=run,
    )
    saga_id, created = await storage.create_saga(new)
    if created and run:
        get_runner().submit_created(saga, new)
    return saga_id, created


async def resume_saga(saga_id: str, config: SagaConfig | None = None) -> SagaResult:
    """Continue the recorded saga ``saga_id``, finding its definition in the registry."""
    config = config or get_config()
    await config.storage.ensure_open()
    record = await config.storage.load(saga_id)
    if record is None:
        raise SagaNotFoundError(f"no saga {saga_id!r} in {type(config.storage).__name__}")
    saga = registry.create(record.saga_name, config)
    return await saga.resume(saga_id)


async def recover_unfinished(config: SagaConfig | None = None, *, limit: int = 1000) -> list[str]:
    """Submit every unfinished saga (PENDING, RUNNING, COMPENSATING) whose definition is
    registered in this process to this loop's runner; return their ids.

    A one-shot pass: sagas still leased to another owner (a process that crashed a
    moment ago) are skipped. The web plugins run a
    :class:`~sagaz.core.recovery.RecoverySweep` instead, which also takes those over
    once their lease expires. With several processes on one database, run ``sagaz
    worker``: it claims sagas with leases so no saga runs twice at once.
    """
    config = config or get_config()
    storage = config.storage
    await storage.ensure_open()
    unfinished = await storage.list_sagas(
        SagaQuery(
            status=(SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING),
            limit=limit,
        )
    )
    known = set(registry.names)
    runner = get_runner()
    submitted = []
    for record in unfinished:
        if record.saga_id in storage.running_here:
            continue
        if record.saga_name not in known:
            logger.error(
                "sagaz: cannot recover saga %s: no saga named %r is registered in this "
                "process; import the module that defines it",
                record.saga_id,
                record.saga_name,
            )
            continue
        runner.submit(registry.create(record.saga_name, config), record.saga_id)
        submitted.append(record.saga_id)
    return submitted
