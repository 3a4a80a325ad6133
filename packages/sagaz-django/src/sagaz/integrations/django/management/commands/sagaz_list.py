"""``manage.py sagaz_list``: list sagas (filter by status, name, ...) or show one (``--id``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sagaz.core.config import SagaConfig
from sagaz.core.records import SagaRecord, iso
from sagaz.integrations.django.management._common import add_filters, query_from, run


class Command(BaseCommand):
    """List recorded sagas, newest first, or show one saga's history."""

    help = "List recorded sagas, newest first; --id SAGA_ID shows one saga and its history."

    def add_arguments(self, parser: CommandParser) -> None:
        """Filters, ``--id`` and ``--json``."""
        add_filters(parser, limit=50)
        parser.add_argument("--id", dest="saga_id", help="Show this saga with its full history.")
        parser.add_argument("--json", action="store_true", help="Print JSON (lines).")

    def handle(self, *args: Any, **options: Any) -> None:
        """Print the sagas."""
        saga_id: str | None = options["saga_id"]
        if saga_id is not None:
            self._show(saga_id, as_json=options["json"])
            return
        query = query_from(options)

        async def fetch(config: SagaConfig) -> list[SagaRecord]:
            return await config.storage.list_sagas(query)

        records = run(fetch)
        if options["json"]:
            for record in records:
                self.stdout.write(json.dumps(record.to_dict(include_history=False), sort_keys=True))
            return
        if not records:
            self.stdout.write("no sagas recorded")
            return
        self.stdout.write(
            f"{'SAGA ID':36}  {'NAME':20}  {'STATUS':12}  {'CREATED (UTC)':19}  STEPS"
        )
        for r in records:
            created = datetime.fromtimestamp(r.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
            self.stdout.write(
                f"{r.saga_id:36}  {r.saga_name[:20]:20}  {r.status.value:12}  {created:19}  "
                f"{len(r.completed_steps)}/{len(r.steps)}"
            )

    def _show(self, saga_id: str, *, as_json: bool) -> None:
        async def fetch(config: SagaConfig) -> SagaRecord | None:
            return await config.storage.load(saga_id)

        record = run(fetch)
        if record is None:
            raise CommandError(f"no saga {saga_id!r}")
        if as_json:
            self.stdout.write(json.dumps(record.to_dict(), indent=2, sort_keys=True))
            return
        self.stdout.write(f"saga {record.saga_id}  {record.saga_name}  {record.status.value}")
        if record.correlation_id:
            self.stdout.write(f"  correlation id: {record.correlation_id}")
        if record.error:
            self.stdout.write(f"  error: {record.error} (failed step: {record.failed_step})")
        self.stdout.write(f"  context: {json.dumps(record.context, sort_keys=True)}")
        self.stdout.write("  history:")
        for h in record.history:
            step = f" {h.step}" if h.step else ""
            attempt = f" attempt {h.attempt}" if h.attempt else ""
            error = f"  ({h.error})" if h.error else ""
            self.stdout.write(f"    {h.seq:3}  {iso(h.at)}  {h.kind.value}{step}{attempt}{error}")
