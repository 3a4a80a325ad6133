"""Saga storage in Django's own database, through the ORM and Django's connections.

:class:`DjangoSagaStorage` implements the whole :class:`~sagaz.core.SagaStorage` contract
(leases, fenced writes, reopen, cancel requests, the transactional outbox and the inbox) on
the tables of :mod:`sagaz.integrations.django.models`, on PostgreSQL, SQLite and
MariaDB/MySQL.

Threads and connections
-----------------------
The engine is async; the ORM is sync and must never run on an event loop thread. Every
storage method therefore runs its ORM work on a small thread pool owned by the storage
(``max_threads``, default 8, re-created after a fork) with ``loop.run_in_executor`` in a
copy of the caller's context: what asgiref's ``sync_to_async(..., thread_sensitive=False,
executor=...)`` does, without its per-call wrappers. Not thread-sensitive, because:

* thread-sensitive calls all run on one shared thread (or on the thread of the request
  that is blocked waiting for the portal, which would deadlock a sync view under ASGI), so
  every saga of the process would queue behind one connection;
* under ASGI a thread-sensitive call made by a saga that outlives its request would land
  in that request's per-request executor after it was shut down, opening a connection in
  a thread nobody closes.

Each call is one unit of work, handled like a Django request: the thread's connection
for the alias is checked before (``close_if_unusable_or_obsolete``: broken or older than
``CONN_MAX_AGE`` connections are dropped) and after the work (with the default
``CONN_MAX_AGE = 0`` it is closed then, so nothing stays open between calls; with
persistent connections at most ``max_threads`` stay open, one per pool thread, and
:meth:`close` closes them). Set ``CONN_MAX_AGE`` (or Django 5.1's PostgreSQL ``pool``
option) for fewer connects per saga.

Writes are one transaction each. PostgreSQL and MariaDB lock the saga row with
``SELECT ... FOR UPDATE`` (workers claim with ``SKIP LOCKED``); SQLite, which has no row
locks, starts every write transaction with a conditional (or no-op) ``UPDATE`` so the
transaction holds SQLite's write lock before it reads, and concurrent writers queue on
the busy timeout instead of failing to upgrade a read lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar, ParamSpec, TypeVar

from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.models import Count, Exists, F, OuterRef, Q

from sagaz.core.errors import StorageError
from sagaz.core.records import (
    HistoryEntry,
    NewSaga,
    OutboxEvent,
    OutboxRecord,
    OutboxStatus,
    SagaQuery,
    SagaRecord,
    StepField,
    StepRecord,
    Transition,
    TransitionKind,
    TriggerEvent,
    completed_results,
    derive_change,
    history_entries,
    touched_steps,
)
from sagaz.core.records import to_json as dumps
from sagaz.core.status import TERMINAL_STATUSES, SagaStatus, StepStatus
from sagaz.core.storage.base import LeaseLostError, SagaStorage

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from sagaz.integrations.django.models import (
        OutboxMessage,
        SagaHistoryEntry,
        SagaInstance,
        SagaStep,
    )

__all__ = ["DjangoSagaStorage", "dumps", "step_from_row"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

_TERMINAL = [s.value for s in TERMINAL_STATUSES]
_UNFINISHED = [SagaStatus.PENDING.value, SagaStatus.RUNNING.value, SagaStatus.COMPENSATING.value]
_STARTED_EVENT = "saga.started"
_SAGA_STATE_FIELDS = (
    "saga_id",
    "status",
    "updated_at",
    "error",
    "failed_step",
    "recoveries",
    "last_seq",
    "lease_owner",
    "cancel_requested",
)
_STEP_UPDATE_FIELDS = [
    "status",
    "attempts",
    "result",
    "error",
    "started_at",
    "finished_at",
    "compensation_attempts",
    "compensation_error",
]


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def step_from_row(row: SagaStep) -> StepRecord:
    """The :class:`StepRecord` of a stored step."""
    return StepRecord(
        name=row.name,
        status=StepStatus(row.status),
        attempts=row.attempts,
        result=_loads(row.result),
        error=row.error,
        started_at=row.started_at,
        finished_at=row.finished_at,
        compensation_attempts=row.compensation_attempts,
        compensation_error=row.compensation_error,
    )


def _history_from_row(row: SagaHistoryEntry) -> HistoryEntry:
    return HistoryEntry(row.seq, row.at, TransitionKind(row.kind), row.step, row.attempt, row.error)


def _saga_from_row(row: SagaInstance) -> SagaRecord:
    return SagaRecord(
        saga_id=row.saga_id,
        saga_name=row.saga_name,
        status=SagaStatus(row.status),
        context=json.loads(row.context),
        correlation_id=row.correlation_id,
        idempotency_key=row.idempotency_key,
        created_at=row.created_at,
        updated_at=row.updated_at,
        error=row.error,
        failed_step=row.failed_step,
        recoveries=row.recoveries,
        lease_owner=row.lease_owner,
        lease_expires_at=row.lease_expires_at,
        cancel_requested=row.cancel_requested,
        trace_context=None if row.trace_context is None else json.loads(row.trace_context),
    )


def _outbox_from_row(row: OutboxMessage) -> OutboxRecord:
    event = OutboxEvent(
        event_id=row.event_id,
        saga_id=row.saga_id,
        event_type=row.event_type,
        payload=json.loads(row.payload),
        correlation_id=row.correlation_id,
        created_at=row.created_at,
    )
    return OutboxRecord(
        seq=row.seq,
        event=event,
        status=OutboxStatus(row.status),
        attempts=row.attempts,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at,
        sent_at=row.sent_at,
    )


def _step_results(saga_id: str, transitions: Sequence[Transition]) -> dict[str, str | None]:
    """The JSON text of each result a STEP_COMPLETED in ``transitions`` records."""
    return {
        name: None
        if result is None
        else dumps(result, f"the result of step {name!r} of saga {saga_id!r}")
        for name, result in completed_results(transitions).items()
    }


def _step_row(saga_id: str, step: StepRecord, result: str | None) -> SagaStep:
    """A step row to insert or upsert (``result``: its JSON text)."""
    from sagaz.integrations.django.models import SagaStep

    return SagaStep(
        saga_id=saga_id,
        name=step.name,
        status=step.status.value,
        attempts=step.attempts,
        result=result,
        error=step.error,
        started_at=step.started_at,
        finished_at=step.finished_at,
        compensation_attempts=step.compensation_attempts,
        compensation_error=step.compensation_error,
    )


def _history_rows(
    saga_id: str, transitions: Sequence[Transition], first_seq: int
) -> list[SagaHistoryEntry]:
    """The history rows ``transitions`` append, numbered from ``first_seq``."""
    from sagaz.integrations.django.models import SagaHistoryEntry

    return [
        SagaHistoryEntry(
            saga_id=saga_id,
            seq=h.seq,
            at=h.at,
            kind=h.kind.value,
            step=h.step,
            attempt=h.attempt,
            error=h.error,
        )
        for h in history_entries(transitions, first_seq)
    ]


class _PreparedSaga:
    """A new saga with its transitions applied, serialised before the transaction."""

    __slots__ = ("change", "context", "history", "new", "results")

    def __init__(self, new: NewSaga, transitions: Sequence[Transition]) -> None:
        self.new = new
        self.context = dumps(new.context, f"the context of saga {new.saga_id!r}")
        self.change = derive_change(SagaRecord.from_new(new), transitions)
        self.results = _step_results(new.saga_id, transitions)
        self.history = list(transitions)


class DjangoSagaStorage(SagaStorage):
    """Durable saga storage in the Django database ``alias`` (``manage.py migrate``).

    Uses the connection Django manages for the alias in each of its threads (see the
    module docstring for why and how). ``max_threads`` bounds the threads, and so the
    connections, this storage uses at once.
    """

    durable: ClassVar[bool] = True

    def __init__(self, alias: str = "default", *, max_threads: int = 8) -> None:
        super().__init__()
        if max_threads < 1:
            raise ValueError(f"max_threads must be >= 1, got {max_threads}")
        self.alias = alias
        self.max_threads = max_threads
        self._executor: ThreadPoolExecutor | None = None
        self._executor_pid: int | None = None
        self._executor_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alias={self.alias!r})"

    # ----------------------------------------------------------------- threads

    def _pool(self) -> ThreadPoolExecutor:
        pid = os.getpid()
        executor = self._executor
        if executor is not None and self._executor_pid == pid:
            return executor
        with self._executor_lock:
            if self._executor is None or self._executor_pid != pid:
                # After a fork the parent's pool threads do not exist here: start afresh.
                self._executor = ThreadPoolExecutor(
                    max_workers=self.max_threads, thread_name_prefix="sagaz-django-db"
                )
                self._executor_pid = pid
            return self._executor

    async def _run(
        self, what: str, func: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run ``func`` in a pool thread as one unit of work on the alias's connection."""

        def unit() -> _T:
            conn = connections[self.alias]
            conn.close_if_unusable_or_obsolete()
            try:
                return func(*args, **kwargs)
            except DatabaseError as exc:
                raise StorageError(
                    f"Django database {self.alias!r} ({conn.vendor}): could not {what}: "
                    f"{exc.__class__.__name__}: {exc}"
                ) from exc
            finally:
                conn.close_if_unusable_or_obsolete()

        # The pool's thread runs ``unit`` in a copy of this context (as sync_to_async would,
        # without its per-call wrapper objects: this runs for every storage call).
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool(), contextvars.copy_context().run, unit)

    def _conn(self) -> BaseDatabaseWrapper:
        return connections[self.alias]

    def _lock_for_write(self) -> None:
        """On SQLite, take the write lock now (the first statement of the transaction)."""
        conn = self._conn()
        if conn.vendor == "sqlite":
            with conn.cursor() as cursor:
                cursor.execute("UPDATE sagaz_saga SET recoveries = recoveries WHERE 0 = 1")

    # ----------------------------------------------------------------- open / close

    async def ensure_open(self) -> None:
        """Check once (per process) that the tables exist (``manage.py migrate``).

        Safe from any event loop: the check is idempotent, so it needs no loop-bound
        lock (the storage is shared by the portal loop and a server's loop).
        """
        pid = os.getpid()
        if self._opened and self._opened_pid == pid:
            return
        if self._opened:
            # Forked after opening (gunicorn workers): the parent's lease keeper and
            # pool threads do not exist here; open anew (the pool is re-created too).
            self._keeper = None
            self._held = 0
        await self._open()
        self._opened = True
        self._opened_pid = pid

    async def close(self) -> None:
        """Release the pool threads' connections; the storage can be opened again later.

        Safe from any event loop: a lease keeper running on another loop (the portal's,
        say) is cancelled there instead of being awaited here.
        """
        keeper = self._keeper
        if keeper is not None and not keeper.done():
            loop = keeper.get_loop()
            try:
                same_loop = asyncio.get_running_loop() is loop
            except RuntimeError:  # pragma: no cover - close() always runs on a loop
                same_loop = False
            if not same_loop:
                self._keeper = None
                if not loop.is_closed():
                    loop.call_soon_threadsafe(keeper.cancel)
        await super().close()

    async def _open(self) -> None:
        from sagaz.integrations.django.models import SagaInstance

        def check() -> None:
            try:
                SagaInstance.objects.using(self.alias).filter(saga_id="").exists()
            except DatabaseError as exc:
                raise StorageError(
                    f"the Sagaz tables are missing from Django database {self.alias!r} "
                    f"({exc}); run: python manage.py migrate sagaz"
                ) from exc

        await self._run("open the storage", check)

    async def _close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None or self._executor_pid != os.getpid():
            return
        # Close the connection each pool thread holds (persistent connections): one job
        # per thread, held at a barrier so that every thread runs exactly one.
        count = self.max_threads
        barrier = threading.Barrier(count)

        def close_mine() -> None:
            connections[self.alias].close()
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=5)

        futures = [executor.submit(close_mine) for _ in range(count)]
        for future in futures:
            await _wrap(future)
        executor.shutdown(wait=False)

    async def ping(self) -> None:
        """Raise StorageError if the database cannot be queried."""

        def select_one() -> None:
            with self._conn().cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()

        await self._run("reach the database", select_one)

    # ----------------------------------------------------------------- writing sagas

    def _insert_saga(self, prepared: _PreparedSaga, owner: str, now: float) -> tuple[str, bool]:
        """Insert a saga (race-free on its idempotency key) with its steps and history."""
        from sagaz.integrations.django.models import SagaHistoryEntry, SagaInstance, SagaStep

        new, record = prepared.new, prepared.change.record
        leased = (
            new.leased or new.status is SagaStatus.RUNNING
        ) and record.status not in TERMINAL_STATUSES
        row = SagaInstance(
            saga_id=new.saga_id,
            saga_name=new.saga_name,
            status=record.status.value,
            context=prepared.context,
            correlation_id=new.correlation_id,
            idempotency_key=new.idempotency_key,
            created_at=new.created_at,
            updated_at=record.updated_at,
            error=record.error,
            failed_step=record.failed_step,
            recoveries=record.recoveries,
            last_seq=len(prepared.history),
            lease_owner=owner if leased else None,
            lease_expires_at=now + self.lease_seconds if leased else None,
            trace_context=None if new.trace_context is None else json.dumps(new.trace_context),
        )
        sagas = SagaInstance.objects.using(self.alias)
        duplicate_id = StorageError(
            f"saga id {new.saga_id!r} is already recorded; give every new saga a fresh id "
            "(uuid4) and pass an idempotency_key to make a start repeatable"
        )
        try:
            # A savepoint, so a failed INSERT leaves the caller's transaction usable. A
            # concurrent insert of the same key waits on the unique index for the other
            # transaction, then fails here.
            with transaction.atomic(using=self.alias):
                sagas.bulk_create([row])
        except IntegrityError:
            if new.idempotency_key is None:
                raise duplicate_id from None
            # READ COMMITTED (Django's default on every backend): the other's commit shows.
            owners = sagas.filter(
                saga_name=new.saga_name, idempotency_key=new.idempotency_key
            ).order_by()
            existing = list(owners.values_list("saga_id", flat=True)[:1])
            if not existing or existing[0] == new.saga_id:
                # The id clashed, not the key (or this very saga was created before).
                raise duplicate_id from None
            return existing[0], False
        saga_id = new.saga_id
        if prepared.change.steps:
            SagaStep.objects.using(self.alias).bulk_create(
                [
                    _step_row(saga_id, c.step, prepared.results.get(name))
                    for name, c in prepared.change.steps.items()
                ]
            )
        if prepared.history:
            SagaHistoryEntry.objects.using(self.alias).bulk_create(
                _history_rows(saga_id, prepared.history, 1)
            )
        return saga_id, True

    def _insert_events(self, rows: Sequence[tuple[OutboxEvent, str]]) -> None:
        from sagaz.integrations.django.models import OutboxMessage

        if rows:
            OutboxMessage.objects.using(self.alias).bulk_create(
                [
                    OutboxMessage(
                        event_id=e.event_id,
                        saga_id=e.saga_id,
                        event_type=e.event_type,
                        payload=payload,
                        correlation_id=e.correlation_id,
                        created_at=e.created_at,
                    )
                    for e, payload in rows
                ]
            )

    async def create_saga(
        self,
        new: NewSaga,
        transitions: Sequence[Transition] = (),
        events: Sequence[OutboxEvent] = (),
    ) -> tuple[str, bool]:
        """Record a new saga, its transitions and outbox events in one transaction."""
        prepared = _PreparedSaga(new, transitions)
        payloads = _event_payloads(events)
        owner = self.owner_id
        await self.ensure_open()

        def create() -> tuple[str, bool]:
            with transaction.atomic(using=self.alias):
                saga_id, created = self._insert_saga(prepared, owner, time.time())
                if created:
                    self._insert_events(payloads)
                return saga_id, created

        return await self._run(f"create saga {new.saga_id!r}", create)

    def _lock_saga(self, saga_id: str, owner: str | None) -> dict[str, Any] | None:
        """Lock the saga row for this transaction and read its state (None: unknown).

        With ``owner``, the write is fenced: raise LeaseLostError unless ``owner`` holds
        the lease.
        """
        from sagaz.integrations.django.models import SagaInstance

        # order_by(): a lookup by the unique saga_id needs no ORDER BY (the model's default
        # ordering costs SQL compilation on every write).
        sagas = SagaInstance.objects.using(self.alias).filter(saga_id=saga_id).order_by()
        conn = self._conn()
        if conn.vendor == "sqlite":
            # A conditional UPDATE first: it fences and takes SQLite's write lock.
            if owner is not None:
                fenced = sagas.filter(lease_owner=owner).update(recoveries=F("recoveries")) == 0
                if fenced and not sagas.exists():
                    return None
            else:
                self._lock_for_write()
            rows = list(sagas.values(*_SAGA_STATE_FIELDS))
        else:
            rows = list(sagas.select_for_update().values(*_SAGA_STATE_FIELDS))
        if not rows:
            return None
        state = rows[0]
        if owner is not None and state["lease_owner"] != owner:
            raise LeaseLostError(
                f"saga {saga_id} is leased by {state['lease_owner'] or 'nobody'}, not {owner}"
            )
        return state

    def _apply(
        self,
        state: Mapping[str, Any],
        transitions: Sequence[Transition],
        *,
        context: str | None,
        results: Mapping[str, str | None],
        lease: tuple[str | None, float | None],
    ) -> None:
        """Apply ``transitions`` to a locked saga: its row, its steps, its history."""
        from sagaz.integrations.django.models import SagaHistoryEntry, SagaInstance, SagaStep

        saga_id: str = state["saga_id"]
        record = SagaRecord(
            saga_id=saga_id,
            saga_name="",
            status=SagaStatus(state["status"]),
            context={},
            updated_at=state["updated_at"],
            error=state["error"],
            failed_step=state["failed_step"],
            recoveries=state["recoveries"],
        )
        names = touched_steps(transitions)
        stored: dict[str, str | None] = {}
        if names:
            steps = SagaStep.objects.using(self.alias).filter(saga_id=saga_id, name__in=names)
            for row in steps.order_by():
                step = _step_from_row_raw(row)
                record.steps[row.name] = step
                stored[row.name] = row.result
        change = derive_change(record, transitions)
        record = change.record
        last_seq: int = state["last_seq"]
        owner, expires = lease
        if change.finished:
            owner = expires = None
        fields: dict[str, Any] = {
            "status": record.status.value,
            "updated_at": record.updated_at,
            "error": record.error,
            "failed_step": record.failed_step,
            "recoveries": record.recoveries,
            "last_seq": last_seq + len(transitions),
            "lease_owner": owner,
            "lease_expires_at": expires,
        }
        if context is not None:
            fields["context"] = context
        SagaInstance.objects.using(self.alias).filter(saga_id=saga_id).update(**fields)
        if change.steps:
            conn = self._conn()
            rows = [
                _step_row(
                    saga_id,
                    c.step,
                    results[name] if c.fields & StepField.RESULT else stored.get(name),
                )
                for name, c in change.steps.items()
            ]
            SagaStep.objects.using(self.alias).bulk_create(
                rows,
                update_conflicts=True,
                update_fields=_STEP_UPDATE_FIELDS,
                unique_fields=(
                    ["saga", "name"]
                    if conn.features.supports_update_conflicts_with_target
                    else None
                ),
            )
        if transitions:
            SagaHistoryEntry.objects.using(self.alias).bulk_create(
                _history_rows(saga_id, transitions, last_seq + 1)
            )

    async def record(
        self,
        saga_id: str,
        transitions: Sequence[Transition],
        context: Mapping[str, Any] | None = None,
        events: Sequence[OutboxEvent] = (),
    ) -> bool:
        """Append transitions, the new context and outbox events in one fenced transaction.

        Only the lease owner may write (else :class:`LeaseLostError`, nothing written);
        the write renews the lease and a terminal status releases it. A
        ``saga.started`` event for a saga that already has one in the outbox (written by
        :func:`~sagaz.integrations.django.atomic_saga_start`) is not written twice.
        Returns whether an operator asked to cancel the saga.
        """
        context_json = (
            None if context is None else dumps(dict(context), f"the context of saga {saga_id!r}")
        )
        results = _step_results(saga_id, transitions)
        payloads = _event_payloads(events)
        owner = self.owner_id
        starting = any(t.kind is TransitionKind.SAGA_STARTED for t in transitions)
        await self.ensure_open()

        def write() -> bool:
            from sagaz.integrations.django.models import OutboxMessage

            now = time.time()
            with transaction.atomic(using=self.alias):
                state = self._lock_saga(saga_id, owner)
                if state is None:
                    return False  # unknown saga: nothing to update (as in memory)
                expires = (transitions[-1].at if transitions else now) + self.lease_seconds
                self._apply(
                    state,
                    transitions,
                    context=context_json,
                    results=results,
                    lease=(owner, expires),
                )
                rows = payloads
                if starting and any(e.event_type == _STARTED_EVENT for e, _ in rows):
                    already = (
                        OutboxMessage.objects.using(self.alias)
                        .filter(saga_id=saga_id, event_type=_STARTED_EVENT)
                        .exists()
                    )
                    if already:
                        rows = [(e, p) for e, p in rows if e.event_type != _STARTED_EVENT]
                self._insert_events(rows)
                return bool(state["cancel_requested"])

        return await self._run(f"record transitions of saga {saga_id!r}", write)

    # ----------------------------------------------------------------- leases

    def _load_many(self, saga_ids: Sequence[str], *, with_history: bool) -> list[SagaRecord]:
        """Full records of ``saga_ids`` (in that order), three queries in all."""
        from sagaz.integrations.django.models import SagaHistoryEntry, SagaInstance, SagaStep

        if not saga_ids:
            return []
        records = {
            row.saga_id: _saga_from_row(row)
            for row in SagaInstance.objects.using(self.alias).filter(saga_id__in=saga_ids)
        }
        for step in SagaStep.objects.using(self.alias).filter(saga_id__in=saga_ids).order_by("id"):
            record = records.get(step.saga_id)
            if record is not None:
                record.steps[step.name] = step_from_row(step)
        if with_history:
            for h in (
                SagaHistoryEntry.objects.using(self.alias)
                .filter(saga_id__in=saga_ids)
                .order_by("saga_id", "seq")
            ):
                record = records.get(h.saga_id)
                if record is not None:
                    record.history.append(_history_from_row(h))
        return [records[i] for i in saga_ids if i in records]

    async def claim(self, saga_id: str) -> SagaRecord | None:
        """Lease one unfinished saga to this process (a conditional UPDATE) and load it."""
        from sagaz.integrations.django.models import SagaInstance

        owner = self.owner_id
        await self.ensure_open()

        def take() -> SagaRecord | None:
            now = time.time()
            with transaction.atomic(using=self.alias):
                taken = (
                    SagaInstance.objects.using(self.alias)
                    .filter(saga_id=saga_id)
                    .exclude(status__in=_TERMINAL)
                    .filter(
                        Q(lease_owner__isnull=True)
                        | Q(lease_owner=owner)
                        | Q(lease_expires_at__isnull=True)
                        | Q(lease_expires_at__lte=now)
                    )
                    .update(lease_owner=owner, lease_expires_at=now + self.lease_seconds)
                )
                if not taken:
                    return None
                found = self._load_many([saga_id], with_history=True)
                return found[0] if found else None

        return await self._run(f"claim saga {saga_id!r}", take)

    async def claim_runnable(
        self, limit: int, saga_names: Sequence[str] | None = None
    ) -> list[SagaRecord]:
        """Lease up to ``limit`` unfinished, unleased (or expired) sagas, oldest first.

        PostgreSQL and MariaDB use ``SELECT ... FOR UPDATE SKIP LOCKED``; SQLite holds its
        write lock for the whole claim.
        """
        from sagaz.integrations.django.models import SagaInstance

        if limit <= 0 or (saga_names is not None and not saga_names):
            return []
        owner = self.owner_id
        names = None if saga_names is None else list(saga_names)
        await self.ensure_open()

        def take() -> list[SagaRecord]:
            now = time.time()
            conn = self._conn()
            with transaction.atomic(using=self.alias):
                self._lock_for_write()
                free = (
                    SagaInstance.objects.using(self.alias)
                    .filter(status__in=_UNFINISHED)
                    .filter(
                        Q(lease_owner__isnull=True)
                        | (
                            (Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=now))
                            & ~Q(lease_owner=owner)
                        )
                    )
                    .order_by("created_at", "id")
                )
                if names is not None:
                    free = free.filter(saga_name__in=names)
                skip = conn.features.has_select_for_update_skip_locked
                if conn.vendor == "mysql":
                    # InnoDB locks every row an ORDER BY ... LIMIT query reads, not just
                    # the rows it returns; pick the oldest candidates without locks, then
                    # lock up to ``limit`` of them by primary key.
                    window = list(free.values_list("saga_id", "created_at")[: limit * 4])
                    order = dict(window)
                    locked = (
                        free.order_by()
                        .filter(saga_id__in=list(order))
                        .select_for_update(skip_locked=skip)
                        .values_list("saga_id", flat=True)[:limit]
                    )
                    ids = sorted(locked, key=order.__getitem__)
                else:
                    if conn.features.has_select_for_update:
                        free = free.select_for_update(skip_locked=skip)
                    ids = list(free.values_list("saga_id", flat=True)[:limit])
                if not ids:
                    return []
                SagaInstance.objects.using(self.alias).filter(saga_id__in=ids).update(
                    lease_owner=owner, lease_expires_at=now + self.lease_seconds
                )
                return self._load_many(ids, with_history=True)

        return await self._run("claim runnable sagas", take)

    async def renew_leases(self) -> int:
        """Extend every unfinished saga leased by this process; return how many."""
        from sagaz.integrations.django.models import SagaInstance

        owner = self.owner_id

        def renew() -> int:
            return (
                SagaInstance.objects.using(self.alias)
                .filter(lease_owner=owner)
                .exclude(status__in=_TERMINAL)
                .update(lease_expires_at=time.time() + self.lease_seconds)
            )

        return await self._run("renew leases", renew)

    async def release_leases(self, saga_ids: Sequence[str] | None = None) -> int:
        """Drop this process's leases (on ``saga_ids``, or all); return how many."""
        from sagaz.integrations.django.models import SagaInstance

        owner = self.owner_id
        ids = None if saga_ids is None else list(saga_ids)
        if ids is not None and not ids:
            return 0

        def release() -> int:
            held = SagaInstance.objects.using(self.alias).filter(lease_owner=owner)
            if ids is not None:
                held = held.filter(saga_id__in=ids)
            return held.update(lease_owner=None, lease_expires_at=None)

        return await self._run("release leases", release)

    async def reopen(self, saga_id: str, transition: Transition) -> SagaRecord | None:
        """Re-drive a FAILED saga: apply ``transition``, lease it here, return its record."""
        owner = self.owner_id
        await self.ensure_open()

        def reopen() -> SagaRecord | None:
            now = time.time()
            with transaction.atomic(using=self.alias):
                state = self._lock_saga(saga_id, None)
                if state is None or state["status"] != SagaStatus.FAILED.value:
                    return None
                self._apply(
                    state,
                    [transition],
                    context=None,
                    results=_step_results(saga_id, [transition]),
                    lease=(owner, now + self.lease_seconds),
                )
                found = self._load_many([saga_id], with_history=True)
                return found[0] if found else None

        return await self._run(f"reopen saga {saga_id!r}", reopen)

    async def request_cancel(self, saga_id: str) -> bool:
        """Ask the owner of an unfinished saga to cancel it; False if finished/unknown."""
        from sagaz.integrations.django.models import SagaInstance

        def ask() -> bool:
            return bool(
                SagaInstance.objects.using(self.alias)
                .filter(saga_id=saga_id)
                .exclude(status__in=_TERMINAL)
                .update(cancel_requested=True)
            )

        return await self._run(f"request cancellation of saga {saga_id!r}", ask)

    # ----------------------------------------------------------------- reading

    async def load(self, saga_id: str) -> SagaRecord | None:
        """The full record of a saga, with its steps and history; None if unknown."""
        await self.ensure_open()

        def read() -> SagaRecord | None:
            found = self._load_many([saga_id], with_history=True)
            return found[0] if found else None

        return await self._run(f"load saga {saga_id!r}", read)

    async def list_sagas(self, query: SagaQuery | None = None) -> list[SagaRecord]:
        """Sagas matching ``query``, newest first, with steps but without history."""
        from sagaz.integrations.django.models import SagaInstance, SagaStep

        query = query or SagaQuery()
        if query.limit <= 0:
            return []
        await self.ensure_open()

        def read() -> list[SagaRecord]:
            found = SagaInstance.objects.using(self.alias).all()
            if query.statuses:
                found = found.filter(status__in=[s.value for s in query.statuses])
            if query.saga_name is not None:
                found = found.filter(saga_name=query.saga_name)
            if query.correlation_id is not None:
                found = found.filter(correlation_id=query.correlation_id)
            if query.created_after is not None:
                found = found.filter(created_at__gte=query.created_after)
            if query.created_before is not None:
                found = found.filter(created_at__lt=query.created_before)
            page = found.order_by("-created_at", "id")[query.offset : query.offset + query.limit]
            records = [_saga_from_row(row) for row in page]
            by_id = {r.saga_id: r for r in records}
            if by_id:
                for step in (
                    SagaStep.objects.using(self.alias)
                    .filter(saga_id__in=list(by_id))
                    .order_by("id")
                ):
                    by_id[step.saga_id].steps[step.name] = step_from_row(step)
            return records

        return await self._run("list sagas", read)

    # ----------------------------------------------------------------- triggers

    async def record_trigger_event(
        self, event: TriggerEvent, sagas: Sequence[NewSaga]
    ) -> list[tuple[str, bool]]:
        """Record ``event`` and create ``sagas`` in one transaction; sets ``event.saga_ids``."""
        from sagaz.integrations.django.models import TriggerEventRecord

        payload = dumps(dict(event.payload), f"the payload of event {event.event_id!r}")
        prepared = [_PreparedSaga(new, ()) for new in sagas]
        owner = self.owner_id
        await self.ensure_open()

        def write() -> list[tuple[str, bool]]:
            now = time.time()
            with transaction.atomic(using=self.alias):
                results = [self._insert_saga(p, owner, now) for p in prepared]
                TriggerEventRecord.objects.using(self.alias).bulk_create(
                    [
                        TriggerEventRecord(
                            event_id=event.event_id,
                            source=event.source,
                            correlation_id=event.correlation_id,
                            payload=payload,
                            saga_ids=json.dumps([saga_id for saga_id, _ in results]),
                            created_at=event.created_at,
                        )
                    ]
                )
                return results

        results = await self._run(f"record trigger event {event.event_id!r}", write)
        event.saga_ids = [saga_id for saga_id, _ in results]
        return results

    async def find_trigger_events(
        self, correlation_id: str, source: str | None = None
    ) -> list[TriggerEvent]:
        """Trigger events recorded with ``correlation_id`` (and ``source``), oldest first."""
        from sagaz.integrations.django.models import TriggerEventRecord

        await self.ensure_open()

        def read() -> list[TriggerEvent]:
            found = TriggerEventRecord.objects.using(self.alias).filter(
                correlation_id=correlation_id
            )
            if source is not None:
                found = found.filter(source=source)
            return [
                TriggerEvent(
                    event_id=row.event_id,
                    source=row.source,
                    payload=json.loads(row.payload),
                    correlation_id=row.correlation_id,
                    saga_ids=json.loads(row.saga_ids),
                    created_at=row.created_at,
                )
                for row in found.order_by("id")
            ]

        return await self._run("find trigger events", read)

    # ----------------------------------------------------------------- the outbox

    async def claim_outbox(self, limit: int) -> list[OutboxRecord]:
        """Claim up to ``limit`` publishable events (in ``seq`` order) for a lease."""
        from sagaz.integrations.django.models import OutboxMessage

        if limit <= 0:
            return []
        await self.ensure_open()

        def take() -> list[OutboxRecord]:
            now = time.time()
            conn = self._conn()
            pending = OutboxStatus.PENDING.value
            messages = OutboxMessage.objects.using(self.alias)
            with transaction.atomic(using=self.alias):
                self._lock_for_write()
                earlier = messages.filter(
                    saga_id=OuterRef("saga_id"), status=pending, seq__lt=OuterRef("seq")
                )
                due = (
                    messages.filter(status=pending, next_attempt_at__lte=now)
                    .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lte=now))
                    .filter(~Exists(earlier))
                    .order_by("seq")
                )
                if conn.features.has_select_for_update:
                    due = due.select_for_update(
                        skip_locked=conn.features.has_select_for_update_skip_locked
                    )
                rows = list(due[:limit])
                if rows:
                    messages.filter(seq__in=[r.seq for r in rows]).update(
                        claimed_until=now + self.lease_seconds
                    )
                return [_outbox_from_row(r) for r in rows]

        return await self._run("claim outbox events", take)

    async def outbox_sent(self, event_ids: Sequence[str]) -> None:
        """Mark events published."""
        from sagaz.integrations.django.models import OutboxMessage

        ids = list(event_ids)
        if not ids:
            return

        def mark() -> None:
            OutboxMessage.objects.using(self.alias).filter(event_id__in=ids).update(
                status=OutboxStatus.SENT.value,
                attempts=F("attempts") + 1,
                sent_at=time.time(),
                claimed_until=None,
            )

        await self._run("mark outbox events sent", mark)

    async def outbox_failed(self, event_id: str, error: str, retry_at: float | None) -> None:
        """Record a failed publication: retry at ``retry_at`` or, if None, dead-letter it."""
        from sagaz.integrations.django.models import OutboxMessage

        def mark() -> None:
            fields: dict[str, Any] = {
                "attempts": F("attempts") + 1,
                "last_error": error,
                "claimed_until": None,
            }
            if retry_at is None:
                fields["status"] = OutboxStatus.DEAD.value
            else:
                fields["next_attempt_at"] = retry_at
            OutboxMessage.objects.using(self.alias).filter(event_id=event_id).update(**fields)

        await self._run(f"record the failed publication of event {event_id!r}", mark)

    async def list_outbox(
        self, status: OutboxStatus | None = None, limit: int = 100
    ) -> list[OutboxRecord]:
        """Outbox events (optionally of one status), oldest first."""
        from sagaz.integrations.django.models import OutboxMessage

        if limit <= 0:
            return []

        def read() -> list[OutboxRecord]:
            found = OutboxMessage.objects.using(self.alias).order_by("seq")
            if status is not None:
                found = found.filter(status=status.value)
            return [_outbox_from_row(r) for r in found[:limit]]

        return await self._run("list outbox events", read)

    async def outbox_counts(self) -> dict[OutboxStatus, int]:
        """How many events are in each status (every status present, zero included)."""
        from sagaz.integrations.django.models import OutboxMessage

        def count() -> dict[OutboxStatus, int]:
            counts = dict.fromkeys(OutboxStatus, 0)
            rows = (
                OutboxMessage.objects.using(self.alias)
                .order_by()
                .values("status")
                .annotate(n=Count("seq"))
            )
            for row in rows:
                counts[OutboxStatus(row["status"])] = row["n"]
            return counts

        return await self._run("count outbox events", count)

    def inbox_mark_sync(self, consumer: str, event_id: str) -> bool:
        """:meth:`inbox_mark` for sync code, in the caller's thread and transaction.

        Call it inside the consumer's own ``transaction.atomic(using=alias)`` to record
        the event in the same transaction as the work it caused.
        """
        from sagaz.integrations.django.models import InboxEntry

        try:
            with transaction.atomic(using=self.alias):
                InboxEntry.objects.using(self.alias).create(
                    consumer=consumer, event_id=event_id, processed_at=time.time()
                )
        except IntegrityError:
            return False
        return True

    async def inbox_seen(self, consumer: str, event_id: str) -> bool:
        """Whether ``consumer`` has recorded ``event_id`` as processed (a read, no write)."""
        from sagaz.integrations.django.models import InboxEntry

        def read() -> bool:
            return (
                InboxEntry.objects.using(self.alias)
                .filter(consumer=consumer, event_id=event_id)
                .exists()
            )

        return await self._run(f"read the inbox for event {event_id!r}", read)

    async def inbox_mark(self, consumer: str, event_id: str) -> bool:
        """Record that ``consumer`` processed ``event_id``; False if it already had."""
        return await self._run(
            f"mark event {event_id!r} processed", self.inbox_mark_sync, consumer, event_id
        )


def _step_from_row_raw(row: SagaStep) -> StepRecord:
    """A step read for an update: its result stays as stored text (not decoded)."""
    return StepRecord(
        name=row.name,
        status=StepStatus(row.status),
        attempts=row.attempts,
        error=row.error,
        started_at=row.started_at,
        finished_at=row.finished_at,
        compensation_attempts=row.compensation_attempts,
        compensation_error=row.compensation_error,
    )


def _event_payloads(events: Iterable[OutboxEvent]) -> list[tuple[OutboxEvent, str]]:
    return [(e, dumps(e.payload, f"the payload of outbox event {e.event_type!r}")) for e in events]


async def _wrap(future: Any) -> None:
    await asyncio.wrap_future(future)
