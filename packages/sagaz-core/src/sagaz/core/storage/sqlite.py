"""SQLite storage through aiosqlite: the embedded, durable default (``sagaz-core[sqlite]``).

One file holds every saga, step, history line, trigger event and outbox event. The
database runs in WAL mode with ``synchronous=NORMAL``: a committed write survives a crash
of the process (a power cut may lose the last few commits), readers never block the
writer, and several processes may share one file: every write transaction takes the
write lock up front (``BEGIN IMMEDIATE``) and waits up to ``busy_timeout`` for it.

Every public call is one transaction. A transaction is written once, as a generator of
SQL statements (:data:`_Tx`), and run by one of two drivers:

* the fast driver hands the whole generator to the connection's worker thread in a single
  call, so a call costs one thread hop however many statements it runs; aiosqlite runs
  queued calls one at a time, so statements of two transactions never interleave;
* the portable driver awaits each statement through aiosqlite's public API and holds an
  :class:`asyncio.Lock` for the whole transaction. It is used when the installed
  aiosqlite lacks the (private) hook the fast driver needs.

Writes read the saga's current row inside the write transaction and apply transitions
with :func:`sagaz.core.records.apply_transition`, the rule every backend follows; history
sequence numbers, step order and lease checks come from the database, so they are right
however many processes write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar
from urllib.parse import parse_qsl, unquote

from sagaz.core.errors import ConfigurationError, StorageError
from sagaz.core.records import (
    HistoryEntry,
    NewSaga,
    OutboxEvent,
    OutboxRecord,
    OutboxStatus,
    RecordChange,
    SagaQuery,
    SagaRecord,
    StepField,
    StepRecord,
    Transition,
    TransitionKind,
    TriggerEvent,
    completed_results,
    derive_change,
    touched_steps,
)
from sagaz.core.records import to_json as _dumps
from sagaz.core.status import TERMINAL_STATUSES, SagaStatus, StepStatus
from sagaz.core.storage.base import LeaseLostError, SagaStorage

if TYPE_CHECKING:
    import aiosqlite

__all__ = ["SQLiteSagaStorage"]

_T = TypeVar("_T")

# ----------------------------------------------------------------------------- schema

#: Ordered migrations; ``_MIGRATIONS[i]`` brings the schema to version ``i + 1``.
#: Append new migrations; never edit one that has been released.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        # Sagas keep SQLite's rowid: it breaks ties on created_at in insertion order,
        # as the in-memory backend's stable sort does.
        """CREATE TABLE sagaz_sagas (
            saga_id TEXT NOT NULL PRIMARY KEY,
            saga_name TEXT NOT NULL,
            status TEXT NOT NULL,
            context TEXT NOT NULL,
            correlation_id TEXT,
            idempotency_key TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            error TEXT,
            failed_step TEXT,
            recoveries INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_expires_at REAL,
            cancel_requested INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE UNIQUE INDEX sagaz_sagas_idempotency ON sagaz_sagas (saga_name, idempotency_key)",
        "CREATE INDEX sagaz_sagas_status ON sagaz_sagas (status, created_at)",
        "CREATE INDEX sagaz_sagas_name ON sagaz_sagas (saga_name, created_at)",
        "CREATE INDEX sagaz_sagas_correlation ON sagaz_sagas (correlation_id, created_at)",
        "CREATE INDEX sagaz_sagas_created ON sagaz_sagas (created_at)",
        "CREATE INDEX sagaz_sagas_lease ON sagaz_sagas (lease_owner) WHERE lease_owner IS NOT NULL",
        # position: the order in which the saga's steps first appeared.
        """CREATE TABLE sagaz_steps (
            saga_id TEXT NOT NULL REFERENCES sagaz_sagas (saga_id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            position INTEGER NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            result TEXT,
            error TEXT,
            started_at REAL,
            finished_at REAL,
            compensation_attempts INTEGER NOT NULL DEFAULT 0,
            compensation_error TEXT,
            PRIMARY KEY (saga_id, name)
        ) WITHOUT ROWID""",
        """CREATE TABLE sagaz_history (
            saga_id TEXT NOT NULL REFERENCES sagaz_sagas (saga_id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            step TEXT,
            attempt INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            PRIMARY KEY (saga_id, seq)
        ) WITHOUT ROWID""",
        # Trigger events keep their rowid: events are listed in the order recorded.
        """CREATE TABLE sagaz_trigger_events (
            event_id TEXT NOT NULL PRIMARY KEY,
            source TEXT NOT NULL,
            correlation_id TEXT,
            payload TEXT NOT NULL,
            saga_ids TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX sagaz_trigger_events_correlation ON sagaz_trigger_events (correlation_id)",
        """CREATE TABLE sagaz_outbox (
            seq INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL UNIQUE,
            saga_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            payload TEXT NOT NULL,
            correlation_id TEXT,
            created_at REAL NOT NULL,
            status TEXT NOT NULL DEFAULT 'PENDING',
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            next_attempt_at REAL NOT NULL DEFAULT 0,
            sent_at REAL,
            claimed_until REAL
        )""",
        "CREATE INDEX sagaz_outbox_status ON sagaz_outbox (status, seq)",
        "CREATE INDEX sagaz_outbox_pending ON sagaz_outbox (saga_id, seq) WHERE status = 'PENDING'",
        """CREATE TABLE sagaz_inbox (
            consumer TEXT NOT NULL,
            event_id TEXT NOT NULL,
            processed_at REAL NOT NULL,
            PRIMARY KEY (consumer, event_id)
        ) WITHOUT ROWID""",
    ),
    # 2: the W3C trace context a saga was started in (JSON), so a worker that resumes
    # it continues the same trace. Older rows read back as None.
    ("ALTER TABLE sagaz_sagas ADD COLUMN trace_context TEXT",),
)

_CREATE_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS sagaz_schema_version (
    version INTEGER NOT NULL PRIMARY KEY,
    applied_at REAL NOT NULL
)"""

# Every statement is spelled out in full (no string building from values): each is one
# cached prepared statement, and every value is a bound parameter. Placeholders are plain
# "?" (a value used twice is passed twice): Python 3.12 deprecates "?1" with sequences.
_INSERT_SAGA = (
    "INSERT INTO sagaz_sagas (saga_id, saga_name, status, context, correlation_id, "
    "idempotency_key, created_at, updated_at, error, failed_step, recoveries, trace_context, "
    "lease_owner, lease_expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)
_SELECT_ID = "SELECT saga_id FROM sagaz_sagas WHERE saga_id = ?"
_SELECT_ID_BY_KEY = "SELECT saga_id FROM sagaz_sagas WHERE saga_name = ? AND idempotency_key = ?"
_SELECT_STATE = (
    "SELECT status, updated_at, error, failed_step, recoveries, lease_owner, "
    "cancel_requested, "
    "(SELECT COALESCE(MAX(seq), 0) FROM sagaz_history WHERE saga_id = ?), "
    "(SELECT COUNT(*) FROM sagaz_steps WHERE saga_id = ?) "
    "FROM sagaz_sagas WHERE saga_id = ?"
)
# Two forms: SQLite rewrites the index entries of every indexed column an UPDATE sets,
# changed or not, so the usual write (status and owner unchanged) leaves them out.
_UPDATE_SAGA = (
    "UPDATE sagaz_sagas SET updated_at = ?, error = ?, failed_step = ?, recoveries = ?, "
    "context = COALESCE(?, context), lease_expires_at = ? WHERE saga_id = ?"
)
_UPDATE_SAGA_STATUS = (
    "UPDATE sagaz_sagas SET updated_at = ?, error = ?, failed_step = ?, recoveries = ?, "
    "context = COALESCE(?, context), lease_expires_at = ?, status = ?, lease_owner = ? "
    "WHERE saga_id = ?"
)
_SELECT_STEPS_NAMED = (
    "SELECT name, status, attempts, result, error, started_at, finished_at, "
    "compensation_attempts, compensation_error, position FROM sagaz_steps "
    "WHERE saga_id = ? AND name IN (SELECT value FROM json_each(?))"
)
_UPSERT_STEP = (
    "INSERT INTO sagaz_steps (saga_id, name, status, attempts, result, error, started_at, "
    "finished_at, compensation_attempts, compensation_error, position) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (saga_id, name) DO UPDATE SET status = excluded.status, "
    "attempts = excluded.attempts, result = excluded.result, error = excluded.error, "
    "started_at = excluded.started_at, finished_at = excluded.finished_at, "
    "compensation_attempts = excluded.compensation_attempts, "
    "compensation_error = excluded.compensation_error"
)
_INSERT_HISTORY = (
    "INSERT INTO sagaz_history (saga_id, seq, at, kind, step, attempt, error) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_OUTBOX = (
    "INSERT INTO sagaz_outbox (event_id, saga_id, event_type, payload, correlation_id, "
    "created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING"
)
_SELECT_SAGAS = (
    "SELECT saga_id, saga_name, status, context, correlation_id, idempotency_key, "
    "created_at, updated_at, error, failed_step, recoveries, lease_owner, "
    "lease_expires_at, cancel_requested, trace_context FROM sagaz_sagas"
)
_SELECT_SAGAS_IN = (
    "SELECT saga_id, saga_name, status, context, correlation_id, idempotency_key, "
    "created_at, updated_at, error, failed_step, recoveries, lease_owner, "
    "lease_expires_at, cancel_requested, trace_context FROM sagaz_sagas "
    "WHERE saga_id IN (SELECT value FROM json_each(?))"
)
_SELECT_STEPS_IN = (
    "SELECT saga_id, name, status, attempts, result, error, started_at, finished_at, "
    "compensation_attempts, compensation_error FROM sagaz_steps "
    "WHERE saga_id IN (SELECT value FROM json_each(?)) ORDER BY saga_id, position"
)
_SELECT_HISTORY_IN = (
    "SELECT saga_id, seq, at, kind, step, attempt, error FROM sagaz_history "
    "WHERE saga_id IN (SELECT value FROM json_each(?)) ORDER BY saga_id, seq"
)
_SELECT_LEASE = "SELECT status, lease_owner, lease_expires_at FROM sagaz_sagas WHERE saga_id = ?"
_TAKE_LEASES = (
    "UPDATE sagaz_sagas SET lease_owner = ?, lease_expires_at = ? "
    "WHERE saga_id IN (SELECT value FROM json_each(?))"
)
_SELECT_RUNNABLE = (
    "SELECT saga_id FROM sagaz_sagas "
    "WHERE status IN (SELECT value FROM json_each(?)) "
    "AND (lease_owner IS NULL OR COALESCE(lease_expires_at, 0) <= ?) "
    "AND (lease_owner IS NULL OR lease_owner != ?) "
    "AND (? IS NULL OR saga_name IN (SELECT value FROM json_each(?))) "
    "ORDER BY created_at, rowid LIMIT ?"
)
_RENEW_LEASES = (
    "UPDATE sagaz_sagas SET lease_expires_at = ? "
    "WHERE lease_owner = ? AND status IN (SELECT value FROM json_each(?))"
)
_RELEASE_ALL = (
    "UPDATE sagaz_sagas SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = ?"
)
_RELEASE_SOME = (
    "UPDATE sagaz_sagas SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = ? "
    "AND saga_id IN (SELECT value FROM json_each(?))"
)
_REQUEST_CANCEL = (
    "UPDATE sagaz_sagas SET cancel_requested = 1 "
    "WHERE saga_id = ? AND status IN (SELECT value FROM json_each(?))"
)
_UPSERT_TRIGGER_EVENT = (
    "INSERT INTO sagaz_trigger_events "
    "(event_id, source, correlation_id, payload, saga_ids, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO UPDATE SET "
    "source = excluded.source, correlation_id = excluded.correlation_id, "
    "payload = excluded.payload, saga_ids = excluded.saga_ids, created_at = excluded.created_at"
)
_SELECT_TRIGGER_EVENTS = (
    "SELECT event_id, source, correlation_id, payload, saga_ids, created_at "
    "FROM sagaz_trigger_events WHERE correlation_id = ? AND (? IS NULL OR source = ?) "
    "ORDER BY rowid"
)
# Publishable: PENDING, due, not under a live claim, and the earliest PENDING event of
# its saga (events of one saga are published in order).
_SELECT_PUBLISHABLE = (
    "SELECT seq, event_id, saga_id, event_type, payload, correlation_id, created_at, "
    "status, attempts, last_error, next_attempt_at, sent_at FROM sagaz_outbox "
    "AS o WHERE status = 'PENDING' AND next_attempt_at <= ? "
    "AND COALESCE(claimed_until, 0) <= ? AND NOT EXISTS (SELECT 1 FROM sagaz_outbox AS p "
    "WHERE p.saga_id = o.saga_id AND p.status = 'PENDING' AND p.seq < o.seq) "
    "ORDER BY seq LIMIT ?"
)
_CLAIM_OUTBOX = (
    "UPDATE sagaz_outbox SET claimed_until = ? WHERE seq IN (SELECT value FROM json_each(?))"
)
_OUTBOX_SENT = (
    "UPDATE sagaz_outbox SET status = 'SENT', attempts = attempts + 1, sent_at = ?, "
    "claimed_until = NULL WHERE event_id IN (SELECT value FROM json_each(?))"
)
_OUTBOX_FAILED = (
    "UPDATE sagaz_outbox SET attempts = attempts + 1, last_error = ?, claimed_until = NULL, "
    "status = CASE WHEN ? IS NULL THEN 'DEAD' ELSE status END, "
    "next_attempt_at = COALESCE(?, next_attempt_at) WHERE event_id = ?"
)
_LIST_OUTBOX = (
    "SELECT seq, event_id, saga_id, event_type, payload, correlation_id, created_at, "
    "status, attempts, last_error, next_attempt_at, sent_at FROM sagaz_outbox "
    "WHERE (? IS NULL OR status = ?) ORDER BY seq LIMIT ?"
)
_COUNT_OUTBOX = "SELECT status, COUNT(*) FROM sagaz_outbox GROUP BY status"
_INBOX_SEEN = "SELECT 1 FROM sagaz_inbox WHERE consumer = ? AND event_id = ?"
_INBOX_MARK = (
    "INSERT INTO sagaz_inbox (consumer, event_id, processed_at) VALUES (?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)

_UNFINISHED: Final = json.dumps([s.value for s in SagaStatus if s not in TERMINAL_STATUSES])

# ----------------------------------------------------------------------------- transactions

# A statement a transaction yields: (mode, sql, parameters). The driver sends back the
# number of rows changed (_RUN), None (_MANY: parameters is a sequence of rows) or the
# rows (_ROWS).
_RUN: Final = 0
_MANY: Final = 1
_ROWS: Final = 2
_Stmt = tuple[int, str, Any]
_Tx = Generator[_Stmt, Any, _T]
_Rows = list[tuple[Any, ...]]

_BEGIN_WRITE: Final = "BEGIN IMMEDIATE"
_BEGIN_READ: Final = "BEGIN"


def _result_json(saga_id: str, step: str, result: dict[str, Any] | None) -> str | None:
    if result is None:
        return None
    return _dumps(result, f"the result of step {step!r} of saga {saga_id!r}")


def _results_json(saga_id: str, transitions: Sequence[Transition]) -> dict[str, str | None]:
    """The result JSON each STEP_COMPLETED in ``transitions`` leaves on its step."""
    return {
        name: _result_json(saga_id, name, result)
        for name, result in completed_results(transitions).items()
    }


def _outbox_rows(events: Sequence[OutboxEvent]) -> list[tuple[Any, ...]]:
    return [
        (
            e.event_id,
            e.saga_id,
            e.event_type,
            _dumps(e.payload, f"the payload of outbox event {e.event_type!r} ({e.event_id})"),
            e.correlation_id,
            e.created_at,
        )
        for e in events
    ]


def _step_row(
    saga_id: str, step: StepRecord, result_json: str | None, position: int
) -> tuple[Any, ...]:
    return (
        saga_id,
        step.name,
        step.status.value,
        step.attempts,
        result_json,
        step.error,
        step.started_at,
        step.finished_at,
        step.compensation_attempts,
        step.compensation_error,
        position,
    )


def _history_rows(
    saga_id: str, transitions: Sequence[Transition], first_seq: int
) -> list[tuple[Any, ...]]:
    return [
        (saga_id, seq, t.at, t.kind.value, t.step, t.attempt, t.error)
        for seq, t in enumerate(transitions, start=first_seq)
    ]


def _step_from_row(row: Sequence[Any], *, decode_result: bool = True) -> StepRecord:
    """A step from ``name, status, attempts, result, error, started_at, finished_at,
    compensation_attempts, compensation_error``."""
    result = row[3]
    return StepRecord(
        name=row[0],
        status=StepStatus(row[1]),
        attempts=row[2],
        result=json.loads(result) if decode_result and result is not None else None,
        error=row[4],
        started_at=row[5],
        finished_at=row[6],
        compensation_attempts=row[7],
        compensation_error=row[8],
    )


def _saga_from_row(row: Sequence[Any]) -> SagaRecord:
    return SagaRecord(
        saga_id=row[0],
        saga_name=row[1],
        status=SagaStatus(row[2]),
        context=json.loads(row[3]),
        correlation_id=row[4],
        idempotency_key=row[5],
        created_at=row[6],
        updated_at=row[7],
        error=row[8],
        failed_step=row[9],
        recoveries=row[10],
        lease_owner=row[11],
        lease_expires_at=row[12],
        cancel_requested=bool(row[13]),
        trace_context=None if row[14] is None else json.loads(row[14]),
    )


def _outbox_from_row(row: Sequence[Any]) -> OutboxRecord:
    return OutboxRecord(
        seq=row[0],
        event=OutboxEvent(
            event_id=row[1],
            saga_id=row[2],
            event_type=row[3],
            payload=json.loads(row[4]),
            correlation_id=row[5],
            created_at=row[6],
        ),
        status=OutboxStatus(row[7]),
        attempts=row[8],
        last_error=row[9],
        next_attempt_at=row[10],
        sent_at=row[11],
    )


class _NewRows:
    """A new saga with its transitions applied, as rows, built before the transaction
    (so a value that is not JSON fails before anything is written)."""

    __slots__ = ("events", "history", "new", "running", "saga", "steps", "terminal")

    def __init__(
        self,
        new: NewSaga,
        transitions: Sequence[Transition] = (),
        events: Sequence[OutboxEvent] = (),
    ) -> None:
        self.new = new
        change = derive_change(SagaRecord.from_new(new), transitions)
        record = change.record
        context = _dumps(new.context, f"the context of saga {new.saga_id!r}")
        # (lease_owner, lease_expires_at) are appended when the transaction runs.
        self.saga = (
            new.saga_id,
            new.saga_name,
            record.status.value,
            context,
            new.correlation_id,
            new.idempotency_key,
            record.created_at,
            record.updated_at,
            record.error,
            record.failed_step,
            record.recoveries,
            None if new.trace_context is None else json.dumps(new.trace_context),
        )
        # Leased when created RUNNING (or asked to: new.leased), released again if the
        # transitions finish it.
        self.running = new.leased or new.status is SagaStatus.RUNNING
        self.terminal = change.finished
        self.steps = [
            _step_row(new.saga_id, c.step, _result_json(new.saga_id, name, c.step.result), i)
            for i, (name, c) in enumerate(change.steps.items())
        ]
        self.history = _history_rows(new.saga_id, transitions, 1)
        self.events = _outbox_rows(events)


def _create_tx(rows: _NewRows, owner: str, lease_seconds: float) -> _Tx[tuple[str, bool]]:
    """Insert a saga unless its idempotency key is recorded; then its transitions."""
    new = rows.new
    lease: tuple[str | None, float | None] = (None, None)
    if rows.running and not rows.terminal:
        lease = (owner, time.time() + lease_seconds)
    inserted = yield (_RUN, _INSERT_SAGA, rows.saga + lease)
    if inserted:
        if rows.steps:
            yield (_MANY, _UPSERT_STEP, rows.steps)
        if rows.history:
            yield (_MANY, _INSERT_HISTORY, rows.history)
        if rows.events:
            yield (_MANY, _INSERT_OUTBOX, rows.events)
        return new.saga_id, True
    taken: _Rows = yield (_ROWS, _SELECT_ID, (new.saga_id,))
    if taken or new.idempotency_key is None:
        raise StorageError(
            f"saga id {new.saga_id!r} is already recorded; give every new saga a fresh id "
            "(uuid4), and an idempotency_key to make starting it repeatable"
        )
    found: _Rows = yield (_ROWS, _SELECT_ID_BY_KEY, (new.saga_name, new.idempotency_key))
    return found[0][0], False


class _State:
    """A saga's row as a write transaction needs it (steps are read on demand)."""

    __slots__ = ("cancel_requested", "last_seq", "lease_owner", "record", "status", "step_count")

    def __init__(self, saga_id: str, row: Sequence[Any]) -> None:
        self.record = SagaRecord(
            saga_id=saga_id,
            saga_name="",
            status=SagaStatus(row[0]),
            context={},
            updated_at=row[1],
            error=row[2],
            failed_step=row[3],
            recoveries=row[4],
        )
        self.status = self.record.status  # as read, before the transitions
        self.lease_owner: str | None = row[5]
        self.cancel_requested = bool(row[6])
        self.last_seq: int = row[7]
        self.step_count: int = row[8]


def _read_state(saga_id: str) -> _Tx[_State | None]:
    rows: _Rows = yield (_ROWS, _SELECT_STATE, (saga_id, saga_id, saga_id))
    return _State(saga_id, rows[0]) if rows else None


def _write_transitions(
    state: _State,
    transitions: Sequence[Transition],
    context_json: str | None,
    results: Mapping[str, str | None],
    lease: Callable[[RecordChange], tuple[str | None, float | None]],
) -> _Tx[None]:
    """Apply ``transitions`` to the saga of ``state``; ``lease`` gives its new lease."""
    saga_id = state.record.saga_id
    names = touched_steps(transitions)
    stored: dict[str, tuple[str | None, int]] = {}  # name -> (result JSON, position)
    if names:
        found: _Rows = yield (_ROWS, _SELECT_STEPS_NAMED, (saga_id, json.dumps(names)))
        for row in found:
            state.record.steps[row[0]] = _step_from_row(row, decode_result=False)
            stored[row[0]] = (row[3], row[9])
    change = derive_change(state.record, transitions)
    record = change.record
    owner, expires = lease(change)
    values = (
        record.updated_at,
        record.error,
        record.failed_step,
        record.recoveries,
        context_json,
        expires,
    )
    if record.status is state.status and owner == state.lease_owner:
        yield (_RUN, _UPDATE_SAGA, (*values, saga_id))
    else:
        yield (_RUN, _UPDATE_SAGA_STATUS, (*values, record.status.value, owner, saga_id))
    if change.steps:
        position = state.step_count
        step_rows = []
        for name, step in change.steps.items():
            result, pos = stored.get(name, (None, -1))
            if pos < 0:
                pos, position = position, position + 1
            if step.fields & StepField.RESULT:
                result = results[name]
            step_rows.append(_step_row(saga_id, step.step, result, pos))
        yield (_MANY, _UPSERT_STEP, step_rows)
    if transitions:
        yield (_MANY, _INSERT_HISTORY, _history_rows(saga_id, transitions, state.last_seq + 1))


def _record_tx(
    saga_id: str,
    transitions: Sequence[Transition],
    context_json: str | None,
    results: Mapping[str, str | None],
    events: list[tuple[Any, ...]],
    owner: str,
    lease_seconds: float,
) -> _Tx[bool]:
    state = yield from _read_state(saga_id)
    if state is None:
        return False  # unknown saga: nothing to update (as the in-memory backend)
    if state.lease_owner != owner:
        raise LeaseLostError(
            f"saga {saga_id} is leased by {state.lease_owner or 'nobody'}, not {owner}"
        )
    renewed_until = (transitions[-1].at if transitions else time.time()) + lease_seconds

    def lease(change: RecordChange) -> tuple[str | None, float | None]:
        if change.finished:
            return None, None
        return owner, renewed_until

    yield from _write_transitions(state, transitions, context_json, results, lease)
    if events:
        yield (_MANY, _INSERT_OUTBOX, events)
    return state.cancel_requested


def _add_steps(records: dict[str, SagaRecord]) -> _Tx[None]:
    """Read the steps of ``records`` (saga id -> record) into them, in their order."""
    rows: _Rows = yield (_ROWS, _SELECT_STEPS_IN, (json.dumps(list(records)),))
    for row in rows:
        records[row[0]].steps[row[1]] = _step_from_row(row[1:])


def _load_many(saga_ids: Sequence[str], *, with_history: bool) -> _Tx[dict[str, SagaRecord]]:
    """Records of ``saga_ids`` (those that exist), with steps and optionally history."""
    ids = json.dumps(list(saga_ids))
    rows: _Rows = yield (_ROWS, _SELECT_SAGAS_IN, (ids,))
    records = {row[0]: _saga_from_row(row) for row in rows}
    if records:
        yield from _add_steps(records)
    if records and with_history:
        history: _Rows = yield (_ROWS, _SELECT_HISTORY_IN, (ids,))
        for saga_id, seq, at, kind, step, attempt, error in history:
            records[saga_id].history.append(
                HistoryEntry(seq, at, TransitionKind(kind), step, attempt, error)
            )
    return records


def _load_tx(saga_id: str) -> _Tx[SagaRecord | None]:
    records = yield from _load_many([saga_id], with_history=True)
    return records.get(saga_id)


def _list_tx(query: SagaQuery) -> _Tx[list[SagaRecord]]:
    where: list[str] = []
    params: list[Any] = []
    if query.statuses:
        where.append("status IN (SELECT value FROM json_each(?))")
        params.append(json.dumps([s.value for s in query.statuses]))
    if query.saga_name is not None:
        where.append("saga_name = ?")
        params.append(query.saga_name)
    if query.correlation_id is not None:
        where.append("correlation_id = ?")
        params.append(query.correlation_id)
    if query.created_after is not None:
        where.append("created_at >= ?")
        params.append(query.created_after)
    if query.created_before is not None:
        where.append("created_at < ?")
        params.append(query.created_before)
    sql = _SELECT_SAGAS
    if where:
        # Only the fixed fragments above are joined; every value is a bound parameter.
        sql += " WHERE " + " AND ".join(where)
    # Ties on created_at keep insertion order, as the in-memory backend's stable sort.
    sql += " ORDER BY created_at DESC, rowid LIMIT ? OFFSET ?"
    params += [query.limit, max(query.offset, 0)]
    rows: _Rows = yield (_ROWS, sql, params)
    records = {row[0]: _saga_from_row(row) for row in rows}
    if records:
        yield from _add_steps(records)
    return list(records.values())


def _claim_tx(saga_id: str, owner: str, lease_seconds: float) -> _Tx[SagaRecord | None]:
    rows: _Rows = yield (_ROWS, _SELECT_LEASE, (saga_id,))
    if not rows:
        return None
    status, lease_owner, expires = rows[0]
    now = time.time()
    if SagaStatus(status) in TERMINAL_STATUSES:
        return None
    if lease_owner is not None and lease_owner != owner and (expires or 0.0) > now:
        return None  # leased by another live owner
    yield (_RUN, _TAKE_LEASES, (owner, now + lease_seconds, json.dumps([saga_id])))
    return (yield from _load_tx(saga_id))


def _claim_runnable_tx(
    limit: int, saga_names: Sequence[str] | None, owner: str, lease_seconds: float
) -> _Tx[list[SagaRecord]]:
    now = time.time()
    names = None if saga_names is None else json.dumps(list(saga_names))
    rows: _Rows = yield (_ROWS, _SELECT_RUNNABLE, (_UNFINISHED, now, owner, names, names, limit))
    ids = [row[0] for row in rows]
    if not ids:
        return []
    yield (_RUN, _TAKE_LEASES, (owner, now + lease_seconds, json.dumps(ids)))
    records = yield from _load_many(ids, with_history=True)
    return [records[saga_id] for saga_id in ids]


def _reopen_tx(
    saga_id: str,
    transition: Transition,
    results: Mapping[str, str | None],
    owner: str,
    lease_seconds: float,
) -> _Tx[SagaRecord | None]:
    state = yield from _read_state(saga_id)
    if state is None or state.record.status is not SagaStatus.FAILED:
        return None
    until = time.time() + lease_seconds
    yield from _write_transitions(state, [transition], None, results, lambda _: (owner, until))
    return (yield from _load_tx(saga_id))


def _trigger_tx(
    event: TriggerEvent, payload_json: str, sagas: Sequence[_NewRows], owner: str, lease: float
) -> _Tx[list[tuple[str, bool]]]:
    results: list[tuple[str, bool]] = []
    for rows in sagas:
        results.append((yield from _create_tx(rows, owner, lease)))
    saga_ids = json.dumps([saga_id for saga_id, _ in results])
    yield (
        _RUN,
        _UPSERT_TRIGGER_EVENT,
        (
            event.event_id,
            event.source,
            event.correlation_id,
            payload_json,
            saga_ids,
            event.created_at,
        ),
    )
    return results


def _find_trigger_events_tx(correlation_id: str, source: str | None) -> _Tx[list[TriggerEvent]]:
    rows: _Rows = yield (_ROWS, _SELECT_TRIGGER_EVENTS, (correlation_id, source, source))
    return [
        TriggerEvent(
            event_id=row[0],
            source=row[1],
            correlation_id=row[2],
            payload=json.loads(row[3]),
            saga_ids=json.loads(row[4]),
            created_at=row[5],
        )
        for row in rows
    ]


def _claim_outbox_tx(limit: int, lease_seconds: float) -> _Tx[list[OutboxRecord]]:
    now = time.time()
    rows: _Rows = yield (_ROWS, _SELECT_PUBLISHABLE, (now, now, limit))
    if rows:
        seqs = json.dumps([row[0] for row in rows])
        yield (_RUN, _CLAIM_OUTBOX, (now + lease_seconds, seqs))
    return [_outbox_from_row(row) for row in rows]


def _outbox_counts_tx() -> _Tx[dict[OutboxStatus, int]]:
    counts = dict.fromkeys(OutboxStatus, 0)
    rows: _Rows = yield (_ROWS, _COUNT_OUTBOX, ())
    for status, count in rows:
        counts[OutboxStatus(status)] = count
    return counts


def _rows_tx(sql: str, params: Sequence[Any]) -> _Tx[_Rows]:
    rows: _Rows = yield (_ROWS, sql, params)
    return rows


def _run_tx(sql: str, params: Sequence[Any]) -> _Tx[int]:
    changed: int = yield (_RUN, sql, params)
    return changed


def _migrate_tx(latest: int) -> _Tx[list[int]]:
    """Bring the schema to version ``latest``; return the versions applied."""
    yield (_RUN, _CREATE_VERSION_TABLE, ())
    rows: _Rows = yield (_ROWS, "SELECT COALESCE(MAX(version), 0) FROM sagaz_schema_version", ())
    found: int = rows[0][0]
    if found > latest:
        raise StorageError(
            f"the database schema is at version {found}, newer than this sagaz-core "
            f"supports ({latest}); upgrade sagaz-core (pip install -U 'sagaz-core[sqlite]') "
            "or point the storage URL at another file"
        )
    applied = list(range(found + 1, latest + 1))
    for version in applied:
        for sql in _MIGRATIONS[version - 1]:
            yield (_RUN, sql, ())
        yield (
            _RUN,
            "INSERT INTO sagaz_schema_version (version, applied_at) VALUES (?, ?)",
            (version, time.time()),
        )
    return applied


def _run_in_thread(conn: sqlite3.Connection, tx: _Tx[_T], begin: str) -> _T:
    """Run a whole transaction on the connection's own thread (the fast driver)."""
    conn.execute(begin)
    try:
        reply: Any = None
        while True:
            try:
                mode, sql, params = tx.send(reply)
            except StopIteration as stop:
                result: _T = stop.value
                break
            if mode == _ROWS:
                reply = conn.execute(sql, params).fetchall()
            elif mode == _MANY:
                conn.executemany(sql, params)
                reply = None
            else:
                reply = conn.execute(sql, params).rowcount
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


# ----------------------------------------------------------------------------- URLs

_URL_HELP = "use sqlite:///relative/path.db, sqlite:////absolute/path.db or sqlite:///:memory:"


def _parse_url(url: str) -> tuple[str, dict[str, str]]:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "sqlite":
        raise ConfigurationError(f"{url!r} is not an SQLite storage URL; {_URL_HELP}")
    if rest and not rest.startswith("/"):
        raise ConfigurationError(
            f"SQLite storage URL {url!r} names a host, but SQLite URLs have none (put "
            f"three slashes before the path); {_URL_HELP}"
        )
    location, _, query = rest[1:].partition("?")  # "/relative.db" or "//abs/path.db"
    path = unquote(location)
    if not path:
        raise ConfigurationError(f"SQLite storage URL {url!r} has no file path; {_URL_HELP}")
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise ConfigurationError(
            f"SQLite storage URL {url!r} has a malformed query string; the only option "
            "is busy_timeout, e.g. sqlite:///sagaz.db?busy_timeout=10"
        ) from None
    return path, options


# ----------------------------------------------------------------------------- the backend

#: Connections a forked child inherited from its parent. They are never used, closed or
#: garbage-collected in the child (their worker thread did not survive the fork, and
#: SQLite must not close a connection opened in another process), so keep them here.
_INHERITED: list[object] = []


class SQLiteSagaStorage(SagaStorage):
    """Durable storage in one SQLite file, through aiosqlite (``sagaz-core[sqlite]``).

    ``path`` is the database file (its directory is created when missing), or
    ``":memory:"`` for a private in-memory database. ``busy_timeout`` is how many
    seconds a write waits for another process's write lock before it fails with a
    :class:`~sagaz.core.errors.StorageError`.

    One connection serves every task of the process. The storage opens on first use (or
    with ``async with`` / :meth:`ensure_open`) and then brings the schema up to
    :attr:`schema_version`; several processes may open and migrate one file at once.
    """

    durable: ClassVar[bool] = True
    #: The schema version this release writes; older files are migrated when opened.
    schema_version: ClassVar[int] = len(_MIGRATIONS)
    #: Use the fast driver when aiosqlite offers its hook (tests turn it off).
    _fast_driver: ClassVar[bool] = True

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0) -> None:
        super().__init__()
        try:
            import aiosqlite  # noqa: F401
        except ImportError:
            raise ConfigurationError(
                "SQLite storage needs the aiosqlite package, which is not installed; "
                "install it with: pip install 'sagaz-core[sqlite]'"
            ) from None
        self._path = os.fspath(path)
        if not self._path:
            raise ConfigurationError(f"SQLite storage needs a file path; {_URL_HELP}")
        if not (busy_timeout >= 0 and math.isfinite(busy_timeout)):
            raise ConfigurationError(
                f"busy_timeout must be a number of seconds >= 0, not {busy_timeout!r}"
            )
        self._busy_timeout = float(busy_timeout)
        self._db: aiosqlite.Connection | None = None
        self._db_pid = 0  # the process that opened _db
        self._in_thread: Callable[..., Any] | None = None
        self._raw: sqlite3.Connection | None = None
        self._lock: asyncio.Lock | None = None
        self._applied_on_open: list[int] = []

    @classmethod
    def from_url(cls, url: str) -> SQLiteSagaStorage:
        """Create (but do not open) the storage an ``sqlite://`` URL names.

        ``sqlite:///relative.db`` is relative to the working directory,
        ``sqlite:////abs/path.db`` is absolute, ``sqlite:///:memory:`` is a private
        in-memory database; ``?busy_timeout=SECONDS`` sets :attr:`busy_timeout`.

        >>> SQLiteSagaStorage.from_url("sqlite:////var/lib/app/sagas.db").path
        '/var/lib/app/sagas.db'
        """
        path, options = _parse_url(url)
        busy_timeout = 30.0
        for name, value in options.items():
            if name != "busy_timeout":
                raise ConfigurationError(
                    f"SQLite storage URL {url!r} has an unknown option {name!r}; the only "
                    "option is busy_timeout (seconds), e.g. ?busy_timeout=10"
                )
            try:
                busy_timeout = float(value)
            except ValueError:
                raise ConfigurationError(
                    f"SQLite storage URL {url!r}: busy_timeout must be a number of "
                    f"seconds, not {value!r}"
                ) from None
        return cls(path, busy_timeout=busy_timeout)

    @property
    def path(self) -> str:
        """The database file (or ``":memory:"``)."""
        return self._path

    @property
    def busy_timeout(self) -> float:
        """Seconds a write waits for another connection's write lock."""
        return self._busy_timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._path!r})"

    # -- open, close, migrate --------------------------------------------------------

    async def _open(self) -> None:
        import aiosqlite

        self._forget_inherited()
        if self._path != ":memory:":
            try:
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(
                    f"SQLite storage {self._path!r}: cannot create its directory ({exc}); "
                    "create it, or choose a path in a writable directory"
                ) from exc
        connecting = aiosqlite.connect(self._path, timeout=self._busy_timeout, isolation_level=None)
        # aiosqlite's worker thread (the connection itself before aiosqlite 0.21).
        thread = connecting if isinstance(connecting, threading.Thread) else None
        thread = thread or getattr(connecting, "_thread", None)
        if isinstance(thread, threading.Thread):
            # A storage nobody closed must not keep the interpreter from exiting. Every
            # awaited write has committed by then, and SQLite's journal rolls back one
            # that was cut short.
            thread.daemon = True
        try:
            db = await connecting
        except sqlite3.Error as exc:
            # aiosqlite stops its worker thread without waiting; wait for it here, so it
            # never reports to an event loop that has closed meanwhile.
            if isinstance(thread, threading.Thread):
                await asyncio.to_thread(thread.join, 5.0)
            raise self._error("open the database", exc) from exc
        self._db, self._db_pid = db, os.getpid()
        self._lock = asyncio.Lock()
        # The fast driver needs aiosqlite's hook that runs a function on the connection's
        # thread, and the sqlite3 connection itself. Both are private, so look them up
        # defensively: without them the portable driver is used (slower, same results).
        in_thread = getattr(db, "_execute", None)
        raw = getattr(db, "_conn", None)
        if self._fast_driver and callable(in_thread) and isinstance(raw, sqlite3.Connection):
            self._in_thread, self._raw = in_thread, raw
        try:
            try:
                milliseconds = min(int(self._busy_timeout * 1000), 2**31 - 1)
                await db.execute(f"PRAGMA busy_timeout = {milliseconds}")
                await self._enable_wal(db)
                await db.execute("PRAGMA synchronous = NORMAL")
                await db.execute("PRAGMA foreign_keys = ON")
            except sqlite3.Error as exc:
                raise self._error("open the database", exc) from exc
            self._applied_on_open = await self._transact(
                _migrate_tx(self.schema_version), "migrate the schema"
            )
        except BaseException:
            await self._close()
            raise

    async def _enable_wal(self, db: aiosqlite.Connection) -> None:
        """Switch the file to WAL mode (a no-op once it is).

        The switch needs an exclusive lock, and SQLite refuses it at once, without
        waiting, when another process is switching or writing a new file at the same
        moment; so retry, with a short backoff, for up to ``busy_timeout``.
        """
        deadline = time.monotonic() + self._busy_timeout
        delay = 0.005
        while True:
            try:
                await db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def _close(self) -> None:
        self._forget_inherited()
        db, self._db = self._db, None
        self._in_thread = self._raw = None
        if db is not None:
            await db.close()

    def _forget_inherited(self) -> None:
        """In a forked child, set aside the connection the parent opened."""
        if self._db is not None and self._db_pid != os.getpid():
            _INHERITED.append(self._db)
            self._db = self._in_thread = self._raw = None

    async def migrate(self) -> list[int]:
        """Bring the schema up to date (opening the storage does too); return the
        versions applied since the storage was opened (used by ``sagaz migrate``)."""
        await self.ensure_open()
        applied = self._applied_on_open + await self._transact(
            _migrate_tx(self.schema_version), "migrate the schema"
        )
        self._applied_on_open = []
        return applied

    # -- drivers ---------------------------------------------------------------------

    async def _transact(self, tx: _Tx[_T], what: str, *, write: bool = True) -> _T:
        """Run ``tx`` as one transaction; SQLite errors become StorageError."""
        begin = _BEGIN_WRITE if write else _BEGIN_READ
        try:
            if self._in_thread is not None:
                result: _T = await self._in_thread(_run_in_thread, self._raw, tx, begin)
                return result
            return await self._transact_portable(tx, begin)
        except sqlite3.Error as exc:
            raise self._error(what, exc) from exc

    async def _transact_portable(self, tx: _Tx[_T], begin: str) -> _T:
        """Run ``tx`` statement by statement through aiosqlite's public API."""
        db, lock = self._db, self._lock
        if db is None or lock is None:
            raise StorageError(f"{self!r} was closed while in use; open it again")
        async with lock:
            try:
                # Inside the try: a caller cancelled while BEGIN is queued still rolls
                # back after it (aiosqlite runs calls in order).
                await db.execute(begin)
                reply: Any = None
                while True:
                    try:
                        mode, sql, params = tx.send(reply)
                    except StopIteration as stop:
                        result: _T = stop.value
                        break
                    if mode == _ROWS:
                        reply = list(await db.execute_fetchall(sql, params))
                    elif mode == _MANY:
                        await db.executemany(sql, params)
                        reply = None
                    else:
                        reply = (await db.execute(sql, params)).rowcount
                await db.execute("COMMIT")
            except BaseException:
                # Shielded: a cancelled caller must still leave no transaction open.
                with contextlib.suppress(sqlite3.Error):
                    await asyncio.shield(db.execute("ROLLBACK"))
                raise
        return result

    def _error(self, what: str, exc: sqlite3.Error) -> StorageError:
        message = str(exc)
        if "locked" in message or "busy" in message:
            hint = (
                f"another connection held the write lock longer than busy_timeout="
                f"{self._busy_timeout:g}s; raise busy_timeout (?busy_timeout=SECONDS in "
                "the URL) or keep other writers' transactions short"
            )
        elif "not a database" in message:
            hint = "the file is not an SQLite database; point the storage at a new file"
        elif "readonly" in message or "unable to open" in message:
            hint = "check that the file and its directory exist and are writable"
        else:
            return StorageError(f"SQLite storage {self._path!r}: could not {what}: {message}")
        return StorageError(f"SQLite storage {self._path!r}: could not {what}: {message} ({hint})")

    # -- sagas -----------------------------------------------------------------------

    async def create_saga(
        self,
        new: NewSaga,
        transitions: Sequence[Transition] = (),
        events: Sequence[OutboxEvent] = (),
    ) -> tuple[str, bool]:
        """Record a new saga, ``transitions`` and outbox ``events`` in one transaction.

        Race-free across tasks and processes: when ``(saga_name, idempotency_key)`` is
        recorded already, nothing is written and ``(recorded_id, False)`` is returned.
        A saga created RUNNING, or with ``new.leased``, is leased to :attr:`owner_id`.
        """
        rows = _NewRows(new, transitions, events)
        await self.ensure_open()
        return await self._transact(
            _create_tx(rows, self.owner_id, self.lease_seconds), f"create saga {new.saga_id!r}"
        )

    async def record(
        self,
        saga_id: str,
        transitions: Sequence[Transition],
        context: Mapping[str, Any] | None = None,
        events: Sequence[OutboxEvent] = (),
    ) -> bool:
        """Apply ``transitions``, store ``context`` and outbox ``events`` in one transaction.

        Fenced by the lease (:class:`~sagaz.core.storage.base.LeaseLostError` when this
        process does not hold it); renews it, or releases it when the saga finishes.
        Returns whether cancelling the saga was requested. An unknown id writes nothing
        and returns False.
        """
        context_json = (
            None if context is None else _dumps(dict(context), f"the context of saga {saga_id!r}")
        )
        results = _results_json(saga_id, transitions)
        events_rows = _outbox_rows(events) if events else []
        await self.ensure_open()
        return await self._transact(
            _record_tx(
                saga_id,
                transitions,
                context_json,
                results,
                events_rows,
                self.owner_id,
                self.lease_seconds,
            ),
            f"record transitions of saga {saga_id!r}",
        )

    async def load(self, saga_id: str) -> SagaRecord | None:
        """The saga with its steps (in the order they first appeared) and history."""
        await self.ensure_open()
        return await self._transact(_load_tx(saga_id), f"load saga {saga_id!r}", write=False)

    async def list_sagas(self, query: SagaQuery | None = None) -> list[SagaRecord]:
        """Sagas matching ``query``, newest first, with steps but without history."""
        query = query or SagaQuery()
        if query.limit <= 0:
            return []
        await self.ensure_open()
        return await self._transact(_list_tx(query), "list sagas", write=False)

    # -- leases and operations -------------------------------------------------------

    async def claim(self, saga_id: str) -> SagaRecord | None:
        """Lease an unfinished saga with no live lease (or ours) to this process and
        return its full record; None when finished, unknown or leased elsewhere."""
        await self.ensure_open()
        return await self._transact(
            _claim_tx(saga_id, self.owner_id, self.lease_seconds), f"claim saga {saga_id!r}"
        )

    async def claim_runnable(
        self, limit: int, saga_names: Sequence[str] | None = None
    ) -> list[SagaRecord]:
        """Lease up to ``limit`` unfinished sagas with no live lease, oldest first.

        The write lock makes concurrent claimers (tasks or processes) disjoint.
        """
        if limit <= 0 or (saga_names is not None and not saga_names):
            return []
        await self.ensure_open()
        return await self._transact(
            _claim_runnable_tx(limit, saga_names, self.owner_id, self.lease_seconds),
            "claim runnable sagas",
        )

    async def renew_leases(self) -> int:
        """Extend every unfinished saga leased by this process; return how many."""
        await self.ensure_open()
        until = time.time() + self.lease_seconds
        return await self._transact(
            _run_tx(_RENEW_LEASES, (until, self.owner_id, _UNFINISHED)), "renew leases"
        )

    async def release_leases(self, saga_ids: Sequence[str] | None = None) -> int:
        """Drop this process's leases (on ``saga_ids``, or all); return how many."""
        await self.ensure_open()
        if saga_ids is None:
            tx = _run_tx(_RELEASE_ALL, (self.owner_id,))
        else:
            tx = _run_tx(_RELEASE_SOME, (self.owner_id, json.dumps(list(saga_ids))))
        return await self._transact(tx, "release leases")

    async def reopen(self, saga_id: str, transition: Transition) -> SagaRecord | None:
        """Re-drive a FAILED saga: apply ``transition``, lease it here, return it.

        Returns None (writing nothing) when the saga is unknown or not FAILED.
        """
        results = _results_json(saga_id, [transition])
        await self.ensure_open()
        return await self._transact(
            _reopen_tx(
                saga_id,
                transition,
                results,
                self.owner_id,
                self.lease_seconds,
            ),
            f"reopen saga {saga_id!r}",
        )

    async def request_cancel(self, saga_id: str) -> bool:
        """Flag an unfinished saga for cancelling; False if it is finished or unknown."""
        await self.ensure_open()
        changed = await self._transact(
            _run_tx(_REQUEST_CANCEL, (saga_id, _UNFINISHED)), f"cancel saga {saga_id!r}"
        )
        return changed > 0

    # -- trigger events --------------------------------------------------------------

    async def record_trigger_event(
        self, event: TriggerEvent, sagas: Sequence[NewSaga]
    ) -> list[tuple[str, bool]]:
        """Record ``event`` and create ``sagas`` in one transaction.

        Sets ``event.saga_ids`` to the ids returned (recorded ids for duplicates).
        """
        payload_json = _dumps(dict(event.payload), f"the payload of event {event.event_id!r}")
        rows = [_NewRows(new) for new in sagas]
        await self.ensure_open()
        results = await self._transact(
            _trigger_tx(event, payload_json, rows, self.owner_id, self.lease_seconds),
            f"record trigger event {event.event_id!r}",
        )
        event.saga_ids = [saga_id for saga_id, _ in results]
        return results

    async def find_trigger_events(
        self, correlation_id: str, source: str | None = None
    ) -> list[TriggerEvent]:
        """Trigger events recorded with ``correlation_id`` (and ``source``), oldest first."""
        await self.ensure_open()
        return await self._transact(
            _find_trigger_events_tx(correlation_id, source), "find trigger events", write=False
        )

    # -- transactional outbox --------------------------------------------------------

    async def claim_outbox(self, limit: int) -> list[OutboxRecord]:
        """Claim up to ``limit`` publishable events for :attr:`lease_seconds`, by ``seq``.

        Only the earliest PENDING event of a saga is publishable, so each saga's events
        are published in order.
        """
        if limit <= 0:
            return []
        await self.ensure_open()
        return await self._transact(
            _claim_outbox_tx(limit, self.lease_seconds), "claim outbox events"
        )

    async def outbox_sent(self, event_ids: Sequence[str]) -> None:
        """Mark events published."""
        if not event_ids:
            return
        await self.ensure_open()
        await self._transact(
            _run_tx(_OUTBOX_SENT, (time.time(), json.dumps(list(event_ids)))),
            "mark outbox events sent",
        )

    async def outbox_failed(self, event_id: str, error: str, retry_at: float | None) -> None:
        """Record a failed publication: retry at ``retry_at`` or, if None, dead-letter it."""
        await self.ensure_open()
        await self._transact(
            _run_tx(_OUTBOX_FAILED, (error, retry_at, retry_at, event_id)),
            f"record the failed publication of outbox event {event_id!r}",
        )

    async def list_outbox(
        self, status: OutboxStatus | None = None, limit: int = 100
    ) -> list[OutboxRecord]:
        """Outbox events (optionally of one status), oldest first."""
        if limit <= 0:
            return []
        await self.ensure_open()
        value = None if status is None else OutboxStatus(status).value
        rows = await self._transact(
            _rows_tx(_LIST_OUTBOX, (value, value, limit)), "list outbox events", write=False
        )
        return [_outbox_from_row(row) for row in rows]

    async def outbox_counts(self) -> dict[OutboxStatus, int]:
        """How many events are in each status (every status present, zero included)."""
        await self.ensure_open()
        return await self._transact(_outbox_counts_tx(), "count outbox events", write=False)

    async def inbox_mark(self, consumer: str, event_id: str) -> bool:
        """Record that ``consumer`` processed ``event_id``; False if it already had."""
        await self.ensure_open()
        inserted = await self._transact(
            _run_tx(_INBOX_MARK, (consumer, event_id, time.time())),
            f"mark event {event_id!r} processed by {consumer!r}",
        )
        return inserted > 0

    async def inbox_seen(self, consumer: str, event_id: str) -> bool:
        """Whether ``consumer`` has recorded ``event_id`` as processed (a read only)."""
        await self.ensure_open()
        rows = await self._transact(
            _rows_tx(_INBOX_SEEN, (consumer, event_id)),
            f"look up event {event_id!r} for {consumer!r}",
            write=False,
        )
        return bool(rows)

    async def ping(self) -> None:
        """Raise StorageError if the database cannot be read."""
        await self.ensure_open()
        await self._transact(_rows_tx("SELECT 1", ()), "read the database", write=False)
