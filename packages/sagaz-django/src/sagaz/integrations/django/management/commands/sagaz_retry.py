"""``manage.py sagaz_retry``: re-drive FAILED sagas (by id, or every one matching filters)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sagaz.core.config import SagaConfig
from sagaz.core.operations import BulkOutcome, bulk_retry, retry_saga
from sagaz.core.result import SagaResult
from sagaz.integrations.django.management._common import (
    add_filters,
    import_modules,
    query_from,
    run,
)


def print_outcome(command: BaseCommand, verb: str, outcome: BulkOutcome) -> None:
    """Print what a bulk operation did; fail the command if any saga errored."""
    if outcome.dry_run:
        command.stdout.write(f"{len(outcome.matched)} sagas would {verb} (dry run)")
        for saga_id in outcome.matched:
            command.stdout.write(f"  {saga_id}")
        return
    for saga_id in outcome.matched:
        if saga_id in outcome.errors:
            command.stdout.write(f"  {saga_id}: error: {outcome.errors[saga_id]}")
        else:
            command.stdout.write(f"  {saga_id}: {outcome.statuses[saga_id].value}")
    command.stdout.write(f"{len(outcome.matched)} matched, {len(outcome.errors)} errors")
    if outcome.errors:
        raise CommandError(f"{len(outcome.errors)} sagas could not {verb}")


class Command(BaseCommand):
    """Re-drive FAILED sagas and wait for them."""

    help = "Re-drive FAILED sagas: SAGA_ID, or every FAILED saga matching the filters."

    def add_arguments(self, parser: CommandParser) -> None:
        """SAGA_ID or filters, ``--module``, ``--dry-run``."""
        parser.add_argument("saga_id", nargs="?", help="The FAILED saga to retry.")
        parser.add_argument(
            "--module", "-m", action="append", default=[], help="Extra saga module."
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Only list what would be retried."
        )
        add_filters(parser, limit=1000)

    def handle(self, *args: Any, **options: Any) -> None:
        """Retry."""
        import_modules(options["module"])
        saga_id: str | None = options["saga_id"]
        if saga_id is not None:
            if options["dry_run"]:
                raise CommandError("--dry-run goes with the filters, not with one SAGA_ID")

            async def one(config: SagaConfig) -> SagaResult:
                return await retry_saga(saga_id, config)

            result = run(one)
            self.stdout.write(f"saga {saga_id}: {result.status.value}")
            if result.error:
                self.stdout.write(f"  error: {result.error}")
            return
        query = query_from(options)

        async def many(config: SagaConfig) -> BulkOutcome:
            return await bulk_retry(query, config, dry_run=options["dry_run"])

        print_outcome(self, "retry", run(many))
