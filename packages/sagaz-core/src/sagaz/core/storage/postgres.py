"""PostgreSQL storage through psycopg 3 and a connection pool (``sagaz-core[postgres]``).

The production backend: many workers, in many processes and on many machines, share one
database. Sagas are leased to the process running them (``FOR UPDATE SKIP LOCKED`` when
claiming), every write is fenced by the lease, and outbox events are inserted in the same
transaction as the state change that caused them.

The write path costs one round trip and one commit per call. :meth:`create_saga` and
:meth:`PostgresSagaStorage.record` are each a single SQL statement (data-modifying CTEs)
run on an autocommit connection, so the statement is its own transaction: no ``BEGIN``,
no ``COMMIT`` message, nothing left open if the caller is cancelled. Its rows (history
lines, step changes, outbox events) travel as one JSON parameter unpacked with
``json_to_recordset``, so the statement texts (one per combination of the sections a
write has rows for) never change and stay prepared on every connection. How a write
changes a saga and its steps is computed in Python with
:func:`sagaz.core.records.apply_transition` (the rule every backend follows) and merged
into the stored rows by the statement itself, so nothing is read before writing:

* the saga row's ``UPDATE ... WHERE lease_owner = <this process>`` is the fence; the
  history, step and outbox rows are inserted only from its result (no lease, no write),
  and it reserves the history sequence numbers (``sagaz_sagas.history_seq``);
* a step row is upserted, each field either overwritten by the new transitions or kept,
  as :func:`~sagaz.core.records.apply_transition` would.

Writes of one saga from this process are applied in the order they were called (the
engine may call :meth:`PostgresSagaStorage.record` from several tasks of one saga at
once; two pooled connections would otherwise commit them in either order).

Times are epoch seconds (``double precision``) from this process's clock, as the other
backends; keep the clocks of the machines sharing a database in sync (NTP) — a skew
shortens or lengthens leases by as much.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, ClassVar, Final
from urllib.parse import unquote, unquote_plus

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.conninfo import conninfo_to_dict
    from psycopg_pool import AsyncConnectionPool, PoolTimeout
except ImportError as _exc:  # pragma: no cover - depends on the installed extra
    raise ImportError(
        "PostgreSQL storage needs psycopg 3 and psycopg-pool, which are not installed; "
        "install them with: pip install 'sagaz-core[postgres]'"
    ) from _exc

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
    StepRecord,
    Transition,
    TransitionKind,
    TriggerEvent,
    derive_change,
)
from sagaz.core.status import TERMINAL_STATUSES, SagaStatus, StepStatus
from sagaz.core.storage.base import LeaseLostError, SagaStorage, current_pid
from sagaz.core.storage.migrations_postgres import MIGRATIONS, SCHEMA_VERSION

__all__ = ["PostgresSagaStorage"]

_Conn = psycopg.AsyncConnection[tuple[Any, ...]]
_Pool = AsyncConnectionPool[_Conn]

# --------------------------------------------------------------------------- SQL

_UNFINISHED: Final = "('PENDING', 'RUNNING', 'COMPENSATING')"
_TERMINAL: Final = "('COMPLETED', 'COMPENSATED', 'FAILED')"
assert {s.value for s in TERMINAL_STATUSES} == {"COMPLETED", "COMPENSATED", "FAILED"}

#: Key of the advisory lock that serialises migrations across processes ("sagazmig").
_MIGRATION_LOCK: Final = 0x7361_6761_7A6D_6967

_CREATE_VERSION_TABLE: Final = """CREATE TABLE IF NOT EXISTS sagaz_schema_version (
    version integer NOT NULL PRIMARY KEY,
    applied_at double precision NOT NULL
)"""
_SELECT_VERSION: Final = "SELECT COALESCE(MAX(version), 0) FROM sagaz_schema_version"
_INSERT_VERSION: Final = "INSERT INTO sagaz_schema_version (version, applied_at) VALUES (%s, %s)"

_SAGA_COLUMNS: Final = (
    "saga_id, saga_name, status, context, correlation_id, idempotency_key, created_at, "
    "updated_at, error, failed_step, recoveries, lease_owner, lease_expires_at, "
    "cancel_requested, trace_context"
)


def _columns(alias: str) -> str:
    return ", ".join(f"{alias}.{c}" for c in _SAGA_COLUMNS.split(", "))


def _steps_json(alias: str) -> str:
    """A JSON array of a saga's steps, in the order they first appeared."""
    return f"""(SELECT json_agg(json_build_array(st.name, st.status, st.attempts, st.result,
        st.error, st.started_at, st.finished_at, st.compensation_attempts,
        st.compensation_error) ORDER BY st.ord)
    FROM sagaz_steps st WHERE st.saga_id = {alias}.saga_id)"""  # noqa: S608 - constants only


def _history_json(alias: str) -> str:
    """A JSON array of a saga's history lines, by seq."""
    return f"""(SELECT json_agg(json_build_array(h.seq, h.at, h.kind, h.step, h.attempt,
        h.error) ORDER BY h.seq)
    FROM sagaz_history h WHERE h.saga_id = {alias}.saga_id)"""  # noqa: S608


# The rows a write adds travel as JSON arrays of objects, one parameter per table: %(h)s
# history lines, %(s)s step changes, %(e)s outbox events. A statement is a chain of CTEs:
# ``w`` writes the saga row and returns one row (``base``: the history seq before this
# write), or none when nothing may be written; each later section inserts its rows only
# from that row. Sections with no rows are left out of the statement (see _statement),
# so a write never even opens the tables it does not change.
_HISTORY_CTE: Final = """hist AS (
    INSERT INTO sagaz_history (saga_id, seq, at, kind, step, attempt, error)
    SELECT %(saga_id)s, w.base + h.i, h.at, h.kind, h.step, h.attempt, h.error
    FROM w, ROWS FROM (json_to_recordset(%(h)s::json)
        AS (at float8, kind text, step text, attempt int, error text))
        WITH ORDINALITY AS h (at, kind, step, attempt, error, i)
)"""
_STEP_ROWS_CTE: Final = """sd AS MATERIALIZED (
    SELECT * FROM json_to_recordset(%(s)s::json) AS x (name text, pos int,
        status text, attempts int, result jsonb, error text, started_at float8,
        finished_at float8, comp_attempts int, comp_error text, mask int)
)"""
_STEPS_INSERT: Final = """steps AS (
    INSERT INTO sagaz_steps AS cur (saga_id, name, ord, status, attempts, result, error,
        started_at, finished_at, compensation_attempts, compensation_error)
    SELECT %(saga_id)s, sd.name, w.base + sd.pos, sd.status, sd.attempts, sd.result,
        sd.error, sd.started_at, sd.finished_at, sd.comp_attempts, sd.comp_error
    FROM w, sd"""
