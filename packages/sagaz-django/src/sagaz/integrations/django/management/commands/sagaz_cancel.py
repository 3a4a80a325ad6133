"""``manage.py sagaz_cancel``: cancel unfinished sagas (by id, or by filters)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sagaz.core.config import SagaConfig
from sagaz.core.operations import BulkOutcome, bulk_cancel, cancel_saga
from sagaz.core.status import SagaStatus
from sagaz.integrations.django.management._common import (
    add_filters,
    import_modules,
    query_from,
    run,
)
from sagaz.integrations.django.management.commands.sagaz_retry import print_outcome


class Command(BaseCommand):
    """Cancel unfinished sagas: their completed steps are compensated."""

    help = "Cancel unfinished sagas (compensating what completed): SAGA_ID, or by filters."

    def add_arguments(self, parser: CommandParser) -> None:
        """SAGA_ID or filters, ``--module``, ``--dry-run``."""
        parser.add_argument("saga_id", nargs="?", help="The saga to cancel.")
        parser.add_argument(
            "--module", "-m", action="append", default=[], help="Extra saga module."
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Only list what would be cancelled."
        )
        add_filters(parser, limit=1000)

    def handle(self, *args: Any, **options: Any) -> None:
        """Cancel."""
        import_modules(options["module"])
        saga_id: str | None = options["saga_id"]
        if saga_id is not None:
            if options["dry_run"]:
                raise CommandError("--dry-run goes with the filters, not with one SAGA_ID")

            async def one(config: SagaConfig) -> SagaStatus:
                return await cancel_saga(saga_id, config)

            self.stdout.write(f"saga {saga_id}: {run(one).value}")
            return
        if not (options["status"] or options["name"] or options["since"] or options["until"]):
            raise CommandError(
                "give a SAGA_ID or at least one filter (--status, --name, --since, --until)"
            )
        query = query_from(options)

        async def many(config: SagaConfig) -> BulkOutcome:
            return await bulk_cancel(query, config, dry_run=options["dry_run"])

        print_outcome(self, "cancel", run(many))
