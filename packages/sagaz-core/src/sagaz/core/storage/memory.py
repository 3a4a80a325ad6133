"""In-memory storage: for tests and for sagas that need not survive the process."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from sagaz.core.errors import StorageError
from sagaz.core.records import (
    SAGA_STATUS_BY_KIND,
    NewSaga,
    OutboxEvent,
    OutboxRecord,
    OutboxStatus,
    SagaQuery,
    SagaRecord,
    Transition,
    TriggerEvent,
    derive_change,
    history_entries,
)
from sagaz.core.status import TERMINAL_STATUSES, SagaStatus
from sagaz.core.storage.base import LeaseLostError, SagaStorage

__all__ = ["InMemorySagaStorage"]


class _Entry:
    """A saga as kept in memory: its creation, its transitions, its latest context.

    The full :class:`SagaRecord` is built from the transitions when read, so a write
    costs an append (the engine writes far more often than anyone reads).
    """

    __slots__ = (
        "cancel_requested",
        "context",
        "lease_expires_at",
        "lease_owner",
        "new",
        "status",
        "transitions",
    )

    def __init__(self, new: NewSaga) -> None:
        self.new = new
        self.status = new.status
        self.context: dict[str, Any] = dict(new.context)
        self.transitions: list[Transition] = []
        self.lease_owner: str | None = None
        self.lease_expires_at: float | None = None
        self.cancel_requested = False

    def leased_by_other(self, owner: str, now: float) -> bool:
        return (
            self.lease_owner is not None
            and self.lease_owner != owner
            and (self.lease_expires_at or 0.0) > now
        )

    def add(self, transitions: Sequence[Transition]) -> None:
        self.transitions.extend(transitions)
        status_after = SAGA_STATUS_BY_KIND.get
        for t in transitions:
            status = status_after(t.kind)
            if status is not None:
                self.status = status

    def to_record(self, *, with_history: bool) -> SagaRecord:
        record = derive_change(SagaRecord.from_new(self.new), self.transitions).record
        record.context = dict(self.context)
        record.lease_owner = self.lease_owner
        record.lease_expires_at = self.lease_expires_at
        record.cancel_requested = self.cancel_requested
        if with_history:
            record.history = history_entries(self.transitions, 1)
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
        self._outbox: OrderedDict[str, OutboxRecord] = OrderedDict()
        self._outbox_claims: dict[str, float] = {}
        self._outbox_seq = 0
        self._inbox: OrderedDict[tuple[str, str], None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sagas)

    async def create_saga(
        self,
        new: NewSaga,
        transitions: Sequence[Transition] = (),
        events: Sequence[OutboxEvent] = (),
    ) -> tuple[str, bool]:
        if new.saga_id in self._sagas:
            raise StorageError(
                f"saga id {new.saga_id!r} is already recorded; pass a new saga_id "
                "(or none: one is generated)"
            )
        if new.idempotency_key is not None:
            key = (new.saga_name, new.idempotency_key)
            existing = self._keys.get(key)
            if existing is not None:
                return existing, False
            self._keys[key] = new.saga_id
        entry = self._sagas[new.saga_id] = _Entry(new)
        if new.leased or new.status is SagaStatus.RUNNING:
            entry.lease_owner = self.owner_id
            entry.lease_expires_at = time.time() + self.lease_seconds
        if transitions:
            self._add(entry, transitions)
        self._add_events(events)
        return new.saga_id, True

    async def record(
        self,
        saga_id: str,
        transitions: Sequence[Transition],
        context: Mapping[str, Any] | None = None,
        events: Sequence[OutboxEvent] = (),
    ) -> bool:
        entry = self._sagas.get(saga_id)
        if entry is None:
            return False  # evicted or never created here: nothing to update
        owner = self.owner_id  # one process: the id never changes under a saga
        if entry.lease_owner != owner:
            raise LeaseLostError(
                f"saga {saga_id} is leased by {entry.lease_owner or 'nobody'}, not {owner}"
            )
        if context is not None:
            entry.context = dict(context)
        entry.lease_expires_at = (transitions[-1].at if transitions else time.time()) + (
            self.lease_seconds
        )
        self._add(entry, transitions)
        if events:
            self._add_events(events)
        return entry.cancel_requested

    def _add(self, entry: _Entry, transitions: Sequence[Transition]) -> None:
        entry.add(transitions)
        if entry.status in TERMINAL_STATUSES:
            entry.lease_owner = entry.lease_expires_at = None
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

    # -- leases --------------------------------------------------------------------

    def _take(self, entry: _Entry, now: float) -> SagaRecord:
        entry.lease_owner = self.owner_id
        entry.lease_expires_at = now + self.lease_seconds
        return entry.to_record(with_history=True)

    async def claim(self, saga_id: str) -> SagaRecord | None:
        entry = self._sagas.get(saga_id)
        now = time.time()
        if entry is None or entry.status in TERMINAL_STATUSES:
            return None
        if entry.leased_by_other(self.owner_id, now):
            return None
        return self._take(entry, now)

    async def claim_runnable(
        self, limit: int, saga_names: Sequence[str] | None = None
    ) -> list[SagaRecord]:
        now = time.time()
        owner = self.owner_id
        names = None if saga_names is None else set(saga_names)
        free = [
            e
            for e in self._sagas.values()
            if e.status not in TERMINAL_STATUSES
            and (names is None or e.new.saga_name in names)
            and (e.lease_owner is None or (e.lease_expires_at or 0.0) <= now)
            and e.lease_owner != owner
        ]
        free.sort(key=lambda e: e.new.created_at)
        return [self._take(e, now) for e in free[:limit]]

    async def renew_leases(self) -> int:
        owner = self.owner_id
        until = time.time() + self.lease_seconds
        count = 0
        for entry in self._sagas.values():
            if entry.lease_owner == owner and entry.status not in TERMINAL_STATUSES:
                entry.lease_expires_at = until
                count += 1
        return count

    async def release_leases(self, saga_ids: Sequence[str] | None = None) -> int:
        owner = self.owner_id
        entries = (
            self._sagas.values()
            if saga_ids is None
            else [e for e in (self._sagas.get(i) for i in saga_ids) if e is not None]
        )
        count = 0
        for entry in entries:
            if entry.lease_owner == owner:
                entry.lease_owner = entry.lease_expires_at = None
                count += 1
        return count

    async def reopen(self, saga_id: str, transition: Transition) -> SagaRecord | None:
        entry = self._sagas.get(saga_id)
        if entry is None or entry.status is not SagaStatus.FAILED:
            return None
        self._finished.pop(saga_id, None)
        entry.add([transition])
        return self._take(entry, time.time())

    async def request_cancel(self, saga_id: str) -> bool:
        entry = self._sagas.get(saga_id)
        if entry is None or entry.status in TERMINAL_STATUSES:
            return False
        entry.cancel_requested = True
        return True

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

    # -- transactional outbox ---------------------------------------------------

    def _add_events(self, events: Sequence[OutboxEvent]) -> None:
        for event in events:
            self._outbox_seq += 1
            self._outbox[event.event_id] = OutboxRecord(self._outbox_seq, event)

    async def claim_outbox(self, limit: int) -> list[OutboxRecord]:
        now = time.time()
        blocked: set[str] = set()
        claimed: list[OutboxRecord] = []
        for rec in self._outbox.values():
            if len(claimed) >= limit:
                break
            if rec.status is not OutboxStatus.PENDING:
                continue
            saga_id = rec.event.saga_id
            if saga_id in blocked:
                continue
            blocked.add(saga_id)  # later events of this saga wait for this one
            if rec.next_attempt_at > now or self._outbox_claims.get(rec.event.event_id, 0) > now:
                continue
            self._outbox_claims[rec.event.event_id] = now + self.lease_seconds
            claimed.append(rec)
        return claimed

    async def outbox_sent(self, event_ids: Sequence[str]) -> None:
        now = time.time()
        for event_id in event_ids:
            rec = self._outbox.get(event_id)
            if rec is not None:
                rec.status = OutboxStatus.SENT
                rec.attempts += 1
                rec.sent_at = now
                self._outbox_claims.pop(event_id, None)
        self._trim_outbox()

    def _trim_outbox(self) -> None:
        excess = len(self._outbox) - max(self.max_finished, 1)
        if excess > 0:
            for event_id in [i for i, r in self._outbox.items() if r.status is OutboxStatus.SENT][
                :excess
            ]:
                del self._outbox[event_id]

    async def outbox_failed(self, event_id: str, error: str, retry_at: float | None) -> None:
        rec = self._outbox.get(event_id)
        if rec is None:
            return
        rec.attempts += 1
        rec.last_error = error
        self._outbox_claims.pop(event_id, None)
        if retry_at is None:
            rec.status = OutboxStatus.DEAD
        else:
            rec.next_attempt_at = retry_at

    async def list_outbox(
        self, status: OutboxStatus | None = None, limit: int = 100
    ) -> list[OutboxRecord]:
        found = [r for r in self._outbox.values() if status is None or r.status is status]
        return found[:limit]

    async def outbox_counts(self) -> dict[OutboxStatus, int]:
        counts = dict.fromkeys(OutboxStatus, 0)
        for rec in self._outbox.values():
            counts[rec.status] += 1
        return counts

    async def inbox_seen(self, consumer: str, event_id: str) -> bool:
        return (consumer, event_id) in self._inbox

    async def inbox_mark(self, consumer: str, event_id: str) -> bool:
        key = (consumer, event_id)
        if key in self._inbox:
            return False
        self._inbox[key] = None
        while len(self._inbox) > max(self.max_finished, 1) * 10:
            self._inbox.popitem(last=False)
        return True
