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
    StepRecord,
    Transition,
    TriggerEvent,
    apply_transition,
)
from sagaz.core.status import TERMINAL_STATUSES
from sagaz.core.storage.base import SagaStorage

__all__ = ["InMemorySagaStorage"]


class InMemorySagaStorage(SagaStorage):
    """Keeps records in this process, bounded so a long-running process stays flat.

    At most ``max_finished`` terminal sagas are kept (the oldest finished are dropped,
    with their idempotency keys); running sagas are never dropped. ``keep_history=False``
    skips the per-transition history list (the steps and status are still kept).
    """

    durable: ClassVar[bool] = False

    def __init__(self, *, max_finished: int = 10_000, keep_history: bool = True) -> None:
        super().__init__()
        if max_finished < 0:
            raise ValueError("max_finished must be >= 0")
        self.max_finished = max_finished
        self.keep_history = keep_history
        self._sagas: dict[str, SagaRecord] = {}
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
        record = SagaRecord.from_new(new)
        self._sagas[new.saga_id] = record
        if transitions:
            self._apply(record, transitions)
        return new.saga_id, True

    async def record(
        self,
        saga_id: str,
        transitions: Sequence[Transition],
        context: Mapping[str, Any] | None = None,
    ) -> None:
        record = self._sagas.get(saga_id)
        if record is None:
            return  # evicted or never created here: nothing to update
        if context is not None:
            record.context = dict(context)
        self._apply(record, transitions)

    def _apply(self, record: SagaRecord, transitions: Sequence[Transition]) -> None:
        history = record.history
        for t in transitions:
            apply_transition(record, t)
            if self.keep_history:
                history.append(
                    HistoryEntry(len(history) + 1, t.at, t.kind, t.step, t.attempt, t.error)
                )
        if record.status in TERMINAL_STATUSES:
            self._finished[record.saga_id] = None
            while len(self._finished) > self.max_finished:
                old_id, _ = self._finished.popitem(last=False)
                old = self._sagas.pop(old_id, None)
                if old is not None and old.idempotency_key is not None:
                    self._keys.pop((old.saga_name, old.idempotency_key), None)

    async def load(self, saga_id: str) -> SagaRecord | None:
        record = self._sagas.get(saga_id)
        return None if record is None else _copy(record, with_history=True)

    async def list_sagas(self, query: SagaQuery | None = None) -> list[SagaRecord]:
        query = query or SagaQuery()
        found = [r for r in self._sagas.values() if query.matches(r)]
        found.sort(key=lambda r: r.created_at, reverse=True)
        return [_copy(r, with_history=False) for r in found[query.offset : query.offset + query.limit]]

    async def record_trigger_event(
        self, event: TriggerEvent, sagas: Sequence[NewSaga]
    ) -> list[tuple[str, bool]]:
        results = [await self.create_saga(new) for new in sagas]
        event.saga_ids = [saga_id for saga_id, _ in results]
        self._events[event.event_id] = event
        while len(self._events) > self.max_finished:
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


def _copy(record: SagaRecord, *, with_history: bool) -> SagaRecord:
    """A snapshot that later transitions do not change under the caller."""
    return SagaRecord(
        saga_id=record.saga_id,
        saga_name=record.saga_name,
        status=record.status,
        context=dict(record.context),
        correlation_id=record.correlation_id,
        idempotency_key=record.idempotency_key,
        created_at=record.created_at,
        updated_at=record.updated_at,
        error=record.error,
        failed_step=record.failed_step,
        recoveries=record.recoveries,
        steps={name: StepRecord(**_fields(s)) for name, s in record.steps.items()},
        history=list(record.history) if with_history else [],
    )


def _fields(step: StepRecord) -> dict[str, Any]:
    return {name: getattr(step, name) for name in StepRecord.__slots__}
