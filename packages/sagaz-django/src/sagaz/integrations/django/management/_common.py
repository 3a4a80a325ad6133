"""Helpers shared by the ``sagaz_*`` management commands."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sagaz.core.config import SagaConfig
from sagaz.core.errors import SagaError
from sagaz.core.operations import (
    Operation,
    OperationReport,
    OperationUsageError,
    check_operation,
    run_operation,
)
from sagaz.core.records import SagaQuery
from sagaz.core.status import SagaStatus
from sagaz.integrations.django.runtime import build_config

__all__ = [
    "STATUSES",
    "OperationCommand",
    "add_filters",
    "import_modules",
    "parse_time",
    "query_from",
    "run",
]

_T = TypeVar("_T")

#: The ``--status`` choices.
STATUSES = [s.value for s in SagaStatus]


def run(factory: Callable[[SagaConfig], Awaitable[_T]]) -> _T:
    """Run ``factory(config)`` on a new event loop (one per command) with a config of its
    own (a storage no other loop uses), then close that storage."""

    async def main() -> _T:
        config = build_config()
        try:
            return await factory(config)
        finally:
            await config.storage.close()

    try:
        return asyncio.run(main())
    except (SagaError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def import_modules(modules: Sequence[str]) -> list[str]:
    """Import extra saga modules (``--module``); a missing one is a CommandError."""
    imported = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise CommandError(f"cannot import saga module {module!r}: {exc}") from None
        imported.append(module)
    return imported


def parse_time(value: str | None, option: str) -> float | None:
    """An ISO-8601 time (UTC unless it says otherwise) as epoch seconds."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(
            f"{option}: {value!r} is not an ISO-8601 time (e.g. 2026-11-22T10:00:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def add_filters(parser: CommandParser, *, limit: int) -> None:
    """The filter options of ``sagaz_list``, ``sagaz_retry`` and ``sagaz_cancel``."""
    parser.add_argument(
        "--status",
        action="append",
        choices=STATUSES,
        type=str.upper,
        default=[],
        help="Only sagas in this status (repeatable).",
    )
    parser.add_argument("--name", help="Only sagas with this name.")
    parser.add_argument("--correlation-id", help="Only sagas with this correlation id.")
    parser.add_argument("--since", help="Only sagas created at or after this ISO time (UTC).")
    parser.add_argument("--until", help="Only sagas created before this ISO time (UTC).")
    parser.add_argument(
        "--limit", type=int, default=limit, help=f"At most this many (default {limit})."
    )


def query_from(options: dict[str, object]) -> SagaQuery:
    """The :class:`SagaQuery` the filter options describe."""
    limit = options["limit"]
    if not isinstance(limit, int) or limit < 1:
        raise CommandError(f"--limit must be an integer >= 1, got {limit!r}")
    statuses = options.get("status") or []
    assert isinstance(statuses, list)
    name = options.get("name")
    correlation_id = options.get("correlation_id")
    since = options.get("since")
    until = options.get("until")
    return SagaQuery(
        status=[SagaStatus(s) for s in statuses] or None,
        saga_name=name if isinstance(name, str) else None,
        correlation_id=correlation_id if isinstance(correlation_id, str) else None,
        created_after=parse_time(since if isinstance(since, str) else None, "--since"),
        created_before=parse_time(until if isinstance(until, str) else None, "--until"),
        limit=limit,
    )


class OperationCommand(BaseCommand):
    """The base of ``sagaz_retry`` and ``sagaz_cancel``: one SAGA_ID, or every saga the
    filters match (``--dry-run`` lists them), run by
    :func:`sagaz.core.operations.run_operation` as the ``sagaz`` CLI does."""

    #: The operation of the command.
    operation: ClassVar[Operation]
    #: ``--dry-run``'s help: what would be done ("retried", "cancelled").
    done: ClassVar[str]

    def add_arguments(self, parser: CommandParser) -> None:
        """SAGA_ID or filters, ``--module``, ``--dry-run``."""
        parser.add_argument("saga_id", nargs="?", help=f"The saga to {self.operation}.")
        parser.add_argument(
            "--module", "-m", action="append", default=[], help="Extra saga module."
        )
        parser.add_argument(
            "--dry-run", action="store_true", help=f"Only list what would be {self.done}."
        )
        add_filters(parser, limit=1000)

    def handle(self, *args: Any, **options: Any) -> None:
        """Check the arguments, run the operation, print its report."""
        import_modules(options["module"])
        saga_id: str | None = options["saga_id"]
        dry_run: bool = options["dry_run"]
        query = None if saga_id is not None else query_from(options)
        try:
            check_operation(self.operation, saga_id, query, dry_run=dry_run)
        except OperationUsageError as exc:
            raise CommandError(str(exc)) from None

        async def operate(config: SagaConfig) -> OperationReport:
            return await run_operation(self.operation, saga_id, query, config, dry_run=dry_run)

        report = run(operate)
        for line in report.lines:
            self.stdout.write(line)
        if report.failed:
            raise CommandError(f"{report.failed} sagas could not {self.operation}")
