"""The storage interface every backend implements."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

from sagaz.core.records import NewSaga, SagaQuery, SagaRecord, Transition, TriggerEvent

__all__ = ["SagaStorage"]


class SagaStorage(ABC):
    """Async storage of saga records, their history and trigger events.

    Backends are opened lazily and safely: many concurrent first uses open the backend
    once (:meth:`ensure_open`). Every write is atomic: a call either records all it was
    given or nothing.
    """

    #: True when records survive the process (the context must then be JSON).
    durable: ClassVar[bool] = True

    def __init__(self) -> None:
        self._opened = False
        self._open_lock: asyncio.Lock | None = None

    @property
    def is_open(self) -> bool:
        """Whether :meth:`ensure_open` has completed and :meth:`close` has not run since."""
        return self._opened

    async def ensure_open(self) -> None:
        """Open the backend once, however many tasks ask at the same time."""
        if self._opened:
            return
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if not self._opened:
                await self._open()
                self._opened = True

    async def close(self) -> None:
        """Release connections and files; the storage can be opened again later."""
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
        self, new: NewSaga, transitions: Sequence[Transition] = ()
    ) -> tuple[str, bool]:
        """Record a new saga and ``transitions`` for it in one atomic write.

        Returns ``(saga_id, True)``. When ``new.idempotency_key`` is already recorded for
        ``new.saga_name`` nothing is written and ``(existing_saga_id, False)`` is
        returned; this is race-free (a unique constraint, not check-then-insert).
        """

    @abstractmethod
    async def record(
        self,
        saga_id: str,
        transitions: Sequence[Transition],
        context: Mapping[str, Any] | None = None,
    ) -> None:
        """Append ``transitions`` (and the new ``context``, if given) atomically."""

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

    async def ping(self) -> None:
        """Raise if the backend cannot be reached (used by health routes)."""
        await self.ensure_open()
