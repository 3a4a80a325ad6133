"""In-memory storage: for tests and for sagas that need not survive the process."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from sagaz.core.records import (
    HistoryEntry,
    NewSaga,
    SagaQuery,
    SagaRecord,
    Transition,
    TriggerEvent,
    apply_transition,
)
from sagaz.core.status import TERMINAL_STATUSES, SagaStatus
from sagaz.core.storage.base import SagaStorage

__all__ = ["InMemorySagaStorage"]


class _Entry:
    """A saga as kept in memory: its creation, its transitions, its latest context.

    The full :class:`SagaRecord` is built from the transitions when read, so a write
    costs an append (the engine writes far more often than anyone reads).
    """

    __slots__ = ("context", "new", "status", "transitions")

    def __init__(self, new: NewSaga) -> None:
        self.new = new
        self.status = new.status
        self.context: dict[str, Any] = dict(new.context)
        self.transitions: list[Transition] = []

    def add(self, transitions: Sequence[Transition]) -> None:
        self.transitions.extend(transitions)
        for t in transitions:
            status = t.saga_status
            if status is not None:
                self.status = status

    def to_record(self, *, with_history: bool) -> SagaRecord:
        record = SagaRecord.from_new(self.new)
        record.context = dict(self.context)
        history = record.history
        for seq, t in enumerate(self.transitions, 1):
            apply_transition(record, t)
            if with_history:
                history.append(HistoryEntry(seq, t.at, t.kind, t.step, t.attempt, t.error))
        return record


class InMemorySagaStorage(SagaStorage):
    """Keeps records in this process, bounded so a long-running process stays flat.

    At most ``max_finished`` terminal sagas are kept (the oldest finished are dropped,
    with their idempotency keys); unfinished sagas are never dropped.
    """

    durable: ClassVar[bool] = False

    def __init__(self, *, max_finished: int = 10_000) -> None:
        super().__init__()
        if max_finished < 0:
            raise ValueError("max_finished must be >= 0")
        self.max_finished = max_finished
        self._sagas: dict[str, _Entry] = {}
        self._keys: dict[tuple[str, str], str] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._events: OrderedDict[str, TriggerEvent] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sagas)

    async def create_saga(
        self, new: NewSaga, transitions: Sequence[Transition] = ()
    ) -> tuple[str, bool]:
        if new.idempotency_key is not None:
            key = (new.saga_name, new.idempotency_key)
            existing = self._keys.get(key)
            if existing is not None:
                return existing, False
            self._keys[key] = new.saga_id
        entry = self._sagas[new.saga_id] = _Entry(new)
        if transitions:
            self._add(entry, transitions)
        return new.saga_id, True

    async def record(
        self,
        saga_id: str,
        transitions: Sequence[Transition],
        context: Mapping[str, Any] | None = None,
    ) -> None:
        entry = self._sagas.get(saga_id)
        if entry is None:
            return  # evicted or never created here: nothing to update
        if context is not None:
            entry.context = dict(context)
        self._add(entry, transitions)

    def _add(self, entry: _Entry, transitions: Sequence[Transition]) -> None:
        entry.add(transitions)
        if entry.status in TERMINAL_STATUSES:
            finished = self._finished
            finished[entry.new.saga_id] = None
            if len(finished) > self.max_finished:
                self._evict()

    def _evict(self) -> None:
        while len(self._finished) > self.max_finished:
            old_id, _ = self._finished.popitem(last=False)
            old = self._sagas.pop(old_id, None)
            if old is not None and old.new.idempotency_key is not None:
                self._keys.pop((old.new.saga_name, old.new.idempotency_key), None)

    async def load(self, saga_id: str) -> SagaRecord | None:
        entry = self._sagas.get(saga_id)
        return None if entry is None else entry.to_record(with_history=True)

    async def list_sagas(self, query: SagaQuery | None = None) -> list[SagaRecord]:
        query = query or SagaQuery()
        statuses: tuple[SagaStatus, ...] = query.statuses
        candidates = [e for e in self._sagas.values() if not statuses or e.status in statuses]
        records = [e.to_record(with_history=False) for e in candidates]
        found = [r for r in records if query.matches(r)]
        found.sort(key=lambda r: r.created_at, reverse=True)
        return found[query.offset : query.offset + query.limit]

    async def record_trigger_event(
        self, event: TriggerEvent, sagas: Sequence[NewSaga]
    ) -> list[tuple[str, bool]]:
        results = [await self.create_saga(new) for new in sagas]
        event.saga_ids = [saga_id for saga_id, _ in results]
        self._events[event.event_id] = event
        while len(self._events) > max(self.max_finished, 1):
            self._events.popitem(last=False)
        return results

    async def find_trigger_events(
        self, correlation_id: str, source: str | None = None
    ) -> list[TriggerEvent]:
        return [
            e
            for e in self._events.values()
            if e.correlation_id == correlation_id and (source is None or e.source == source)
        ]
