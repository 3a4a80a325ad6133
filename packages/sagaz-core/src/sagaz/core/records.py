"""What storage records about sagas: transitions, saga and step records, trigger events.

The engine describes every change as a :class:`Transition`; each storage backend
applies transitions the same way (see :func:`apply_transition`), so a saga's record
and its history read back identically from every backend.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntFlag, StrEnum
from typing import Any, TypeVar

from sagaz.core.errors import StorageError
from sagaz.core.status import TERMINAL_STATUSES, SagaStatus, StepStatus

__all__ = [
    "SAGA_STATUS_BY_KIND",
    "STEP_FIELDS_BY_KIND",
    "STEP_STATUS_BY_KIND",
    "HistoryEntry",
    "NewSaga",
    "OutboxEvent",
    "OutboxRecord",
    "OutboxStatus",
    "RecordChange",
    "SagaQuery",
    "SagaRecord",
    "StepChange",
    "StepField",
    "StepRecord",
    "Transition",
    "TransitionKind",
    "TriggerEvent",
    "apply_transition",
    "completed_results",
    "derive_change",
    "history_entries",
    "iso",
    "to_json",
    "touched_steps",
]


_Slotted = TypeVar("_Slotted", "SagaRecord", "StepRecord")

_trace_capture: Callable[[], dict[str, str] | None] | None = None


def _capture_trace() -> dict[str, str] | None:
    """The current trace context (the default of :attr:`NewSaga.trace_context`)."""
    global _trace_capture
    capture = _trace_capture
    if capture is None:
        # Imported on first use: the observability package imports this module.
        from sagaz.core.observability.tracecontext import current_trace_context

        capture = _trace_capture = current_trace_context
    return capture()


def to_json(value: Any, what: str) -> str:
    """``value`` as compact JSON text to store, or a StorageError that names ``what``
    (e.g. "the context of saga 'x'") and says which values JSON holds."""
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise StorageError(
            f"cannot store {what} as JSON ({exc}); durable storage records it as JSON, so "
            "keep only str, int, float, bool, None, list and dict values (with str keys) "
            "there, e.g. an id or an ISO-8601 string instead of an object"
        ) from None


def iso(ts: float | None) -> str | None:
    """Render an epoch timestamp as an ISO-8601 UTC string (None stays None)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


class TransitionKind(StrEnum):
    """Every kind of change the engine records, in the order a saga can go through them."""

    SAGA_STARTED = "saga_started"
    SAGA_RETRIED = "saga_retried"  # an operator re-drove a FAILED saga forward
    SAGA_RESUMED = "saga_resumed"  # a recovery: counts, keeps the status
    STEP_STARTED = "step_started"
    STEP_COMPLETED = "step_completed"
    STEP_FAILED = "step_failed"
    STEP_CANCELLED = "step_cancelled"
    SAGA_COMPENSATING = "saga_compensating"
    COMPENSATION_STARTED = "compensation_started"
    COMPENSATION_COMPLETED = "compensation_completed"
    COMPENSATION_FAILED = "compensation_failed"
    SAGA_COMPLETED = "saga_completed"
    SAGA_COMPENSATED = "saga_compensated"
    SAGA_FAILED = "saga_failed"


#: The saga status each saga-level transition moves a saga to.
SAGA_STATUS_BY_KIND: dict[TransitionKind, SagaStatus] = {
    TransitionKind.SAGA_STARTED: SagaStatus.RUNNING,
    TransitionKind.SAGA_RETRIED: SagaStatus.RUNNING,
    TransitionKind.SAGA_COMPENSATING: SagaStatus.COMPENSATING,
    TransitionKind.SAGA_COMPLETED: SagaStatus.COMPLETED,
    TransitionKind.SAGA_COMPENSATED: SagaStatus.COMPENSATED,
    TransitionKind.SAGA_FAILED: SagaStatus.FAILED,
}