# A step already recorded keeps each field the new transitions do not set; ``mask``
# says which they set (bits as in _STEP_FIELDS).
_STEPS_MERGE: Final = """
    ON CONFLICT (saga_id, name) DO UPDATE SET
        status = excluded.status,
        started_at = COALESCE(cur.started_at, excluded.started_at),
        (attempts, result, error, finished_at, compensation_attempts, compensation_error)
        = (SELECT
            CASE WHEN sd.mask & 1 <> 0 THEN excluded.attempts ELSE cur.attempts END,
            CASE WHEN sd.mask & 2 <> 0 THEN excluded.result ELSE cur.result END,
            CASE WHEN sd.mask & 4 <> 0 THEN excluded.error ELSE cur.error END,
            CASE WHEN sd.mask & 8 <> 0 THEN excluded.finished_at ELSE cur.finished_at END,
            CASE WHEN sd.mask & 16 <> 0 THEN excluded.compensation_attempts
                ELSE cur.compensation_attempts END,
            CASE WHEN sd.mask & 32 <> 0 THEN excluded.compensation_error
                ELSE cur.compensation_error END
           FROM sd WHERE sd.name = excluded.name)"""
_OUTBOX_CTE: Final = """ob AS (
    INSERT INTO sagaz_outbox (event_id, saga_id, event_type, payload, correlation_id,
        created_at)
    SELECT e.event_id, e.saga_id, e.event_type, e.payload, e.correlation_id, e.created_at
    FROM w, ROWS FROM (json_to_recordset(%(e)s::json) AS (event_id text,
        saga_id text, event_type text, payload jsonb, correlation_id text,
        created_at float8))
        WITH ORDINALITY AS e (event_id, saga_id, event_type, payload, correlation_id,
            created_at, i)
    ORDER BY e.i
    ON CONFLICT (event_id) DO NOTHING
)"""

# create_saga: insert the saga unless its id or (saga_name, idempotency_key) exists.
_CREATE_HEAD: Final = """INSERT INTO sagaz_sagas (saga_id, saga_name, status, context,
        correlation_id, idempotency_key, created_at, updated_at, error, failed_step,
        recoveries, lease_owner, lease_expires_at, history_seq, trace_context)
    VALUES (%(saga_id)s, %(saga_name)s, %(status)s, %(context)s::jsonb,
        %(correlation_id)s, %(key)s::text, %(created_at)s::float8, %(updated_at)s::float8,
        %(error)s, %(failed_step)s, %(recoveries)s::int, %(owner)s::text,
        %(lease_until)s::float8, %(n)s::int, %(trace_context)s::jsonb)
    ON CONFLICT DO NOTHING
    RETURNING 0 AS base"""
_SELECT_BY_KEY: Final = (
    "SELECT saga_id FROM sagaz_sagas WHERE saga_name = %s AND idempotency_key = %s"
)


def _update_head(where: str, lease: str) -> str:
    """The UPDATE that applies transitions to an existing saga row (record, reopen)."""
    return f"""UPDATE sagaz_sagas SET
        status = COALESCE(%(status)s::text, status),
        updated_at = COALESCE(%(updated_at)s::float8, updated_at),
        recoveries = recoveries + %(recoveries)s::int,
        error = CASE WHEN %(error)s::text IS NULL THEN error
            WHEN error IS NULL THEN %(error)s::text
            ELSE error || '; ' || %(error)s::text END,
        failed_step = COALESCE(failed_step, %(failed_step)s::text),
        context = COALESCE(%(context)s::jsonb, context),
        history_seq = history_seq + %(n)s::int,
        {lease}
    WHERE saga_id = %(saga_id)s AND {where}
    RETURNING history_seq - %(n)s::int AS base, cancel_requested"""  # noqa: S608


_HEADS: Final[dict[str, str]] = {
    "create": _CREATE_HEAD,
    # record: fenced by the lease; renews it, or releases it on a terminal status.
    "record": _update_head(
        "lease_owner = %(owner)s::text",
        f"""lease_owner = CASE WHEN COALESCE(%(status)s::text, status) IN {_TERMINAL}
            THEN NULL ELSE lease_owner END,
        lease_expires_at = CASE WHEN COALESCE(%(status)s::text, status) IN {_TERMINAL}
            THEN NULL ELSE %(lease_until)s::float8 END""",
    ),
    # reopen: only a FAILED saga; leases it to this process.
    "reopen": _update_head(
        "status = 'FAILED'",
        "lease_owner = %(owner)s::text, lease_expires_at = %(lease_until)s::float8",
    ),
}
_SELECT_LEASE: Final = "SELECT lease_owner FROM sagaz_sagas WHERE saga_id = %s"

#: (history, steps, outbox): which sections a write has rows for.
_Sections = tuple[bool, bool, bool]


def _statement(kind: str, sections: _Sections) -> str:
    """The one statement of a write of ``kind`` with rows in ``sections``."""
    history, steps, outbox = sections
    parts = [f"w AS (\n    {_HEADS[kind]}\n)"]
    if history:
        parts.append(_HISTORY_CTE)
    if steps:
        parts.append(_STEP_ROWS_CTE)
        parts.append(_STEPS_INSERT + ("" if kind == "create" else _STEPS_MERGE) + "\n)")
    if outbox:
        parts.append(_OUTBOX_CTE)
    tail = "SELECT base FROM w" if kind == "create" else "SELECT cancel_requested FROM w"
    return "WITH " + ",\n".join(parts) + "\n" + tail


_STATEMENTS: Final[dict[tuple[str, _Sections], str]] = {
    (kind, (h, s, e)): _statement(kind, (h, s, e))
    for kind in _HEADS
    for h in (False, True)
    for s in (False, True)
    for e in (False, True)
}

