"""``manage.py sagaz_worker``: claim and run sagas stored in Django's database.

Runs :class:`sagaz.core.SagaWorker` (options as ``sagaz worker``) until SIGTERM or SIGINT,
then stops claiming, lets running sagas finish within ``--grace-period``, cancels the rest
and releases their leases so another worker resumes them at once. Sagas are found in every
installed app's ``sagas.py``, ``SAGAZ["SAGA_MODULES"]`` and ``--module``.
"""

from __future__ import annotations

import asyncio
import importlib
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sagaz.core.config import SagaConfig
from sagaz.core.worker import SagaWorker, WorkerStats
from sagaz.integrations.django.conf import get_settings
from sagaz.integrations.django.management._common import import_modules, run


class Command(BaseCommand):
    """Claim and run sagas until SIGTERM/SIGINT."""

    help = "Claim and run sagas stored in Django's database until SIGTERM/SIGINT."

    def add_arguments(self, parser: CommandParser) -> None:
        """The options of ``sagaz worker``."""
        parser.add_argument(
            "--module",
            "-m",
            action="append",
            default=[],
            help="Extra module defining sagas (repeatable).",
        )
        parser.add_argument(
            "--concurrency", type=int, default=10, help="Sagas run at once (default 10)."
        )
        parser.add_argument(
            "--lease-seconds",
            type=float,
            default=None,
            help="Lease length; a dead worker's sagas are taken over after it "
            "(default SAGAZ['LEASE_SECONDS'], 30).",
        )
        parser.add_argument(
            "--poll-interval",
            type=float,
            default=1.0,
            help="Seconds between claims when idle (default 1).",
        )
        parser.add_argument(
            "--grace-period",
            type=float,
            default=30.0,
            help="Seconds running sagas get to finish on stop (default 30).",
        )
        parser.add_argument(
            "--broker-url",
            default=None,
            help="Also relay the outbox to this broker (needs sagaz.core.outbox).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the worker."""
        imported = import_modules(options["module"])
        concurrency: int = options["concurrency"]
        poll: float = options["poll_interval"]
        grace: float = options["grace_period"]
        if concurrency < 1:
            raise CommandError("--concurrency must be >= 1")
        if poll <= 0:
            raise CommandError("--poll-interval must be > 0")
        if grace < 0:
            raise CommandError("--grace-period must be >= 0")
        lease: float = options["lease_seconds"] or get_settings().lease_seconds
        if lease <= 0:
            raise CommandError("--lease-seconds must be > 0")
        broker_url: str | None = options["broker_url"]

        async def work(config: SagaConfig) -> WorkerStats:
            config.storage.lease_seconds = lease
            relay = broker = None
            if broker_url:
                try:
                    outbox: Any = importlib.import_module("sagaz.core.outbox")
                except ImportError:
                    raise CommandError(
                        "--broker-url needs the outbox relay (sagaz.core.outbox), which this "
                        "sagaz-core does not have; upgrade sagaz-core"
                    ) from None
                broker = outbox.broker_from_url(broker_url)
                relay = outbox.OutboxRelay(config.storage, broker)
            worker = SagaWorker(
                config,
                concurrency=concurrency,
                poll_interval=poll,
                grace_period=grace,
                relay=relay,
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, worker.stop)
            self.stderr.write(
                f"sagaz worker {config.storage.owner_id}: modules {', '.join(imported) or '-'}; "
                f"sagas {', '.join(worker.saga_names) or '(none registered)'}"
            )
            try:
                return await worker.run()
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
                if broker is not None:
                    await broker.close()

        stats = run(work)
        self.stderr.write(f"sagaz worker stopped: {stats}")
