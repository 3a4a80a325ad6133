"""The worker: claims runnable sagas with leases and runs them, many processes at once.

``sagaz worker`` (and Django's ``manage.py sagaz_worker``) run :class:`SagaWorker`.
Each worker leases the sagas it runs (PostgreSQL ``FOR UPDATE SKIP LOCKED``), keeps
the leases renewed while it runs them, and takes over sagas whose lease expired
because their worker died. On stop it claims nothing more, lets running sagas finish
for a grace period, cancels the rest and releases their leases, so another worker
resumes them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sagaz.core.config import SagaConfig, get_config
from sagaz.core.errors import StorageError
from sagaz.core.records import SagaQuery, SagaRecord
from sagaz.core.registry import SagaRegistry, registry
from sagaz.core.result import SagaResult
from sagaz.core.status import SagaStatus
from sagaz.core.storage.base import LeaseLostError

if TYPE_CHECKING:
    from sagaz.core.outbox import OutboxRelay
    from sagaz.core.runner import InProcessRunner

__all__ = ["SagaWorker", "WorkerStats"]

logger = logging.getLogger("sagaz.worker")

_UNFINISHED = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)
#: Longest wait between two claims while the storage keeps failing (seconds).
_MAX_CLAIM_BACKOFF = 5.0


@dataclass(slots=True)
class WorkerStats:
    """What a worker has done since it started."""

    claimed: int = 0
    completed: int = 0
    compensated: int = 0
    failed: int = 0
    lost: int = 0
    crashed: int = 0
    released: int = 0


class SagaWorker:
    """Runs sagas recorded in ``config.storage`` until :meth:`stop` is called.

    ``concurrency`` bounds the sagas run at once; ``poll_interval`` is how long an idle
    worker waits before claiming again; ``grace_period`` is how long a stopping
    worker lets running sagas finish. Only sagas whose names are registered (import
    their modules first) are claimed; unfinished sagas of unknown names are left
    untouched and reported once each as an error naming them. ``relay`` (an
    :class:`~sagaz.core.outbox.OutboxRelay`) is run alongside when given.

    With ``runner`` (an :class:`~sagaz.core.InProcessRunner`) the worker runs embedded
    in an application: claimed sagas are submitted to that runner, and stopping the
    worker only stops claiming; waiting for, cancelling and releasing the sagas it
    submitted is left to the runner's owner (the application's shutdown). This is
    :class:`~sagaz.core.recovery.RecoverySweep`.
    """

    def __init__(
        self,
        config: SagaConfig | None = None,
        *,
        concurrency: int = 10,
        poll_interval: float = 1.0,
        grace_period: float = 30.0,
        saga_names: Sequence[str] | None = None,
        relay: OutboxRelay | None = None,
        saga_registry: SagaRegistry | None = None,
        runner: InProcessRunner | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval}")
        self.config = config or get_config()
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.grace_period = grace_period
        self.registry = saga_registry or registry
        self._names = list(saga_names) if saga_names is not None else None
        self.relay = relay
        self.runner = runner
        self.stats = WorkerStats()
        self._stop = asyncio.Event()
        self._first_claim = asyncio.Event()
        self._running: dict[asyncio.Task[SagaResult], str] = {}
        self._reported_unknown: set[str] = set()

    @property
    def saga_names(self) -> list[str]:
        """The saga names this worker claims."""
        return self._names if self._names is not None else self.registry.names

    async def first_claim(self) -> None:
        """Wait until the worker's first claim has been tried (or the worker stopped)."""
        await self._first_claim.wait()

    def stop(self) -> None:
        """Ask the worker to stop (safe from a signal handler on the loop)."""
        self._stop.set()

    async def run(self) -> WorkerStats:
        """Claim and run sagas until stopped; return the stats."""
        storage = self.config.storage
        await storage.ensure_open()
        relay_task = None
        if self.relay is not None:
            relay_task = asyncio.create_task(self.relay.run(self._stop), name="sagaz-relay")
        logger.info(
            "sagaz worker %s started: sagas %s, concurrency %d",
            storage.owner_id,
            ", ".join(self.saga_names) or "(none registered)",
            self.concurrency,
        )
        # Embedded, each saga renews its lease while it runs on the runner (the engine
        # holds leases during a run): an idle sweep then writes nothing.
        leases: contextlib.AbstractAsyncContextManager[None] = (
            storage.holding_leases() if self.runner is None else contextlib.nullcontext()
        )
        try:
            async with leases:
                await self._report_unknown()
                failures = 0
                while not self._stop.is_set():
                    try:
                        claimed = await self._claim()
                    except (StorageError, OSError) as exc:
                        # The database restarted or dropped our connection: keep the
                        # worker alive and claim again once it answers.
                        failures += 1
                        delay = min(_MAX_CLAIM_BACKOFF, self.poll_interval * 2.0**failures)
                        logger.warning(
                            "sagaz worker: claiming sagas failed (%d in a row), retrying "
                            "in %.1fs: %s",
                            failures,
                            delay,
                            exc,
                        )
                        self._first_claim.set()
                        await self._idle(delay)
                        continue
                    self._first_claim.set()
                    failures = 0
                    if not claimed:
                        await self._idle()
        finally:
            self._first_claim.set()
            await self._drain()
            if relay_task is not None:
                self._stop.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await relay_task
        logger.info("sagaz worker %s stopped: %s", storage.owner_id, self.stats)
        return self.stats

    async def _claim(self) -> int:
        free = self.concurrency - len(self._running)
        names = self.saga_names
        if free <= 0 or not names:
            return 0
        records = await self.config.storage.claim_runnable(free, names)
        for record in records:
            self.stats.claimed += 1
            if self.runner is not None:
                task = self._submit(self.runner, record)
                if task is None:
                    continue
            else:
                task = asyncio.create_task(self._run_one(record), name=f"sagaz:{record.saga_id}")
            self._running[task] = record.saga_id
            task.add_done_callback(self._finished)
        return len(records)

    def _submit(
        self, runner: InProcessRunner, record: SagaRecord
    ) -> asyncio.Task[SagaResult] | None:
        try:
            saga = self.registry.create(record.saga_name, self.config)
        except Exception:
            self.stats.crashed += 1
            logger.exception("sagaz: cannot build saga %r to run it", record.saga_name)
            self.config.storage.release_lease_later(record.saga_id)
            return None
        return runner.submit_claimed(saga, record)

    async def _run_one(self, record: SagaRecord) -> SagaResult:
        saga = self.registry.create(record.saga_name, self.config)
        return await saga.run_claimed(record)

    def _finished(self, task: asyncio.Task[SagaResult]) -> None:
        saga_id = self._running.pop(task, "?")
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            status = task.result().status
            if status is SagaStatus.COMPLETED:
                self.stats.completed += 1
            elif status is SagaStatus.COMPENSATED:
                self.stats.compensated += 1
            else:
                self.stats.failed += 1
        elif isinstance(exc, LeaseLostError):
            self.stats.lost += 1
            logger.warning("sagaz worker lost the lease of saga %s: %s", saga_id, exc)
        else:
            self.stats.crashed += 1
            if self.runner is not None:
                return  # the runner logs it
            logger.error(
                "sagaz worker: saga %s stopped on an error; it stays recorded and is "
                "resumed after its lease expires",
                saga_id,
                exc_info=exc,
            )

    async def _idle(self, seconds: float | None = None) -> None:
        waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._stop.wait())}
        waiters.update(self._running)
        try:
            await asyncio.wait(
                waiters,
                timeout=self.poll_interval if seconds is None else seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiter in waiters:
                if waiter not in self._running:
                    waiter.cancel()

    async def _report_unknown(self) -> None:
        known = set(self.saga_names)
        try:
            unfinished = await self.config.storage.list_sagas(
                SagaQuery(status=_UNFINISHED, limit=1000)
            )
        except (StorageError, OSError) as exc:  # a report only: never worth dying for
            logger.warning("sagaz worker: could not look for sagas of unknown names: %s", exc)
            return
        for record in unfinished:
            if record.saga_name not in known and record.saga_id not in self._reported_unknown:
                self._reported_unknown.add(record.saga_id)
                logger.error(
                    "sagaz worker: saga %s is a %r, which no imported module defines; it is "
                    "left untouched (start the worker with --module <the module defining it>)",
                    record.saga_id,
                    record.saga_name,
                )

    async def _drain(self) -> None:
        if self.runner is not None:
            # Embedded: the sagas run on the application's runner, and other sagas of this
            # process hold leases too; the application's shutdown ends and releases them.
            return
        running = list(self._running)
        if running:
            _, pending = await asyncio.wait(running, timeout=self.grace_period)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        storage = self.config.storage
        with contextlib.suppress(Exception):
            self.stats.released += await storage.release_leases()