_LOAD: Final = f"""SELECT {_columns("s")}, {_steps_json("s")}, {_history_json("s")}
FROM sagaz_sagas s WHERE s.saga_id = %s"""  # noqa: S608

_CLAIM: Final = f"""WITH c AS (
    UPDATE sagaz_sagas SET lease_owner = %(owner)s, lease_expires_at = %(until)s
    WHERE saga_id = %(saga_id)s AND status IN {_UNFINISHED}
        AND (lease_owner IS NULL OR lease_owner = %(owner)s
             OR COALESCE(lease_expires_at, 0) <= %(now)s)
    RETURNING {_SAGA_COLUMNS}
)
SELECT {_columns("c")}, {_steps_json("c")}, {_history_json("c")} FROM c"""  # noqa: S608

_CLAIM_RUNNABLE: Final = f"""WITH pick AS (
    SELECT saga_id FROM sagaz_sagas
    WHERE status IN {_UNFINISHED}
        AND (lease_owner IS NULL OR COALESCE(lease_expires_at, 0) <= %(now)s)
        AND lease_owner IS DISTINCT FROM %(owner)s::text
        AND (%(names)s::text[] IS NULL OR saga_name = ANY (%(names)s::text[]))
    ORDER BY created_at, row_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), c AS (
    UPDATE sagaz_sagas s SET lease_owner = %(owner)s, lease_expires_at = %(until)s
    FROM pick WHERE s.saga_id = pick.saga_id
    RETURNING {_columns("s")}, s.row_id
)
SELECT {_columns("c")}, {_steps_json("c")}, {_history_json("c")}
FROM c ORDER BY c.created_at, c.row_id"""  # noqa: S608

_RENEW: Final = f"""UPDATE sagaz_sagas SET lease_expires_at = %(until)s
WHERE lease_owner = %(owner)s AND status IN {_UNFINISHED}"""  # noqa: S608
_RELEASE: Final = (
    "UPDATE sagaz_sagas SET lease_owner = NULL, lease_expires_at = NULL "
    "WHERE lease_owner = %(owner)s "
    "AND (%(ids)s::text[] IS NULL OR saga_id = ANY (%(ids)s::text[]))"
)
_REQUEST_CANCEL: Final = (
    "UPDATE sagaz_sagas SET cancel_requested = true "  # noqa: S608 - constants only
    f"WHERE saga_id = %s AND status IN {_UNFINISHED}"
)

_LIST: Final = f"SELECT {_columns('s')}, {_steps_json('s')} FROM sagaz_sagas s"  # noqa: S608

_UPSERT_TRIGGER_EVENT: Final = """INSERT INTO sagaz_trigger_events
    (event_id, source, correlation_id, payload, saga_ids, created_at)
VALUES (%s, %s, %s, %s::jsonb, %s::text[], %s)
ON CONFLICT (event_id) DO UPDATE SET source = excluded.source,
    correlation_id = excluded.correlation_id, payload = excluded.payload,
    saga_ids = excluded.saga_ids, created_at = excluded.created_at"""
_FIND_TRIGGER_EVENTS: Final = """SELECT event_id, source, correlation_id, payload, saga_ids,
    created_at FROM sagaz_trigger_events
WHERE correlation_id = %(correlation_id)s
    AND (%(source)s::text IS NULL OR source = %(source)s::text)
ORDER BY row_id"""

_OUTBOX_COLUMNS: Final = (
    "seq, event_id, saga_id, event_type, payload, correlation_id, created_at, status, "
    "attempts, last_error, next_attempt_at, sent_at"
)
# Publishable: PENDING, due, not claimed by a live claim, and no earlier PENDING event
# of the same saga (DEAD and SENT events do not block).
_CLAIM_OUTBOX: Final = f"""WITH pick AS (
    SELECT o.seq FROM sagaz_outbox o
    WHERE o.status = 'PENDING' AND o.next_attempt_at <= %(now)s
        AND (o.claimed_until IS NULL OR o.claimed_until <= %(now)s)
        AND NOT EXISTS (SELECT FROM sagaz_outbox p
            WHERE p.saga_id = o.saga_id AND p.status = 'PENDING' AND p.seq < o.seq)
    ORDER BY o.seq
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE sagaz_outbox o SET claimed_until = %(until)s FROM pick WHERE o.seq = pick.seq
RETURNING {", ".join(f"o.{c}" for c in _OUTBOX_COLUMNS.split(", "))}"""  # noqa: S608
_OUTBOX_SENT: Final = """UPDATE sagaz_outbox
SET status = 'SENT', attempts = attempts + 1, sent_at = %(now)s, claimed_until = NULL
WHERE event_id = ANY (%(ids)s::text[])"""
_OUTBOX_FAILED: Final = """UPDATE sagaz_outbox
SET attempts = attempts + 1, last_error = %(error)s, claimed_until = NULL,
    status = CASE WHEN %(retry_at)s::float8 IS NULL THEN 'DEAD' ELSE status END,
    next_attempt_at = COALESCE(%(retry_at)s::float8, next_attempt_at)
WHERE event_id = %(event_id)s"""
_LIST_OUTBOX: Final = f"""SELECT {_OUTBOX_COLUMNS} FROM sagaz_outbox
ORDER BY seq LIMIT %(limit)s"""  # noqa: S608
_LIST_OUTBOX_OF: Final = f"""SELECT {_OUTBOX_COLUMNS} FROM sagaz_outbox
WHERE status = %(status)s ORDER BY seq LIMIT %(limit)s"""  # noqa: S608
_OUTBOX_COUNTS: Final = "SELECT status, count(*) FROM sagaz_outbox GROUP BY status"
_INBOX_MARK: Final = """INSERT INTO sagaz_inbox (consumer, event_id, processed_at)
VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"""
_INBOX_SEEN: Final = "SELECT EXISTS (SELECT FROM sagaz_inbox WHERE consumer = %s AND event_id = %s)"

# --------------------------------------------------------------------------- rows


def _text(value: str | None) -> str | None:
    """An error message PostgreSQL can store (text cannot hold NUL characters)."""
    if value is None or "\x00" not in value:
        return value
    return value.replace("\x00", "\ufffd")


