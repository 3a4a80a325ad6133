"""The storage interface every backend implements."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

from sagaz.core.errors import SagaError
from sagaz.core.records import (
    NewSaga,
    OutboxEvent,
    OutboxRecord,
    OutboxStatus,
    SagaQuery,
    SagaRecord,
    Transition,
    TriggerEvent,
)

__all__ = ["LeaseLostError", "SagaStorage"]

logger = logging.getLogger("sagaz.storage")

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def current_pid() -> int:
    """This process's id, read without a system call (updated in a forked child).

    The storages check it on every write to notice they run in a forked child.
    """
    return _pid


class LeaseLostError(SagaError, RuntimeError):
    """This process no longer holds the lease of a saga (another worker took it over).

    The engine stops running the saga here; its new owner continues it.
    """


class SagaStorage(ABC):
    """Async storage of saga records, their history and trigger events.

    Backends are opened lazily and safely: many concurrent first uses open the backend
    once (:meth:`ensure_open`). Every write is atomic: a call either records all it was
    given or nothing.
    """

    #: True when records survive the process (the context must then be JSON).
    durable: ClassVar[bool] = True

    #: Seconds a lease lasts without renewal; a crashed owner's sagas are taken over
    #: after it. Renewed every third of it while this process runs them.
    lease_seconds: float = 30.0

    def __init__(self) -> None:
        self._orphans: tuple[int, set[str]] = (os.getpid(), set())
        self._opened = False
        self._open_lock: asyncio.Lock | None = None
        self._owner: tuple[int, str] | None = None
        self._held = 0
        self._keeper: asyncio.Task[None] | None = None
        self._opened_pid = os.getpid()
        self._running_here: tuple[int, set[str]] = (os.getpid(), set())

    @property
    def running_here(self) -> set[str]:
        """Ids of the sagas this process is executing right now (empty in a forked child).

        :meth:`~sagaz.core.Saga.resume`, recovery and cancellation consult it so a saga
        is never executed twice at once by the process that holds its lease.
        """
        pid = _pid
        if self._running_here[0] != pid:
            self._running_here = (pid, set())
        return self._running_here[1]

    @property
    def owner_id(self) -> str:
        """This process's lease owner id (new in a forked child)."""
        pid = _pid
        owner = self._owner
        if owner is not None and owner[0] == pid:
            return owner[1]
        if self._owner is None or self._owner[0] != pid:
            self._owner = (pid, f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}")
        return self._owner[1]

    @contextlib.asynccontextmanager
    async def holding_leases(self) -> AsyncIterator[None]:
        """Keep this process's leases renewed while the block runs (nests; one task)."""
        self._held += 1
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.get_running_loop().create_task(
                self._keep_leases(), name="sagaz-lease-keeper"
            )
        try:
            yield
        finally:
            self._held -= 1

    def release_lease_later(self, saga_id: str) -> None:
        """Note that this process stopped running ``saga_id`` without finishing it (its run
        raised, e.g. on a storage outage): the lease keeper releases its lease instead of
        renewing it, so another worker resumes the saga once the storage answers again."""
        pid = os.getpid()
        owned = getattr(self, "_orphans", None)
        if owned is None or owned[0] != pid:
            owned = self._orphans = (pid, set())
        owned[1].add(saga_id)

    async def _release_orphans(self) -> None:
        pid, orphans = getattr(self, "_orphans", (0, set()))
        ids = [i for i in orphans if i not in self.running_here] if pid == os.getpid() else []
        if not ids:
            return
        try:
            await self.release_leases(ids)
        except Exception:
            logger.warning("sagaz: releasing the leases of interrupted sagas failed; retrying")
            return
        orphans.difference_update(ids)

    async def _keep_leases(self) -> None:
        interval = max(self.lease_seconds / 3, 0.05)
        while self._held > 0 and self._opened:
            await asyncio.sleep(interval)
            if self._held <= 0 or not self._opened:
                break
            await self._release_orphans()
            try:
                await self.renew_leases()
            except Exception:
                logger.warning("sagaz: renewing saga leases failed; retrying", exc_info=True)

    @property
    def is_open(self) -> bool:
        """Whether :meth:`ensure_open` has completed and :meth:`close` has not run since."""
        return self._opened

    async def ensure_open(self) -> None:
        """Open the backend once, however many tasks ask at the same time.

        In a process forked after opening (gunicorn workers), the parent's connections
        and threads are unusable: the backend is opened anew in the child.
        """
        if self._opened:
            if self._opened_pid == _pid:
                return
            # Forked: forget the parent's connections (never close them from here).
            self._opened = False
            self._open_lock = None
            self._keeper = None
            self._held = 0
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if not self._opened:
                await self._open()
                self._opened = True
                self._opened_pid = os.getpid()

    async def close(self) -> None:
        """Release connections and files; the storage can be opened again later."""
        keeper, self._keeper = self._keeper, None
        if keeper is not None and not keeper.done():
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        if self._opened:
            self._opened = False
            await self._close()
        self._open_lock = None

    async def __aenter__(self) -> Self:
        await self.ensure_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _open(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Backend-specific opening (connect, migrate). Called once by ensure_open."""

    async def _close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Backend-specific closing."""

    @abstractmethod
    async def create_saga(
        self,
        new: NewSaga,
        transitions: Sequence[Transition] = (),
        events: Sequence[OutboxEvent] = (),
    ) -> tuple[str, bool]:
        """Record a new saga, ``transitions`` and outbox ``events`` in one atomic write.

        Returns ``(saga_id, True)``. When ``new.idempotency_key`` is already recorded for
        ``new.saga_name`` nothing is written and ``(existing_saga_id, False)`` is
        returned; this is race-free (a unique constraint, not check-then-insert). A saga
        created RUNNING is leased to :attr:`owner_id`; a PENDING one is unowned unless
        ``new.leased`` (its creator runs it at once: leased in the same write, as
        :meth:`claim` would, so that no claim is needed). A duplicate is never leased.
        """

    @abstractmethod
    async def record(
        self,
        saga_id: str,
        transitions: Sequence[Transition],
        context: Mapping[str, Any] | None = None,
        events: Sequence[OutboxEvent] = (),
    ) -> bool:
        """Append ``transitions``, the new ``context`` and outbox ``events`` atomically.

        Fenced: only the lease owner (:attr:`owner_id`) may write; otherwise nothing is
        written and :class:`LeaseLostError` is raised. Each write renews the lease, and
        a transition to a terminal status releases it. Returns True when an operator
        asked to cancel the saga (:meth:`request_cancel`).
        """

    @abstractmethod
    async def claim(self, saga_id: str) -> SagaRecord | None:
        """Lease one unfinished saga to this process and return its full record.

        Succeeds when the saga has no live lease (never leased, expired, or already
        ours); returns None when it is finished, unknown, or leased by another live
        owner.
        """

    @abstractmethod
    async def claim_runnable(
        self, limit: int, saga_names: Sequence[str] | None = None
    ) -> list[SagaRecord]:
        """Lease up to ``limit`` unfinished sagas with no live lease, oldest first.

        Concurrent claimers never get the same saga (``FOR UPDATE SKIP LOCKED`` or an
        equivalent). Records come with steps and history. ``saga_names`` limits the
        claim to sagas this process can run.
        """

    @abstractmethod
    async def renew_leases(self) -> int:
        """Extend every unfinished saga leased by this process; return how many."""

    @abstractmethod
    async def release_leases(self, saga_ids: Sequence[str] | None = None) -> int:
        """Drop this process's leases (on ``saga_ids``, or all); return how many."""

    @abstractmethod
    async def reopen(self, saga_id: str, transition: Transition) -> SagaRecord | None:
        """Re-drive a FAILED saga: apply ``transition`` (SAGA_RETRIED or
        SAGA_COMPENSATING), lease it to this process and return its full record.

        Returns None (writing nothing) when the saga is unknown or not FAILED.
        """

    @abstractmethod
    async def request_cancel(self, saga_id: str) -> bool:
        """Ask the owner of an unfinished saga to cancel it; False if finished/unknown."""

    @abstractmethod
    async def load(self, saga_id: str) -> SagaRecord | None:
        """The full record of a saga, with its steps and history; None if unknown."""

    @abstractmethod
    async def list_sagas(self, query: SagaQuery | None = None) -> list[SagaRecord]:
        """Sagas matching ``query``, newest first, with steps but without history."""

    @abstractmethod
    async def record_trigger_event(
        self, event: TriggerEvent, sagas: Sequence[NewSaga]
    ) -> list[tuple[str, bool]]:
        """Record ``event`` and create ``sagas`` (each as :meth:`create_saga`) atomically.

        ``event.saga_ids`` is set to the ids returned (existing ids for duplicates).
        """

    @abstractmethod
    async def find_trigger_events(
        self, correlation_id: str, source: str | None = None
    ) -> list[TriggerEvent]:
        """Trigger events recorded with ``correlation_id`` (and ``source``), oldest first."""

    # -- transactional outbox ---------------------------------------------------

    @abstractmethod
    async def claim_outbox(self, limit: int) -> list[OutboxRecord]:
        """Claim up to ``limit`` publishable events for :attr:`lease_seconds`.

        Publishable: PENDING, due (``next_attempt_at`` passed), not claimed by a live
        claim, and with no earlier PENDING event of the same saga (so events of one
        saga are published in order). Ordered by ``seq``.
        """

    @abstractmethod
    async def outbox_sent(self, event_ids: Sequence[str]) -> None:
        """Mark events published."""

    @abstractmethod
    async def outbox_failed(self, event_id: str, error: str, retry_at: float | None) -> None:
        """Record a failed publication: retry at ``retry_at`` or, if None, dead-letter it."""

    @abstractmethod
    async def list_outbox(
        self, status: OutboxStatus | None = None, limit: int = 100
    ) -> list[OutboxRecord]:
        """Outbox events (optionally of one status), oldest first."""

    @abstractmethod
    async def outbox_counts(self) -> dict[OutboxStatus, int]:
        """How many events are in each status (every status present, zero included)."""

    @abstractmethod
    async def inbox_mark(self, consumer: str, event_id: str) -> bool:
        """Record that ``consumer`` processed ``event_id``; False if it already had."""

    @abstractmethod
    async def inbox_seen(self, consumer: str, event_id: str) -> bool:
        """Whether ``consumer`` has recorded ``event_id`` as processed (a read, no write)."""

    async def ping(self) -> None:
        """Raise if the backend cannot be reached (used by health routes)."""
        await self.ensure_open()
