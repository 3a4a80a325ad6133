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
from sagaz.core.records import NewSaga, SagaQuery
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

        Submitting a saga that is already running here returns its running task.
        """
        running = self._by_id.get(saga_id)
        if running is not None and not running.done():
            return running
        task = asyncio.get_running_loop().create_task(
            saga.resume(saga_id), name=f"sagaz:{saga.name}:{saga_id}"
        )
        self._tasks.add(task)
        self._by_id[saga_id] = task
        task.add_done_callback(lambda t: self._done(t, saga_id))
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
    submitted to this loop's :class:`InProcessRunner`; otherwise a worker runs it.
    A known ``idempotency_key`` returns the existing saga's id and ``created=False``.
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
    )
    saga_id, created = await storage.create_saga(new)
    if created and run:
        get_runner().submit(saga, saga_id)
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

    For a single process that owns its storage (start-up of a one-process app). With
    several processes on one database, run ``sagaz worker`` instead: it claims sagas
    with leases so no saga runs twice at once.
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
