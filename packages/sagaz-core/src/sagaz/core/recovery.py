"""The in-process recovery sweep: a one-process app never forgets a saga after a crash.

A saga started by a process that then crashed stays leased to the dead process until
its lease expires (``lease_seconds``), so a one-shot recovery at the next start-up
(:func:`~sagaz.core.recover_unfinished`) skips it. :class:`RecoverySweep` runs on the
application's event loop instead: once at start-up and then every ``interval`` seconds
(default: half the storage's ``lease_seconds``) it claims the runnable sagas whose
definitions are registered in this process (PENDING and unleased, or leased by an
owner whose lease expired) and runs them on the loop's
:class:`~sagaz.core.InProcessRunner`, at most ``concurrency`` at a time.

It is a :class:`~sagaz.core.SagaWorker` running embedded (same claim API, same
leases): a saga leased by another live process is never touched. The FastAPI, Flask
and Django plugins run one when they run sagas in-process; an application that leaves
its sagas to ``sagaz worker`` needs none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sagaz.core.config import SagaConfig, get_config
from sagaz.core.registry import SagaRegistry
from sagaz.core.runner import InProcessRunner, get_runner
from sagaz.core.worker import SagaWorker, WorkerStats

__all__ = ["DEFAULT_RECOVERY_CONCURRENCY", "RecoverySweep", "default_sweep_interval"]

logger = logging.getLogger("sagaz.recovery")

#: How many recovered sagas a sweep runs at once by default.
DEFAULT_RECOVERY_CONCURRENCY = 4
#: The shortest default interval between two sweeps (seconds).
_MIN_INTERVAL = 0.1


def default_sweep_interval(lease_seconds: float) -> float:
    """The default sweep interval for ``lease_seconds``: half of it (at least 0.1 s)."""
    return max(lease_seconds / 2.0, _MIN_INTERVAL)


class RecoverySweep:
    """Claim and run this process's recoverable sagas in the background of an event loop.

    ::

        sweep = RecoverySweep(config)
        await sweep.start()   # the first sweep has claimed what it could when this returns
        ...
        await sweep.stop()    # claims nothing more; the runner's owner ends running sagas

    ``interval`` (seconds, > 0) defaults to :func:`default_sweep_interval` of the
    storage's ``lease_seconds``; ``concurrency`` (>= 1) bounds the recovered sagas run
    at once; ``runner`` defaults to :func:`~sagaz.core.get_runner` of the loop that
    calls :meth:`start`. Sagas it starts run on that runner, so the application's
    shutdown (which drains and cancels the runner) ends them like any other.
    """

    def __init__(
        self,
        config: SagaConfig | None = None,
        *,
        interval: float | None = None,
        concurrency: int = DEFAULT_RECOVERY_CONCURRENCY,
        saga_registry: SagaRegistry | None = None,
        runner: InProcessRunner | None = None,
    ) -> None:
        if interval is not None and not interval > 0:
            raise ValueError(
                f"the recovery sweep interval must be > 0 seconds, got {interval!r}; "
                "pass None for the default (half the lease)"
            )
        if concurrency < 1:
            raise ValueError(f"the recovery sweep concurrency must be >= 1, got {concurrency!r}")
        self.config = config or get_config()
        self.interval = (
            interval
            if interval is not None
            else default_sweep_interval(self.config.storage.lease_seconds)
        )
        self.concurrency = concurrency
        self._registry = saga_registry
        self._runner = runner
        self._worker: SagaWorker | None = None
        self._task: asyncio.Task[WorkerStats] | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RecoverySweep {state} every {self.interval:g}s, concurrency {self.concurrency}>"

    @property
    def running(self) -> bool:
        """Whether the sweep's task is running."""
        return self._task is not None and not self._task.done()

    @property
    def stats(self) -> WorkerStats:
        """What the sweep has claimed and how those sagas ended (of the last start)."""
        return self._worker.stats if self._worker is not None else WorkerStats()

    async def start(self) -> None:
        """Start sweeping on the running loop; return once the first sweep has claimed.

        Starting a running sweep does nothing. It never raises: a failing claim (storage
        down) is logged and retried with backoff, and a sweep that stops on an error
        logs it.
        """
        if self.running:
            return
        runner = self._runner if self._runner is not None else get_runner()
        worker = SagaWorker(
            self.config,
            concurrency=self.concurrency,
            poll_interval=self.interval,
            grace_period=0.0,
            saga_registry=self._registry,
            runner=runner,
        )
        self._worker = worker
        task = asyncio.get_running_loop().create_task(worker.run(), name="sagaz-recovery-sweep")
        task.add_done_callback(_report_crash)
        self._task = task
        first = asyncio.ensure_future(worker.first_claim())
        try:
            await asyncio.wait({first, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            first.cancel()

    async def stop(self) -> None:
        """Stop claiming and wait for the sweep's task to end (sagas it started keep
        running on the runner)."""
        worker, task = self._worker, self._task
        self._task = None
        if worker is None or task is None:
            return
        worker.stop()
        if task.get_loop() is not asyncio.get_running_loop():  # pragma: no cover - misuse
            raise RuntimeError("stop the recovery sweep on the event loop that started it")
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def _report_crash(task: asyncio.Task[WorkerStats]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "sagaz: the recovery sweep stopped on an error; sagas of a crashed process "
            "are no longer resumed here until the application restarts",
            exc_info=task.exception(),
        )