#: The step status each step-level transition moves its step to.
STEP_STATUS_BY_KIND: dict[TransitionKind, StepStatus] = {
    TransitionKind.STEP_STARTED: StepStatus.RUNNING,
    TransitionKind.STEP_COMPLETED: StepStatus.COMPLETED,
    TransitionKind.STEP_FAILED: StepStatus.FAILED,
    TransitionKind.STEP_CANCELLED: StepStatus.CANCELLED,
    TransitionKind.COMPENSATION_STARTED: StepStatus.COMPENSATING,
    TransitionKind.COMPENSATION_COMPLETED: StepStatus.COMPENSATED,
    TransitionKind.COMPENSATION_FAILED: StepStatus.COMPENSATION_FAILED,
}


class StepField(IntFlag):
    """The fields of a step record a step transition sets (see :data:`STEP_FIELDS_BY_KIND`).

    ``status`` is set by every step transition and ``started_at`` only by the first start,
    so neither has a flag. The values are stable: the PostgreSQL backend merges step rows
    with them in SQL.
    """

    ATTEMPTS = 1
    RESULT = 2
    ERROR = 4
    FINISHED_AT = 8
    COMPENSATION_ATTEMPTS = 16
    COMPENSATION_ERROR = 32


#: Which step fields each step-level transition sets (as :func:`apply_transition` does).
STEP_FIELDS_BY_KIND: dict[TransitionKind, StepField] = {
    TransitionKind.STEP_STARTED: StepField.ATTEMPTS,
    TransitionKind.STEP_COMPLETED: StepField.RESULT | StepField.ERROR | StepField.FINISHED_AT,
    TransitionKind.STEP_FAILED: StepField.ERROR | StepField.FINISHED_AT,
    TransitionKind.STEP_CANCELLED: StepField.ERROR | StepField.FINISHED_AT,
    TransitionKind.COMPENSATION_STARTED: StepField.COMPENSATION_ATTEMPTS,
    TransitionKind.COMPENSATION_COMPLETED: StepField.COMPENSATION_ERROR | StepField.FINISHED_AT,
    TransitionKind.COMPENSATION_FAILED: StepField.COMPENSATION_ERROR | StepField.FINISHED_AT,
}


@dataclass(slots=True)
class Transition:
    """One recorded change of a saga or one of its steps.

    ``step`` names the step for step and compensation transitions (and the failed step
    for SAGA_COMPENSATING / SAGA_FAILED); ``attempt`` is 1-based; ``result`` is what a
    completed step returned; ``error`` is ``"ExceptionType: message"``.
    """

    kind: TransitionKind
    step: str | None = None
    attempt: int = 0
    result: dict[str, Any] | None = None
    error: str | None = None
    at: float = field(default_factory=time.time)

    @property
    def saga_status(self) -> SagaStatus | None:
        """The saga status this transition moves the saga to, if any."""
        return SAGA_STATUS_BY_KIND.get(self.kind)

    @property
    def step_status(self) -> StepStatus | None:
        """The step status this transition moves its step to, if any."""
        return STEP_STATUS_BY_KIND.get(self.kind)


@dataclass(slots=True)
class StepRecord:
    """The recorded state of one step of one saga execution."""

    name: str
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    result: dict[str, Any] | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    compensation_attempts: int = 0
    compensation_error: str | None = None

    def to_dict(self, *, include_result: bool = True) -> dict[str, Any]:
        """A JSON-ready view of the step (``result`` is None unless included)."""
        return {
            "name": self.name,
            "status": self.status.value,
            "attempts": self.attempts,
            "result": self.result if include_result else None,
            "error": self.error,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "compensation_attempts": self.compensation_attempts,
            "compensation_error": self.compensation_error,
        }