def _json_problem(value: Any) -> str | None:
    """Why ``value`` cannot be stored as JSON, or None if it can."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return str(exc) or type(exc).__name__
    return None


def _not_json(what: str, problem: str) -> StorageError:
    return StorageError(
        f"cannot store {what} as JSON ({problem}); durable storage records it as JSON, so "
        "keep only str, int, finite float, bool, None, list and dict values (with str keys) "
        "there, e.g. an id or an ISO-8601 string instead of an object"
    )


def _dumps(value: Any, what: str) -> str:
    """``value`` as compact JSON, or a StorageError that names ``what``."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise _not_json(what, str(exc) or type(exc).__name__) from None


def _dump_rows(rows: list[dict[str, Any]]) -> str | None:
    try:
        return json.dumps(rows, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None


def _rows(
    saga_id: str,
    change: RecordChange,
    transitions: Sequence[Transition],
    events: Sequence[OutboxEvent],
    *,
    merge: bool,
) -> tuple[dict[str, str], _Sections]:
    """The JSON rows of one write (``h`` history lines, ``s`` step changes, ``e`` outbox
    events: only those it has), and which of the three it has. With ``merge``, each step
    row says which fields the transitions set (``mask``, the bits of StepField)."""
    rows: dict[str, str | None] = {}
    if transitions:
        rows["h"] = _dump_rows(
            [
                {
                    "at": t.at,
                    "kind": t.kind.value,
                    "step": t.step,
                    "attempt": t.attempt,
                    "error": _text(t.error),
                }
                for t in transitions
            ]
        )
    if change.steps:
        rows["s"] = _dump_rows(
            [
                {
                    "name": name,
                    "pos": c.first,
                    "status": step.status.value,
                    "attempts": step.attempts,
                    "result": step.result,
                    "error": _text(step.error),
                    "started_at": step.started_at,
                    "finished_at": step.finished_at,
                    "comp_attempts": step.compensation_attempts,
                    "comp_error": _text(step.compensation_error),
                    "mask": int(c.fields) if merge else 0,
                }
                for name, c in change.steps.items()
                for step in (c.step,)
            ]
        )
        if rows["s"] is None:
            for name, c in change.steps.items():
                problem = _json_problem(c.step.result)
                if problem is not None:
                    raise _not_json(f"the result of step {name!r} of saga {saga_id!r}", problem)
    if events:
        rows["e"] = _dump_rows(
            [
                {
                    "event_id": e.event_id,
                    "saga_id": e.saga_id,
                    "event_type": e.event_type,
                    "payload": e.payload,
                    "correlation_id": e.correlation_id,
                    "created_at": e.created_at,
                }
                for e in events
            ]
        )
        if rows["e"] is None:
            for e in events:
                problem = _json_problem(e.payload)
                if problem is not None:
                    raise _not_json(f"the payload of outbox event {e.event_type!r}", problem)
    done: dict[str, str] = {}
    for key, text in rows.items():
        if text is None:  # not a result or a payload: a transition's own field
            raise _not_json(f"the transitions of saga {saga_id!r}", "not JSON-serialisable")
        done[key] = text
    return done, ("h" in done, "s" in done, "e" in done)


def _write_params(
    kind: str,
    saga_id: str,
    transitions: Sequence[Transition],
    context: Mapping[str, Any] | None,
    events: Sequence[OutboxEvent],
) -> tuple[str, dict[str, Any]]:
    """The statement of a ``kind`` write (record, reopen) and its parameters: the change
    ``transitions`` make, as deltas.

    The change is derived (derive_change) from a blank record: that gives the saga's new
    status (if any changed it), the errors to append, the first failed step, the
    recoveries to add, and each touched step's new values and the fields set; the
    statement merges them into the stored row the way apply_transition would have.
    """
    change = derive_change(SagaRecord(saga_id, "", SagaStatus.PENDING, {}), transitions)
    scratch = change.record
    rows, sections = _rows(saga_id, change, transitions, events, merge=True)
    return _STATEMENTS[kind, sections], {
        "saga_id": saga_id,
        "status": None if change.status is None else change.status.value,
        "updated_at": transitions[-1].at if transitions else None,
        "recoveries": scratch.recoveries,
        "error": _text(scratch.error),
        "failed_step": scratch.failed_step,
        "context": (
            None if context is None else _dumps(dict(context), f"the context of saga {saga_id!r}")
        ),
        "n": len(transitions),
        **rows,
    }


def _float(value: Any) -> float | None:
    # JSON renders an integral double as an integer; the record holds floats.
    return None if value is None else float(value)


def _saga_from_row(row: Sequence[Any]) -> SagaRecord:
    record = SagaRecord(
        saga_id=row[0],
        saga_name=row[1],
        status=SagaStatus(row[2]),
        context=row[3],
        correlation_id=row[4],
        idempotency_key=row[5],
        created_at=row[6],
        updated_at=row[7],
        error=row[8],
        failed_step=row[9],
        recoveries=row[10],
        lease_owner=row[11],
        lease_expires_at=row[12],
        cancel_requested=row[13],
        trace_context=row[14],
    )
    steps = row[15] if len(row) > 15 else None
    if steps:
        for name, status, attempts, result, error, started, finished, c_att, c_err in steps:
            record.steps[name] = StepRecord(
                name=name,
                status=StepStatus(status),
                attempts=attempts,
                result=result,
                error=error,
                started_at=_float(started),
                finished_at=_float(finished),
                compensation_attempts=c_att,
                compensation_error=c_err,
            )
    history = row[16] if len(row) > 16 else None
    if history:
        record.history = [
            HistoryEntry(seq, float(at), TransitionKind(kind), step, attempt, error)
            for seq, at, kind, step, attempt, error in history
        ]
    return record


def _outbox_from_row(row: Sequence[Any]) -> OutboxRecord:
    return OutboxRecord(
        seq=row[0],
        event=OutboxEvent(
            event_id=row[1],
            saga_id=row[2],
            event_type=row[3],
            payload=row[4],
            correlation_id=row[5],
            created_at=row[6],
        ),
        status=OutboxStatus(row[7]),
        attempts=row[8],
        last_error=row[9],
        next_attempt_at=row[10],
        sent_at=row[11],
    )


#: Pools inherited from a parent process (see _forget_inherited_pool).
_INHERITED: list[Any] = []


class _Gate:
    """A FIFO lock of one saga's writes, dropped when nobody holds or waits for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


# --------------------------------------------------------------------------- URL parsing

_URL_HELP: Final = (
    "use postgresql://user:password@host:5432/dbname, optionally with "
    "?pool_min=1&pool_max=10&pool_timeout=5"
)
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    """Split off Sagaz's own query options; the rest of the URL goes to libpq as is."""
    scheme, sep, rest = url.partition("://")
    lowered = scheme.lower()
    if not sep or not (lowered in {"postgresql", "postgres"} or lowered.startswith("postgresql+")):
        raise ConfigurationError(f"{url!r} is not a PostgreSQL storage URL; {_URL_HELP}")
    location, _, query = rest.partition("?")
    options: dict[str, str] = {}
    kept: list[str] = []
    for part in query.split("&") if query else ():
        if not part:
            continue
        key, _, value = part.partition("=")
        name = unquote_plus(key)
        if name in PostgresSagaStorage.URL_OPTIONS:
            options[name] = unquote(value)
        else:
            kept.append(part)
    conninfo = "postgresql://" + location + ("?" + "&".join(kept) if kept else "")
    return conninfo, options


def _option(url: str, name: str, value: str, kind: type[int] | type[float]) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ConfigurationError(
            f"PostgreSQL storage URL {url!r}: {name} must be a "
            f"{'whole number' if kind is int else 'number'}, not {value!r}"
        ) from None


# --------------------------------------------------------------------------- the backend


class PostgresSagaStorage(SagaStorage):
    """Durable storage in PostgreSQL through psycopg 3 and a pool (``sagaz-core[postgres]``).

    ``conninfo`` is a libpq URL or key/value string. The pool keeps between
    ``pool_min`` and ``pool_max`` connections; a call waits up to ``pool_timeout``
    seconds for one (also the limit on connecting when opening): 5 s by default, so a
    web request during a database outage gets a 503 within seconds instead of hanging. With
    ``migrate_on_open`` (the default) opening applies missing schema migrations;
    otherwise run ``sagaz migrate`` (:meth:`migrate`) before use.

    The backend opens lazily on first use (or with ``async with`` /
    :meth:`ensure_open`), once however many tasks ask; migrations run under a
    PostgreSQL advisory lock, so many processes may open a new database at once.
    """

    durable: ClassVar[bool] = True
    #: The schema version this release writes.
    schema_version: ClassVar[int] = SCHEMA_VERSION
    #: The query options :meth:`from_url` understands (removed before connecting).
    URL_OPTIONS: ClassVar[frozenset[str]] = frozenset(
        {"pool_min", "pool_max", "pool_timeout", "migrate_on_open"}
    )

    def __init__(
        self,
        conninfo: str = "",
        *,
        pool_min: int = 1,
        pool_max: int = 10,
        pool_timeout: float = 5.0,
        migrate_on_open: bool = True,
    ) -> None:
        super().__init__()
        if pool_min < 0:
            raise ConfigurationError(f"pool_min must be >= 0, not {pool_min!r}")
        if pool_max < 1 or pool_max < pool_min:
            raise ConfigurationError(
                f"pool_max must be >= 1 and >= pool_min ({pool_min}), not {pool_max!r}"
            )
        if not pool_timeout > 0:
            raise ConfigurationError(
                f"pool_timeout must be a number of seconds > 0, not {pool_timeout!r}"
            )
        self._conninfo = conninfo
        self.pool_min = pool_min
        self.pool_max = pool_max
        self.pool_timeout = float(pool_timeout)
        self.migrate_on_open = migrate_on_open
        self._pool: _Pool | None = None
        self._applied_on_open: list[int] = []
        self._gates: dict[str, _Gate] = {}
        self._pid = os.getpid()

    @classmethod
    def from_url(cls, url: str) -> PostgresSagaStorage:
        """Create (but do not open) the storage a ``postgresql://`` URL names.

        ``postgres://`` and ``postgresql+<driver>://`` are accepted too. The query
        options ``pool_min``, ``pool_max``, ``pool_timeout`` (seconds) and
        ``migrate_on_open`` (true/false) configure the storage and are removed from the
        URL; every other option (``sslmode``, ``application_name``, ...) goes to libpq.

        >>> s = PostgresSagaStorage.from_url("postgresql://app@db/sagas?pool_max=20")
        >>> s.pool_max, s.dsn
        (20, 'user=app dbname=sagas host=db')
        """
        conninfo, options = _split_url(url)
        kwargs: dict[str, Any] = {}
        for name in ("pool_min", "pool_max"):
            if name in options:
                kwargs[name] = _option(url, name, options[name], int)
        if "pool_timeout" in options:
            kwargs["pool_timeout"] = _option(url, "pool_timeout", options["pool_timeout"], float)
        if "migrate_on_open" in options:
            flag = options["migrate_on_open"].strip().lower()
            if flag not in _TRUE | _FALSE:
                raise ConfigurationError(
                    f"PostgreSQL storage URL {url!r}: migrate_on_open must be true or "
                    f"false, not {options['migrate_on_open']!r}"
                )
            kwargs["migrate_on_open"] = flag in _TRUE
        return cls(conninfo, **kwargs)

    @property
    def dsn(self) -> str:
        """The connection parameters without the password (for logs and messages)."""
        try:
            params = conninfo_to_dict(self._conninfo)
        except psycopg.Error:
            return "<invalid conninfo>"
        params.pop("password", None)
        return " ".join(f"{k}={v}" for k, v in params.items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dsn!r})"

    # ----------------------------------------------------------------- open / close

    async def _open(self) -> None:
        try:
            async with asyncio.timeout(self.pool_timeout):
                first = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        except TimeoutError:
            raise StorageError(
                f"PostgreSQL storage {self.dsn!r}: could not connect within "
                f"{self.pool_timeout:g}s (pool_timeout); check that the server is reachable"
            ) from None
        except psycopg.Error as exc:
            raise self._error("connect", exc) from exc
        try:
            if self.migrate_on_open:
                self._applied_on_open = await self._migrate(first)
        except psycopg.Error as exc:
            raise self._error("migrate the schema", exc) from exc
        finally:
            await first.close()
        pool: _Pool = AsyncConnectionPool(
            self._conninfo,
            min_size=self.pool_min,
            max_size=self.pool_max,
            timeout=self.pool_timeout,
            kwargs={"autocommit": True},
            configure=_configure,
            name="sagaz",
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=self.pool_timeout)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, psycopg.Error):
                raise self._error("open the connection pool", exc) from exc
            raise
        self._pool = pool
        self._pid = os.getpid()

    def _forget_inherited_pool(self) -> None:
        """In a forked child: leave the parent's pool alone and open a new one on use.

        The inherited connections share their sockets with the parent; closing them here
        (or letting them be garbage-collected, which closes them) would end the parent's
        sessions, so they are kept referenced, unused, for the life of the child.
        """
        if self._pool is not None:
            _INHERITED.append(self._pool)
        self._pool = None
        self._opened = False
        self._open_lock = None
        self._keeper = None
        self._gates = {}
        self._pid = os.getpid()

    async def _close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def migrate(self) -> list[int]:
        """Apply the missing schema migrations; return the versions applied.

        Versions applied when this storage opened (``migrate_on_open``) and not yet
        reported by a call to this method are included, so ``sagaz migrate`` reports
        what it did however the storage was opened. Safe to run from many processes
        at once (an advisory lock serialises them; each version is applied once).
        """
        async with self._connection("migrate the schema") as conn:
            applied = await self._migrate(conn)
        reported, self._applied_on_open = self._applied_on_open, []
        return reported + applied

    async def _migrate(self, conn: _Conn) -> list[int]:
        applied: list[int] = []
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute(_CREATE_VERSION_TABLE)
            cur = await conn.execute(_SELECT_VERSION)
            row = await cur.fetchone()
            found = int(row[0]) if row else 0
            if found > SCHEMA_VERSION:
                raise StorageError(
                    f"PostgreSQL storage {self.dsn!r}: the database schema is at version "
                    f"{found}, newer than this sagaz-core supports ({SCHEMA_VERSION}); "
                    "upgrade sagaz-core in this environment (pip install -U sagaz-core)"
                )
            now = time.time()
            for migration in MIGRATIONS[found:]:
                for statement in migration.statements:
                    await conn.execute(statement)
                await conn.execute(_INSERT_VERSION, (migration.version, now))
                applied.append(migration.version)
        return applied

    @contextlib.asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[_Conn]:
        """A pooled connection, always returned; psycopg errors become StorageError."""
        if self._pid != current_pid():
            self._forget_inherited_pool()
        if not self._opened:
            await self.ensure_open()
        pool = self._pool
        if pool is None:
            raise StorageError(f"{self!r} is closed; open it again before using it")
        try:
            async with pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise self._error(what, exc) from exc

    def _error(self, what: str, exc: psycopg.Error) -> StorageError:
        message = str(exc).strip() or type(exc).__name__
        if isinstance(exc, PoolTimeout):
            hint = (
                f"all {self.pool_max} pooled connections stayed busy for "
                f"{self.pool_timeout:g}s; raise pool_max (?pool_max=N) or pool_timeout, "
                "or look for slow queries"
            )
        elif isinstance(exc, pg_errors.UndefinedTable):
            hint = "the schema is missing: run `sagaz migrate` or open with migrate_on_open"
        elif isinstance(exc, pg_errors.UntranslatableCharacter):
            hint = "PostgreSQL jsonb cannot hold the NUL character (\\u0000) in a string"
        elif isinstance(exc, psycopg.OperationalError):
            hint = "check that the server is running and the URL (host, port, user, dbname)"
        else:
            hint = "see the PostgreSQL error above"
        return StorageError(
            f"PostgreSQL storage {self.dsn!r}: could not {what}: {message} ({hint})"
        )

    # ----------------------------------------------------------------- sagas

    async def create_saga(
        self,
        new: NewSaga,
        transitions: Sequence[Transition] = (),
        events: Sequence[OutboxEvent] = (),
    ) -> tuple[str, bool]:
        """Record a new saga, ``transitions`` and outbox ``events`` in one statement.

        Race-free across tasks and processes: the insert does nothing when the saga's
        ``(saga_name, idempotency_key)`` is recorded, and the recorded id is returned.
        """
        statement, params = self._create_params(new, transitions, events)
        async with self._connection(f"create saga {new.saga_id!r}") as conn:
            return await self._create(conn, new, statement, params)

    def _create_params(
        self, new: NewSaga, transitions: Sequence[Transition], events: Sequence[OutboxEvent]
    ) -> tuple[str, dict[str, Any]]:
        change = derive_change(SagaRecord.from_new(new), transitions)
        record = change.record
        leased = (new.leased or new.status is SagaStatus.RUNNING) and not change.finished
        rows, sections = _rows(new.saga_id, change, transitions, events, merge=False)
        return _STATEMENTS["create", sections], {
            "saga_id": new.saga_id,
            "saga_name": new.saga_name,
            "status": record.status.value,
            "context": _dumps(dict(new.context), f"the context of saga {new.saga_id!r}"),
            "correlation_id": new.correlation_id,
            "key": new.idempotency_key,
            "trace_context": None if new.trace_context is None else json.dumps(new.trace_context),
            "created_at": new.created_at,
            "updated_at": record.updated_at,
            "error": _text(record.error),
            "failed_step": record.failed_step,
            "recoveries": record.recoveries,
            "owner": self.owner_id if leased else None,
            "lease_until": time.time() + self.lease_seconds if leased else None,
            "n": len(transitions),
            **rows,
        }

    async def _create(
        self, conn: _Conn, new: NewSaga, statement: str, params: dict[str, Any]
    ) -> tuple[str, bool]:
        cur = await conn.execute(statement, params)
        if await cur.fetchone() is not None:
            return new.saga_id, True
        if new.idempotency_key is not None:
            # Nothing inserted: the key (or the id) is recorded. A read of its own (the
            # rare path): it sees a row committed after the insert's snapshot was taken.
            cur = await conn.execute(_SELECT_BY_KEY, (new.saga_name, new.idempotency_key))
            found = await cur.fetchone()
            # The key's saga being this very id means the id is reused: refused below, as
            # on every backend (a repeated start brings a new id and the same key).
            if found is not None and found[0] != new.saga_id:
                return str(found[0]), False
        raise StorageError(
            f"saga id {new.saga_id!r} is already recorded (for another saga); give every new "
            "saga a fresh id (uuid4) and pass an idempotency_key to make a start repeatable"
        )

    async def record(
        self,
        saga_id: str,
        transitions: Sequence[Transition],
        context: Mapping[str, Any] | None = None,
        events: Sequence[OutboxEvent] = (),
    ) -> bool:
        """Append ``transitions``, the new ``context`` and outbox ``events`` atomically.

        One statement, one commit. Fenced by the lease (:class:`LeaseLostError` when this
        process does not hold it); renews the lease, or releases it when the saga
        reaches a terminal status. Returns whether an operator asked to cancel the saga.
        An unknown ``saga_id`` is ignored (returns False), as in the in-memory backend.
        """
        statement, params = _write_params("record", saga_id, transitions, context, events)
        owner = params["owner"] = self.owner_id
        params["lease_until"] = (
            transitions[-1].at if transitions else time.time()
        ) + self.lease_seconds
        gates = self._gates
        gate = gates.get(saga_id)
        if gate is None:
            gate = gates[saga_id] = _Gate()
        gate.users += 1
        try:
            what = f"record transitions of saga {saga_id!r}"
            async with gate.lock, self._connection(what) as conn:
                cur = await conn.execute(statement, params)
                row = await cur.fetchone()
                if row is not None:
                    return bool(row[0])
                # Nothing written: unknown saga, or not leased to this process.
                cur = await conn.execute(_SELECT_LEASE, (saga_id,))
                current = await cur.fetchone()
        finally:
            gate.users -= 1
            if gate.users == 0:
                del gates[saga_id]
        if current is None:
            return False
        raise LeaseLostError(f"saga {saga_id} is leased by {current[0] or 'nobody'}, not {owner}")

    async def load(self, saga_id: str) -> SagaRecord | None:
        """The full record of a saga, with its steps and history; None if unknown."""
        async with self._connection(f"load saga {saga_id!r}") as conn:
            cur = await conn.execute(_LOAD, (saga_id,))
            row = await cur.fetchone()
        return None if row is None else _saga_from_row(row)

    async def list_sagas(self, query: SagaQuery | None = None) -> list[SagaRecord]:
        """Sagas matching ``query``, newest first, with steps but without history."""
        query = query or SagaQuery()
        if query.limit <= 0:
            return []
        where: list[str] = []
        params: list[Any] = []
        if query.statuses:
            # Literals (of the SagaStatus enum, so safe), not a parameter: the planner
            # can then use the partial indexes on unfinished and failed sagas.
            literals = ", ".join(f"'{SagaStatus(s).value}'" for s in query.statuses)
            where.append(f"s.status IN ({literals})")
        if query.saga_name is not None:
            where.append("s.saga_name = %s")
            params.append(query.saga_name)
        if query.correlation_id is not None:
            where.append("s.correlation_id = %s")
            params.append(query.correlation_id)
        if query.created_after is not None:
            where.append("s.created_at >= %s")
            params.append(query.created_after)
        if query.created_before is not None:
            where.append("s.created_at < %s")
            params.append(query.created_before)
        sql = _LIST
        if where:
            # Only the fixed fragments above are joined; every value is a parameter.
            sql += " WHERE " + " AND ".join(where)
        # Ties on created_at keep insertion order, as the in-memory backend's stable sort.
        sql += " ORDER BY s.created_at DESC, s.row_id LIMIT %s OFFSET %s"
        params += [query.limit, max(query.offset, 0)]
        async with self._connection("list sagas") as conn:
            cur = await conn.execute(sql, params)
            rows = await cur.fetchall()
        return [_saga_from_row(row) for row in rows]

    # ----------------------------------------------------------------- leases

    async def claim(self, saga_id: str) -> SagaRecord | None:
        """Lease one unfinished saga to this process and return its full record.

        None when it is finished, unknown, or leased by another live owner.
        """
        now = time.time()
        params = {
            "saga_id": saga_id,
            "owner": self.owner_id,
            "now": now,
            "until": now + self.lease_seconds,
        }
        async with self._connection(f"claim saga {saga_id!r}") as conn:
            cur = await conn.execute(_CLAIM, params)
            row = await cur.fetchone()
        return None if row is None else _saga_from_row(row)

    async def claim_runnable(
        self, limit: int, saga_names: Sequence[str] | None = None
    ) -> list[SagaRecord]:
        """Lease up to ``limit`` unfinished sagas with no live lease, oldest first.

        ``FOR UPDATE SKIP LOCKED``: concurrent claimers (in any process) never get the
        same saga, and do not wait for each other.
        """
        if limit <= 0:
            return []
        now = time.time()
        params = {
            "owner": self.owner_id,
            "now": now,
            "until": now + self.lease_seconds,
            "limit": limit,
            "names": None if saga_names is None else list(saga_names),
        }
        async with self._connection("claim runnable sagas") as conn:
            cur = await conn.execute(_CLAIM_RUNNABLE, params)
            rows = await cur.fetchall()
        return [_saga_from_row(row) for row in rows]

    async def renew_leases(self) -> int:
        """Extend every unfinished saga leased by this process; return how many."""
        params = {"owner": self.owner_id, "until": time.time() + self.lease_seconds}
        async with self._connection("renew leases") as conn:
            cur = await conn.execute(_RENEW, params)
            return cur.rowcount

    async def release_leases(self, saga_ids: Sequence[str] | None = None) -> int:
        """Drop this process's leases (on ``saga_ids``, or all); return how many."""
        params = {"owner": self.owner_id, "ids": None if saga_ids is None else list(saga_ids)}
        async with self._connection("release leases") as conn:
            cur = await conn.execute(_RELEASE, params)
            return cur.rowcount

    async def reopen(self, saga_id: str, transition: Transition) -> SagaRecord | None:
        """Re-drive a FAILED saga: apply ``transition``, lease it here, return its record.

        None (nothing written) when the saga is unknown or not FAILED.
        """
        statement, params = _write_params("reopen", saga_id, [transition], None, ())
        params["owner"] = self.owner_id
        params["lease_until"] = time.time() + self.lease_seconds
        async with self._connection(f"reopen saga {saga_id!r}") as conn, conn.transaction():
            cur = await conn.execute(statement, params)
            if await cur.fetchone() is None:
                return None
            cur = await conn.execute(_LOAD, (saga_id,))
            loaded = await cur.fetchone()
        return None if loaded is None else _saga_from_row(loaded)

    async def request_cancel(self, saga_id: str) -> bool:
        """Ask the owner of an unfinished saga to cancel it; False if finished/unknown."""
        async with self._connection(f"request cancellation of saga {saga_id!r}") as conn:
            cur = await conn.execute(_REQUEST_CANCEL, (saga_id,))
            return cur.rowcount > 0

    # ----------------------------------------------------------------- triggers

    async def record_trigger_event(
        self, event: TriggerEvent, sagas: Sequence[NewSaga]
    ) -> list[tuple[str, bool]]:
        """Record ``event`` and create ``sagas`` (each as :meth:`create_saga`) atomically.

        Sets ``event.saga_ids`` to the ids returned (existing ids for duplicates).
        """
        payload = _dumps(dict(event.payload), f"the payload of trigger event {event.event_id!r}")
        prepared = [(new, self._create_params(new, (), ())) for new in sagas]
        # Insert in key order so two events starting the same sagas cannot deadlock.
        order = sorted(
            range(len(prepared)),
            key=lambda i: (sagas[i].saga_name, sagas[i].idempotency_key or "", sagas[i].saga_id),
        )
        results: list[tuple[str, bool]] = [("", False)] * len(prepared)
        what = f"record trigger event {event.event_id!r}"
        # One pipeline: BEGIN, the inserts, the event and COMMIT go out without waiting for
        # each other's answers (two round trips instead of one per statement).
        async with self._connection(what) as conn, conn.pipeline(), conn.transaction():
            for i in order:
                new, (statement, params) = prepared[i]
                results[i] = await self._create(conn, new, statement, params)
            await conn.execute(
                _UPSERT_TRIGGER_EVENT,
                (
                    event.event_id,
                    event.source,
                    event.correlation_id,
                    payload,
                    [saga_id for saga_id, _ in results],
                    event.created_at,
                ),
            )
        event.saga_ids = [saga_id for saga_id, _ in results]
        return results

    async def find_trigger_events(
        self, correlation_id: str, source: str | None = None
    ) -> list[TriggerEvent]:
        """Trigger events recorded with ``correlation_id`` (and ``source``), oldest first."""
        params = {"correlation_id": correlation_id, "source": source}
        async with self._connection("find trigger events") as conn:
            cur = await conn.execute(_FIND_TRIGGER_EVENTS, params)
            rows = await cur.fetchall()
        return [
            TriggerEvent(
                event_id=row[0],
                source=row[1],
                correlation_id=row[2],
                payload=row[3],
                saga_ids=list(row[4]),
                created_at=row[5],
            )
            for row in rows
        ]

    # ----------------------------------------------------------------- outbox / inbox

    async def claim_outbox(self, limit: int) -> list[OutboxRecord]:
        """Claim up to ``limit`` publishable events for :attr:`lease_seconds`, by ``seq``.

        An event is publishable when PENDING, due, not claimed by a live claim, and no
        earlier PENDING event of its saga exists. ``SKIP LOCKED``: concurrent relays
        claim disjoint events.
        """
        if limit <= 0:
            return []
        now = time.time()
        params = {"now": now, "until": now + self.lease_seconds, "limit": limit}
        async with self._connection("claim outbox events") as conn:
            cur = await conn.execute(_CLAIM_OUTBOX, params)
            rows = await cur.fetchall()
        records = [_outbox_from_row(row) for row in rows]
        records.sort(key=lambda r: r.seq)
        return records

    async def outbox_sent(self, event_ids: Sequence[str]) -> None:
        """Mark events published."""
        if not event_ids:
            return
        params = {"now": time.time(), "ids": list(event_ids)}
        async with self._connection("mark outbox events sent") as conn:
            await conn.execute(_OUTBOX_SENT, params)

    async def outbox_failed(self, event_id: str, error: str, retry_at: float | None) -> None:
        """Record a failed publication: retry at ``retry_at`` or, if None, dead-letter it."""
        params = {"event_id": event_id, "error": _text(error), "retry_at": retry_at}
        async with self._connection(f"record failure of outbox event {event_id!r}") as conn:
            await conn.execute(_OUTBOX_FAILED, params)

    async def list_outbox(
        self, status: OutboxStatus | None = None, limit: int = 100
    ) -> list[OutboxRecord]:
        """Outbox events (optionally of one status), oldest first."""
        if limit <= 0:
            return []
        params = {"status": None if status is None else status.value, "limit": limit}
        statement = _LIST_OUTBOX if status is None else _LIST_OUTBOX_OF
        async with self._connection("list outbox events") as conn:
            cur = await conn.execute(statement, params)
            rows = await cur.fetchall()
        return [_outbox_from_row(row) for row in rows]

    async def outbox_counts(self) -> dict[OutboxStatus, int]:
        """How many events are in each status (every status present, zero included)."""
        async with self._connection("count outbox events") as conn:
            cur = await conn.execute(_OUTBOX_COUNTS)
            rows = await cur.fetchall()
        counts = dict.fromkeys(OutboxStatus, 0)
        for status, count in rows:
            counts[OutboxStatus(status)] = int(count)
        return counts

    async def inbox_mark(self, consumer: str, event_id: str) -> bool:
        """Record that ``consumer`` processed ``event_id``; False if it already had."""
        async with self._connection("mark inbox event") as conn:
            cur = await conn.execute(_INBOX_MARK, (consumer, event_id, time.time()))
            return cur.rowcount == 1

    async def inbox_seen(self, consumer: str, event_id: str) -> bool:
        """Whether ``consumer`` has recorded ``event_id`` as processed (a read, no write)."""
        async with self._connection("read inbox") as conn:
            cur = await conn.execute(_INBOX_SEEN, (consumer, event_id))
            row = await cur.fetchone()
        return bool(row and row[0])

    async def ping(self) -> None:
        """Raise StorageError if the database cannot be reached."""
        async with self._connection("reach the database") as conn:
            await conn.execute("SELECT 1")


async def _configure(conn: _Conn) -> None:
    """Set up a new pooled connection: exact floats, generic plans."""
    # PostgreSQL >= 12 prints the shortest exact form unless a server sets
    # extra_float_digits <= 0, which would round epoch timestamps. The statements of
    # this module are prepared (psycopg prepares a statement after a few executions on
    # a connection); their generic plans are as good as custom ones, and re-planning the
    # write statement for every call would cost more than running it.
    await conn.execute("SET extra_float_digits = 3; SET plan_cache_mode = force_generic_plan")
