"""Operating sagas: retry a FAILED saga, cancel a running one, and both in bulk.

The ``sagaz retry`` / ``sagaz cancel`` commands call these; they work the same on
every storage backend and from any process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sagaz.core.config import SagaConfig, get_config
from sagaz.core.engine import SagaExecution
from sagaz.core.errors import SagaNotFoundError
from sagaz.core.records import SagaQuery, SagaRecord, Transition, TransitionKind
from sagaz.core.registry import registry
from sagaz.core.result import SagaResult
from sagaz.core.status import SagaStatus, StepStatus

__all__ = [
    "BulkOutcome",
    "Operation",
    "OperationReport",
    "OperationUsageError",
    "bulk_cancel",
    "bulk_retry",
    "cancel_saga",
    "check_operation",
    "retry_saga",
    "run_operation",
]

#: What ``sagaz retry`` / ``sagaz cancel`` (and Django's ``sagaz_retry`` / ``sagaz_cancel``) do.
Operation = Literal["retry", "cancel"]

_UNDO_STATES = frozenset(
    {StepStatus.COMPENSATING, StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED}
)


def _was_compensating(record: SagaRecord) -> bool:
    if any(step.status in _UNDO_STATES for step in record.steps.values()):
        return True
    return any(h.kind is TransitionKind.SAGA_COMPENSATING for h in record.history)


async def retry_saga(saga_id: str, config: SagaConfig | None = None) -> SagaResult:
    """Re-drive a FAILED saga and wait for it to finish.

    A saga that failed while compensating retries its failed compensations (and
    those not yet run); one parked before compensating continues forward, re-running
    its failed or in-flight step. Raises :class:`SagaNotFoundError` for an unknown id
    and ValueError for a saga that is not FAILED.
    """
    config = config or get_config()
    storage = config.storage
    await storage.ensure_open()
    current = await storage.load(saga_id)
    if current is None:
        raise SagaNotFoundError(f"no saga {saga_id!r} in {type(storage).__name__}")
    if current.status is not SagaStatus.FAILED:
        raise ValueError(
            f"saga {saga_id} is {current.status.value}; only FAILED sagas can be retried "
            "(unfinished ones resume on their own through a worker)"
        )
    saga = registry.create(current.saga_name, config)
    kind = (
        TransitionKind.SAGA_COMPENSATING
        if _was_compensating(current)
        else TransitionKind.SAGA_RETRIED
    )
    record = await storage.reopen(saga_id, Transition(kind, current.failed_step))
    if record is None:  # raced with another operator
        raise ValueError(f"saga {saga_id} is no longer FAILED; someone else retried it")
    return await SagaExecution(saga.definition, config, record=record, retried=True).run()


async def cancel_saga(saga_id: str, config: SagaConfig | None = None) -> SagaStatus:
    """Cancel an unfinished saga: its completed steps are compensated.

    When no live process holds the saga (PENDING, or its owner died) it is
    compensated here and its final status returned; otherwise the owner is asked and
    compensates it at its next step boundary, and the current status is returned.
    """
    config = config or get_config()
    storage = config.storage
    await storage.ensure_open()
    current = await storage.load(saga_id)
    if current is None:
        raise SagaNotFoundError(f"no saga {saga_id!r} in {type(storage).__name__}")
    if current.status.is_terminal:
        return current.status
    await storage.request_cancel(saga_id)
    if saga_id in storage.running_here:
        return current.status  # this process runs it: it compensates at its next step
    record = await storage.claim(saga_id)
    if record is None:
        return current.status  # the owner compensates it at its next step boundary
    saga = registry.create(record.saga_name, config)
    result = await SagaExecution(saga.definition, config, record=record).run()
    return result.status


@dataclass(slots=True)
class BulkOutcome:
    """What a bulk operation matched and, unless a dry run, what became of each saga."""

    matched: list[str] = field(default_factory=list)
    statuses: dict[str, SagaStatus] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False


async def bulk_retry(
    query: SagaQuery, config: SagaConfig | None = None, *, dry_run: bool = False
) -> BulkOutcome:
    """Retry every FAILED saga matching ``query`` (its status filter is forced to FAILED)."""
    config = config or get_config()
    await config.storage.ensure_open()
    failed_only = SagaQuery(
        status=SagaStatus.FAILED,
        saga_name=query.saga_name,
        correlation_id=query.correlation_id,
        created_after=query.created_after,
        created_before=query.created_before,
        limit=query.limit,
        offset=query.offset,
    )
    outcome = BulkOutcome(dry_run=dry_run)
    for record in await config.storage.list_sagas(failed_only):
        outcome.matched.append(record.saga_id)
        if dry_run:
            continue
        try:
            outcome.statuses[record.saga_id] = (await retry_saga(record.saga_id, config)).status
        except Exception as exc:
            outcome.errors[record.saga_id] = f"{type(exc).__name__}: {exc}"
    return outcome


async def bulk_cancel(
    query: SagaQuery, config: SagaConfig | None = None, *, dry_run: bool = False
) -> BulkOutcome:
    """Cancel every unfinished saga matching ``query``."""
    config = config or get_config()
    await config.storage.ensure_open()
    outcome = BulkOutcome(dry_run=dry_run)
    unfinished = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)
    for record in await config.storage.list_sagas(query):
        if record.status not in unfinished:
            continue
        outcome.matched.append(record.saga_id)
        if dry_run:
            continue
        try:
            outcome.statuses[record.saga_id] = await cancel_saga(record.saga_id, config)
        except Exception as exc:
            outcome.errors[record.saga_id] = f"{type(exc).__name__}: {exc}"
    return outcome


class OperationUsageError(ValueError):
    """The arguments of a retry or cancel command do not go together (a usage error)."""


@dataclass(slots=True)
class OperationReport:
    """What a retry or cancel command prints: ``lines``, and how many sagas ``failed``
    (could not be retried or cancelled: the command then exits non-zero)."""

    lines: list[str] = field(default_factory=list)
    failed: int = 0


def _filtered(query: SagaQuery) -> bool:
    return bool(
        query.statuses
        or query.saga_name is not None
        or query.correlation_id is not None
        or query.created_after is not None
        or query.created_before is not None
    )


def check_operation(
    operation: Operation, saga_id: str | None, query: SagaQuery | None, *, dry_run: bool
) -> None:
    """Refuse arguments that do not go together, before anything runs.

    One ``saga_id`` or a ``query`` (filters); ``dry_run`` only with the filters; a bulk
    cancel needs at least one filter (cancelling every unfinished saga is never implied).
    Raises :class:`OperationUsageError` with the fix.
    """
    if saga_id is not None:
        if dry_run:
            raise OperationUsageError("--dry-run goes with the filters, not with one SAGA_ID")
        return
    if query is None:
        raise OperationUsageError(f"{operation}: give a SAGA_ID or the filters (a SagaQuery)")
    if operation == "cancel" and not _filtered(query):
        raise OperationUsageError(
            "give a SAGA_ID or at least one filter (--status, --name, --since, --until)"
        )


async def run_operation(
    operation: Operation,
    saga_id: str | None,
    query: SagaQuery | None,
    config: SagaConfig | None = None,
    *,
    dry_run: bool = False,
) -> OperationReport:
    """Retry or cancel one saga (``saga_id``) or every saga ``query`` matches.

    The shared body of the ``sagaz retry`` / ``sagaz cancel`` commands and of Django's
    ``sagaz_retry`` / ``sagaz_cancel``: checks the arguments (:func:`check_operation`),
    runs the operation and returns what to print. An error of the one-saga form
    (unknown saga, not FAILED) is raised; in bulk, each saga's error is reported and
    counted in :attr:`OperationReport.failed`.
    """
    check_operation(operation, saga_id, query, dry_run=dry_run)
    report = OperationReport()
    lines = report.lines
    if saga_id is not None:
        if operation == "retry":
            result = await retry_saga(saga_id, config)
            lines.append(f"saga {saga_id}: {result.status.value}")
            if result.error:
                lines.append(f"  error: {result.error}")
        else:
            lines.append(f"saga {saga_id}: {(await cancel_saga(saga_id, config)).value}")
        return report
    assert query is not None  # check_operation refuses neither an id nor a query
    bulk = bulk_retry if operation == "retry" else bulk_cancel
    outcome = await bulk(query, config, dry_run=dry_run)
    if outcome.dry_run:
        lines.append(f"{len(outcome.matched)} sagas would {operation} (dry run)")
        lines.extend(f"  {saga_id}" for saga_id in outcome.matched)
        return report
    for matched in outcome.matched:
        error = outcome.errors.get(matched)
        if error is not None:
            lines.append(f"  {matched}: error: {error}")
        else:
            lines.append(f"  {matched}: {outcome.statuses[matched].value}")
    lines.append(f"{len(outcome.matched)} matched, {len(outcome.errors)} errors")
    report.failed = len(outcome.errors)
    return report