@dataclass(slots=True)
class HistoryEntry:
    """One line of a saga's append-only history."""

    seq: int
    at: float
    kind: TransitionKind
    step: str | None = None
    attempt: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view of the entry."""
        return {
            "seq": self.seq,
            "at": iso(self.at),
            "kind": self.kind.value,
            "step": self.step,
            "attempt": self.attempt,
            "error": self.error,
        }


@dataclass(slots=True)
class NewSaga:
    """What is written when a saga is first recorded."""

    saga_id: str
    saga_name: str
    context: dict[str, Any]
    status: SagaStatus = SagaStatus.PENDING
    correlation_id: str | None = None
    idempotency_key: str | None = None
    created_at: float = field(default_factory=time.time)
    #: The W3C trace context (``traceparent``, ``tracestate``) current when the saga was
    #: started, or None: captured by default when OpenTelemetry is installed and a span
    #: is current (see :func:`sagaz.core.observability.current_trace_context`).
    trace_context: dict[str, str] | None = field(default_factory=_capture_trace)
    #: True when the process creating the saga runs it right away: it is recorded
    #: already leased to the storage's :attr:`~sagaz.core.SagaStorage.owner_id` (as a
    #: ``claim`` would), so no separate claim is needed. A duplicate (its idempotency
    #: key is recorded) is neither written nor leased. A saga created RUNNING is always
    #: leased; a PENDING one only with this flag.
    leased: bool = False


@dataclass(slots=True)
class SagaRecord:
    """Everything storage knows about one saga execution."""

    saga_id: str
    saga_name: str
    status: SagaStatus
    context: dict[str, Any]
    correlation_id: str | None = None
    idempotency_key: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    error: str | None = None
    failed_step: str | None = None
    recoveries: int = 0
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    cancel_requested: bool = False
    steps: dict[str, StepRecord] = field(default_factory=dict)
    history: list[HistoryEntry] = field(default_factory=list)
    #: The trace context the saga was started in (see :attr:`NewSaga.trace_context`).
    trace_context: dict[str, str] | None = None

    @property
    def completed_steps(self) -> list[str]:
        """Steps whose action completed (including ones compensated since), in start order."""
        done = {
            StepStatus.COMPLETED,
            StepStatus.COMPENSATING,
            StepStatus.COMPENSATED,
            StepStatus.COMPENSATION_FAILED,
        }
        return [s.name for s in self._by_start() if s.status in done]

    @property
    def compensated_steps(self) -> list[str]:
        """Steps whose compensation completed, in the order they were compensated."""
        comp = [s for s in self.steps.values() if s.status is StepStatus.COMPENSATED]
        comp.sort(key=lambda s: s.finished_at or 0.0)
        return [s.name for s in comp]

    def _by_start(self) -> list[StepRecord]:
        return sorted(self.steps.values(), key=lambda s: s.started_at or 0.0)

    @classmethod
    def from_new(cls, new: NewSaga) -> SagaRecord:
        """The record of a saga that has just been created."""
        return cls(
            saga_id=new.saga_id,
            saga_name=new.saga_name,
            status=new.status,
            context=dict(new.context),
            correlation_id=new.correlation_id,
            idempotency_key=new.idempotency_key,
            created_at=new.created_at,
            updated_at=new.created_at,
            trace_context=None if new.trace_context is None else dict(new.trace_context),
        )

    def to_dict(
        self, *, include_context: bool = True, include_history: bool = True
    ) -> dict[str, Any]:
        """A JSON-ready view of the saga (the body of the status routes).

        ``include_context=False`` also leaves out step results (they are part of it).
        """
        data: dict[str, Any] = {
            "saga_id": self.saga_id,
            "saga_name": self.saga_name,
            "state": self.status.value,
            "correlation_id": self.correlation_id,
            "idempotency_key": self.idempotency_key,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "completed_steps": self.completed_steps,
            "compensated_steps": self.compensated_steps,
            "failed_step": self.failed_step,
            "error": self.error,
            "steps": [s.to_dict(include_result=include_context) for s in self._by_start()],
        }
        if include_context:
            data["context"] = self.context
        if include_history:
            data["history"] = [h.to_dict() for h in self.history]
        return data


def apply_transition(record: SagaRecord, t: Transition) -> None:
    """Apply one transition to an in-memory record (the rule every backend follows)."""
    record.updated_at = t.at
    if t.kind is TransitionKind.SAGA_RESUMED:
        # A recovery: the status stays what it was (RUNNING or COMPENSATING).
        record.recoveries += 1
        return
    status = SAGA_STATUS_BY_KIND.get(t.kind)
    if status is not None:
        record.status = status
        if t.error is not None:
            # A saga that fails while compensating keeps both errors visible.
            record.error = t.error if record.error is None else f"{record.error}; {t.error}"
        if t.step is not None and record.failed_step is None:
            record.failed_step = t.step
        return
    step_status = STEP_STATUS_BY_KIND.get(t.kind)
    if step_status is None or t.step is None:  # pragma: no cover - every kind maps
        return
    step = record.steps.get(t.step)
    if step is None:
        step = record.steps[t.step] = StepRecord(name=t.step)
    step.status = step_status
    kind = t.kind
    if kind is TransitionKind.STEP_STARTED:
        step.attempts = t.attempt
        if step.started_at is None:
            step.started_at = t.at
    elif kind is TransitionKind.STEP_COMPLETED:
        step.result = t.result
        step.error = None
        step.finished_at = t.at
    elif kind is TransitionKind.STEP_FAILED or kind is TransitionKind.STEP_CANCELLED:
        step.error = t.error
        step.finished_at = t.at
    elif kind is TransitionKind.COMPENSATION_STARTED:
        step.compensation_attempts = t.attempt
    elif kind is TransitionKind.COMPENSATION_COMPLETED:
        step.compensation_error = None
        step.finished_at = t.at
    else:  # COMPENSATION_FAILED
        step.compensation_error = t.error
        step.finished_at = t.at


@dataclass(slots=True)
class StepChange:
    """One step a batch of transitions touches, as a backend writes it back."""

    #: The step's values after the batch.
    step: StepRecord
    #: Which fields the batch set (``status`` always; ``started_at`` on a first start).
    fields: StepField
    #: The 1-based position in the batch of the first transition that touched the step.
    first: int


@dataclass(slots=True)
class RecordChange:
    """What a batch of transitions changes in a saga's stored record (see :func:`derive_change`).

    A backend writes ``record``'s saga fields (``status``, ``updated_at``, ``error``,
    ``failed_step``, ``recoveries``) to the saga row, upserts one step row per entry of
    ``steps`` and appends one history line per transition.
    """

    #: The record after the batch (``steps`` holds the stored steps it was given, plus
    #: those the batch touched; ``history`` is left as given).
    record: SagaRecord
    #: The status a saga-level transition of the batch set, or None when none did.
    status: SagaStatus | None
    #: The steps the batch touched, by name, in the order it first touched them.
    steps: dict[str, StepChange]

    @property
    def finished(self) -> bool:
        """Whether the saga is in a terminal status after the batch (its lease goes)."""
        return self.record.status in TERMINAL_STATUSES


def _copy(obj: _Slotted) -> _Slotted:
    """A shallow copy of a slots dataclass (several times faster than dataclasses.replace,
    which matters on every write)."""
    new = object.__new__(type(obj))
    for name in type(obj).__slots__:
        setattr(new, name, getattr(obj, name))
    return new


def derive_change(record: SagaRecord, transitions: Sequence[Transition]) -> RecordChange:
    """The change ``transitions`` make to ``record``: the saga fields and step rows to write.

    Pure: ``record`` (the stored state; it needs only the steps the batch touches) is not
    modified. Backends that read the stored state first (SQLite, Django) pass it and
    write the values back; one that merges in SQL (PostgreSQL) passes a blank record, so
    ``error`` is the batch's errors joined, ``recoveries`` the recoveries it adds and
    ``failed_step`` its first failed step, and merges them and each step's ``fields``
    into the stored row the way :func:`apply_transition` would.
    """
    after = _copy(record)
    steps = after.steps = dict(record.steps)
    fields: dict[str, StepField] = {}
    first: dict[str, int] = {}
    status: SagaStatus | None = None
    for position, t in enumerate(transitions, 1):
        name = t.step
        set_fields = STEP_FIELDS_BY_KIND.get(t.kind)
        if set_fields is not None and name is not None:
            if name in fields:
                fields[name] |= set_fields
            else:
                stored = steps.get(name)
                if stored is not None:
                    steps[name] = _copy(stored)  # ``record`` stays as it was
                fields[name] = set_fields
                first[name] = position
        apply_transition(after, t)
        if t.kind in SAGA_STATUS_BY_KIND:
            status = after.status
    return RecordChange(
        record=after,
        status=status,
        steps={name: StepChange(steps[name], fields[name], first[name]) for name in fields},
    )


def touched_steps(transitions: Sequence[Transition]) -> list[str]:
    """The names of the steps ``transitions`` touch, in the order they first touch them
    (the stored steps :func:`derive_change` needs)."""
    names = (t.step for t in transitions if t.step is not None and t.kind in STEP_FIELDS_BY_KIND)
    return list(dict.fromkeys(names))


def completed_results(transitions: Sequence[Transition]) -> dict[str, dict[str, Any] | None]:
    """The result each step completed in ``transitions`` records (the last one wins).

    Backends serialise these before their transaction, so a result that is not JSON fails
    before anything is written.
    """
    return {
        t.step: t.result
        for t in transitions
        if t.kind is TransitionKind.STEP_COMPLETED and t.step is not None
    }


def history_entries(transitions: Sequence[Transition], first_seq: int) -> list[HistoryEntry]:
    """The history lines ``transitions`` append, numbered from ``first_seq``."""
    return [
        HistoryEntry(seq, t.at, t.kind, t.step, t.attempt, t.error)
        for seq, t in enumerate(transitions, first_seq)
    ]


@dataclass(frozen=True, slots=True)
class SagaQuery:
    """A filter for listing sagas; every field is optional."""

    status: SagaStatus | Sequence[SagaStatus] | None = None
    saga_name: str | None = None
    correlation_id: str | None = None
    created_after: float | None = None
    created_before: float | None = None
    limit: int = 100
    offset: int = 0

    @property
    def statuses(self) -> tuple[SagaStatus, ...]:
        """The status filter as a tuple (empty when no status filter is set)."""
        if self.status is None:
            return ()
        if isinstance(self.status, SagaStatus):
            return (self.status,)
        return tuple(self.status)

    def matches(self, record: SagaRecord) -> bool:
        """Whether ``record`` passes the filter (used by in-process backends)."""
        statuses = self.statuses
        return (
            (not statuses or record.status in statuses)
            and (self.saga_name is None or record.saga_name == self.saga_name)
            and (self.correlation_id is None or record.correlation_id == self.correlation_id)
            and (self.created_after is None or record.created_at >= self.created_after)
            and (self.created_before is None or record.created_at < self.created_before)
        )


@dataclass(slots=True)
class TriggerEvent:
    """An event fired at a source, and the sagas it started."""

    event_id: str
    source: str
    payload: Mapping[str, Any]
    correlation_id: str | None = None
    saga_ids: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view of the event."""
        return {
            "event_id": self.event_id,
            "source": self.source,
            "correlation_id": self.correlation_id,
            "saga_ids": list(self.saga_ids),
            "created_at": iso(self.created_at),
        }


