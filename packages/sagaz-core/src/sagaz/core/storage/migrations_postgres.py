"""The PostgreSQL schema of Sagaz, as an ordered list of versioned migrations.

:data:`MIGRATIONS` holds one :class:`Migration` per schema version, oldest first.
:class:`~sagaz.core.storage.postgres.PostgresSagaStorage` applies the missing ones when it
opens (and ``sagaz migrate`` through its ``migrate()`` method), all in one transaction
under an advisory lock, and records each version in ``sagaz_schema_version``. Append new
migrations; never edit one that has been released.

The tables mirror the SQLite backend's (same names, same columns), with PostgreSQL types
(``jsonb`` for JSON, ``double precision`` epoch seconds for times) and these additions:

* ``sagaz_sagas.history_seq``: the last history ``seq`` of the saga. A write adds its
  transitions' count to it in the same ``UPDATE`` that fences the lease, so history
  numbers are ``1..n`` per saga even when two tasks of the lease owner write at once
  (the row lock orders them; reading ``MAX(seq)`` in the same statement would not).
* ``sagaz_sagas.row_id`` and ``sagaz_trigger_events.row_id``: insertion order, the
  tie-breaker of listings (a total order keeps ``LIMIT``/``OFFSET`` pages stable).
* ``sagaz_steps.ord``: the history ``seq`` at which the step first appeared, so steps
  read back in the order the in-memory backend keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration"]


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema version: the statements that bring the schema to ``version``."""

    version: int
    description: str
    statements: tuple[str, ...]


_UNFINISHED: Final = "('PENDING', 'RUNNING', 'COMPENSATING')"

#: Every migration, oldest first; ``MIGRATIONS[i].version == i + 1``.
MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "sagas, steps, history, trigger events, outbox and inbox",
        (
            # fillfactor leaves room on each page so the frequent updates of a running
            # saga (context, updated_at, lease) can be HOT updates (no index writes).
            """CREATE TABLE sagaz_sagas (
                saga_id text NOT NULL PRIMARY KEY,
                saga_name text NOT NULL,
                status text NOT NULL,
                context jsonb NOT NULL,
                correlation_id text,
                idempotency_key text,
                created_at double precision NOT NULL,
                updated_at double precision NOT NULL,
                error text,
                failed_step text,
                recoveries integer NOT NULL DEFAULT 0,
                lease_owner text,
                lease_expires_at double precision,
                cancel_requested boolean NOT NULL DEFAULT false,
                history_seq integer NOT NULL DEFAULT 0,
                row_id bigint GENERATED ALWAYS AS IDENTITY
            ) WITH (fillfactor = 80)""",
            # UNIQUE (saga_name, idempotency_key); sagas without a key are not indexed
            # (NULL keys never conflict anyway).
            """CREATE UNIQUE INDEX sagaz_sagas_idempotency
                ON sagaz_sagas (saga_name, idempotency_key)
                WHERE idempotency_key IS NOT NULL""",
            # Claiming, recovery and listings of unfinished sagas, oldest or newest first.
            f"""CREATE INDEX sagaz_sagas_unfinished ON sagaz_sagas (created_at, row_id)
                WHERE status IN {_UNFINISHED}""",
            # Renewing and releasing this process's leases.
            """CREATE INDEX sagaz_sagas_leased ON sagaz_sagas (lease_owner)
                WHERE lease_owner IS NOT NULL""",
            # Listings of sagas that need attention; COMPLETED ones (the bulk) are listed
            # through sagaz_sagas_created, so a saga that completes costs no entry here.
            """CREATE INDEX sagaz_sagas_attention ON sagaz_sagas (status, created_at)
                WHERE status IN ('FAILED', 'COMPENSATED')""",
            "CREATE INDEX sagaz_sagas_name ON sagaz_sagas (saga_name, created_at)",
            """CREATE INDEX sagaz_sagas_correlation ON sagaz_sagas (correlation_id, created_at)
                WHERE correlation_id IS NOT NULL""",
            "CREATE INDEX sagaz_sagas_created ON sagaz_sagas (created_at)",
            # Steps and history rows are written only by the statement that writes their
            # saga's row (from its RETURNING), so they never outlive or precede it; no
            # foreign key: its per-row check would cost more than the rest of a write.
            """CREATE TABLE sagaz_steps (
                saga_id text NOT NULL,
                name text NOT NULL,
                ord integer NOT NULL,
                status text NOT NULL,
                attempts integer NOT NULL DEFAULT 0,
                result jsonb,
                error text,
                started_at double precision,
                finished_at double precision,
                compensation_attempts integer NOT NULL DEFAULT 0,
                compensation_error text,
                PRIMARY KEY (saga_id, name)
            ) WITH (fillfactor = 80)""",
            """CREATE TABLE sagaz_history (
                saga_id text NOT NULL,
                seq integer NOT NULL,
                at double precision NOT NULL,
                kind text NOT NULL,
                step text,
                attempt integer NOT NULL DEFAULT 0,
                error text,
                PRIMARY KEY (saga_id, seq)
            )""",
            """CREATE TABLE sagaz_trigger_events (
                event_id text NOT NULL PRIMARY KEY,
                source text NOT NULL,
                correlation_id text,
                payload jsonb NOT NULL,
                saga_ids text[] NOT NULL,
                created_at double precision NOT NULL,
                row_id bigint GENERATED ALWAYS AS IDENTITY
            )""",
            """CREATE INDEX sagaz_trigger_events_correlation
                ON sagaz_trigger_events (correlation_id, row_id)""",
            """CREATE TABLE sagaz_outbox (
                seq bigserial NOT NULL PRIMARY KEY,
                event_id text NOT NULL UNIQUE,
                saga_id text NOT NULL,
                event_type text NOT NULL,
                payload jsonb NOT NULL,
                correlation_id text,
                created_at double precision NOT NULL,
                status text NOT NULL DEFAULT 'PENDING',
                attempts integer NOT NULL DEFAULT 0,
                last_error text,
                next_attempt_at double precision NOT NULL DEFAULT 0,
                sent_at double precision,
                claimed_until double precision
            )""",
            # The relay scans PENDING events in seq order; the second index answers
            # "is there an earlier PENDING event of this saga?".
            "CREATE INDEX sagaz_outbox_status ON sagaz_outbox (status, seq)",
            """CREATE INDEX sagaz_outbox_pending ON sagaz_outbox (saga_id, seq)
                WHERE status = 'PENDING'""",
            """CREATE TABLE sagaz_inbox (
                consumer text NOT NULL,
                event_id text NOT NULL,
                processed_at double precision NOT NULL,
                PRIMARY KEY (consumer, event_id)
            )""",
        ),
    ),
    Migration(
        2,
        "the W3C trace context a saga was started in",
        ("ALTER TABLE sagaz_sagas ADD COLUMN trace_context jsonb",),
    ),
)

#: The schema version this release of sagaz-core writes.
SCHEMA_VERSION: Final[int] = len(MIGRATIONS)

assert all(m.version == i for i, m in enumerate(MIGRATIONS, 1)), "versions must be 1..n"