class OutboxStatus(StrEnum):
    """Where an outbox event is: waiting to be published, published, or dead-lettered."""

    PENDING = "PENDING"
    SENT = "SENT"
    DEAD = "DEAD"


@dataclass(slots=True)
class OutboxEvent:
    """An event to publish, written in the same transaction as the change that caused it.

    ``event_type`` is e.g. ``saga.started``, ``saga.step_completed``,
    ``saga.completed``, ``saga.compensated``, ``saga.failed``, or a type a step
    emitted with :func:`sagaz.core.emit_event`.
    """

    event_id: str
    saga_id: str
    event_type: str
    payload: dict[str, Any]
    correlation_id: str | None = None
    created_at: float = field(default_factory=time.time)


@dataclass(slots=True)
class OutboxRecord:
    """An outbox event as stored, with its delivery state.

    ``seq`` orders events (per saga, publication follows it).
    """

    seq: int
    event: OutboxEvent
    status: OutboxStatus = OutboxStatus.PENDING
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: float = 0.0
    sent_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for ``sagaz outbox`` listings)."""
        e = self.event
        return {
            "seq": self.seq,
            "event_id": e.event_id,
            "saga_id": e.saga_id,
            "event_type": e.event_type,
            "correlation_id": e.correlation_id,
            "created_at": iso(e.created_at),
            "status": self.status.value,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "next_attempt_at": iso(self.next_attempt_at) if self.next_attempt_at else None,
            "sent_at": iso(self.sent_at),
            "payload": e.payload,
        }
