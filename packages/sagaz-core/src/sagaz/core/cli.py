"""The ``sagaz`` command line: inspect sagas, draw diagrams, run the demo."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from sagaz.core._version import __version__
from sagaz.core.config import SagaConfig
from sagaz.core.diagrams import to_mermaid
from sagaz.core.errors import ConfigurationError, SagaError
from sagaz.core.records import SagaQuery, SagaRecord, iso
from sagaz.core.saga import Saga
from sagaz.core.status import SagaStatus

if TYPE_CHECKING:
    from sagaz.core.operations import Operation

__all__ = ["DEFAULT_CLI_STORAGE_URL", "main"]

#: Where the CLI keeps sagas when neither --storage-url nor SAGAZ_STORAGE_URL is given.
DEFAULT_CLI_STORAGE_URL = "sqlite:///sagaz.db"

_T = TypeVar("_T")


def _run(factory: Callable[[], Awaitable[_T]]) -> _T:
    try:
        return asyncio.run(_closing(factory))
    except (SagaError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


async def _closing(factory: Callable[[], Awaitable[_T]]) -> _T:
    ctx = click.get_current_context()
    config: SagaConfig = ctx.find_object(SagaConfig) or _config(ctx)
    try:
        return await factory()
    finally:
        await config.storage.close()


def _config(ctx: click.Context) -> SagaConfig:
    """The config of this invocation: one passed as ``obj`` (e.g. by a framework's CLI)
    or one built from --storage-url and the SAGAZ_* environment."""
    given = ctx.find_object(SagaConfig)
    if given is not None:
        return given
    root = ctx.find_root()
    url = root.params.get("storage_url") or DEFAULT_CLI_STORAGE_URL
    try:
        config = SagaConfig.from_env(storage_url=url)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    root.obj = config
    return config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="sagaz")
@click.option(
    "--storage-url",
    envvar="SAGAZ_STORAGE_URL",
    default=DEFAULT_CLI_STORAGE_URL,
    show_default=True,
    help="Where sagas are stored (memory://, sqlite:///path.db, postgresql://...). "
    "Env: SAGAZ_STORAGE_URL.",
)
@click.pass_context
def main(ctx: click.Context, storage_url: str) -> None:
    """Sagaz: durable saga orchestration. Inspect and run sagas."""
    ctx.ensure_object(dict)


def _status_choice() -> click.Choice[str]:
    return click.Choice([s.value for s in SagaStatus], case_sensitive=False)


@main.command("list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=_status_choice(),
    help="Filter by status (repeatable).",
)
@click.option("--name", "saga_name", help="Filter by saga name.")
@click.option("--correlation-id", help="Filter by correlation id.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@click.pass_context
def list_command(
    ctx: click.Context,
    statuses: tuple[str, ...],
    saga_name: str | None,
    correlation_id: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List recorded sagas, newest first."""
    config = _config(ctx)
    query = SagaQuery(
        status=[SagaStatus(s.upper()) for s in statuses] or None,
        saga_name=saga_name,
        correlation_id=correlation_id,
        limit=limit,
    )

    async def fetch() -> list[SagaRecord]:
        await config.storage.ensure_open()
        return await config.storage.list_sagas(query)

    records = _run(fetch)
    if as_json:
        for record in records:
            click.echo(json.dumps(record.to_dict(include_history=False), sort_keys=True))
        return
    if not records:
        click.echo("no sagas recorded")
        return
    click.echo(f"{'SAGA ID':36}  {'NAME':20}  {'STATUS':12}  {'CREATED (UTC)':19}  STEPS")
    for r in records:
        created = datetime.fromtimestamp(r.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(
            f"{r.saga_id:36}  {r.saga_name[:20]:20}  {r.status.value:12}  {created:19}  "
            f"{len(r.completed_steps)}/{len(r.steps)}"
        )


@main.command("show")
@click.argument("saga_id")
@click.option("--json", "as_json", is_flag=True, help="Print the full record as JSON.")
@click.pass_context
def show_command(ctx: click.Context, saga_id: str, as_json: bool) -> None:
    """Show one saga: its state, steps and full history."""
    config = _config(ctx)

    async def fetch() -> SagaRecord | None:
        await config.storage.ensure_open()
        return await config.storage.load(saga_id)

    record = _run(fetch)
    if record is None:
        raise click.ClickException(f"no saga {saga_id!r} in {config.storage_location}")
    if as_json:
        click.echo(json.dumps(record.to_dict(), indent=2, sort_keys=True))
        return
    _print_record(record)


def _print_record(record: SagaRecord) -> None:
    click.echo(f"saga {record.saga_id}  {record.saga_name}  {record.status.value}")
    if record.correlation_id:
        click.echo(f"  correlation id: {record.correlation_id}")
    if record.error:
        click.echo(f"  error: {record.error} (failed step: {record.failed_step})")
    click.echo(f"  context: {json.dumps(record.context, sort_keys=True)}")
    click.echo("  history:")
    for h in record.history:
        step = f" {h.step}" if h.step else ""
        attempt = f" attempt {h.attempt}" if h.attempt else ""
        error = f"  ({h.error})" if h.error else ""
        click.echo(f"    {h.seq:3}  {iso(h.at)}  {h.kind.value}{step}{attempt}{error}")


def _load_saga_class(target: str) -> Saga:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"expected MODULE:SagaClass, got {target!r}", param_hint="TARGET")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise click.BadParameter(f"cannot load {target!r}: {exc}", param_hint="TARGET") from None
    if isinstance(obj, Saga):
        return obj
    if isinstance(obj, type) and issubclass(obj, Saga):
        return obj()
    raise click.BadParameter(f"{target!r} is not a Saga class or instance", param_hint="TARGET")


@main.command("diagram")
@click.argument("target")
@click.option("--saga-id", help="Colour the steps by this recorded execution.")
@click.option("--direction", default="TD", show_default=True, type=click.Choice(["TD", "LR"]))
@click.pass_context
def diagram_command(ctx: click.Context, target: str, saga_id: str | None, direction: str) -> None:
    """Print the Mermaid diagram of TARGET (MODULE:SagaClass)."""
    saga = _load_saga_class(target)
    record = None
    if saga_id is not None:
        config = _config(ctx)

        async def fetch() -> SagaRecord | None:
            await config.storage.ensure_open()
            return await config.storage.load(saga_id)

        record = _run(fetch)
        if record is None:
            raise click.ClickException(f"no saga {saga_id!r} in {config.storage_location}")
    click.echo(to_mermaid(saga, record, direction=direction), nl=False)


@main.command("demo")
@click.option("--amount", default=120.0, show_default=True, help="Amount of the first order.")
@click.pass_context
def demo_command(ctx: click.Context, amount: float) -> None:
    """Run two demo orders: one completes, one is declined and compensated."""
    from sagaz.core.demo import DemoOrderSaga

    config = _config(ctx)
    saga = DemoOrderSaga(config=config)

    async def demo() -> None:
        for order_id, value in (("A-1", amount), ("A-2", 9_999.0)):
            result = await saga.run({"order_id": order_id, "amount": value, "limit": 500})
            click.echo(f"order {order_id} ({value:g}): saga {result.saga_id} {result.status.value}")
            click.echo(f"  completed steps:   {', '.join(result.completed_steps) or '-'}")
            if result.compensated_steps:
                click.echo(f"  compensated steps: {', '.join(result.compensated_steps)}")
            if result.error:
                click.echo(f"  error: {result.error}")
        click.echo(
            f"\nrecorded in {config.storage_location}; try: sagaz list, sagaz show <saga id>"
        )

    _run(demo)


# -- durable execution: workers, the relay and operations ------------------------------

_MODULES_HELP = "Module defining sagas to import (repeatable; also SAGAZ_MODULES, comma-separated)."


def _import_modules(modules: tuple[str, ...]) -> list[str]:
    import os

    from sagaz.core.registry import import_saga_modules

    names = list(modules) or [
        m for m in os.environ.get("SAGAZ_MODULES", "").split(",") if m.strip()
    ]
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        return import_saga_modules(names)
    except ImportError as exc:
        raise click.ClickException(f"cannot import saga module: {exc}") from None


def _time_filter(value: str | None, option: str) -> float | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO-8601 time (e.g. 2026-11-22T10:00:00)", param_hint=option
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _filters(func: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed(
        [
            click.option("--status", "statuses", multiple=True, type=_status_choice()),
            click.option("--name", "saga_name", help="Only sagas with this name."),
            click.option("--since", help="Only sagas created at or after this ISO time (UTC)."),
            click.option("--until", help="Only sagas created before this ISO time (UTC)."),
            click.option("--limit", default=1000, show_default=True, type=click.IntRange(1)),
            click.option("--dry-run", is_flag=True, help="Only count what would be done."),
        ]
    ):
        func = decorator(func)
    return func


def _query(
    statuses: tuple[str, ...],
    saga_name: str | None,
    since: str | None,
    until: str | None,
    limit: int,
) -> SagaQuery:
    return SagaQuery(
        status=[SagaStatus(s.upper()) for s in statuses] or None,
        saga_name=saga_name,
        created_after=_time_filter(since, "--since"),
        created_before=_time_filter(until, "--until"),
        limit=limit,
    )


@main.command("worker")
@click.option("--module", "-m", "modules", multiple=True, help=_MODULES_HELP)
@click.option("--concurrency", default=10, show_default=True, type=click.IntRange(1))
@click.option(
    "--lease-seconds",
    type=click.FloatRange(min=0.1),
    help="Lease length (default: SAGAZ_LEASE_SECONDS or 30).",
)
@click.option("--poll-interval", default=1.0, show_default=True, type=click.FloatRange(min=0.01))
@click.option("--grace-period", default=30.0, show_default=True, type=click.FloatRange(min=0))
@click.option(
    "--broker-url",
    envvar="SAGAZ_BROKER_URL",
    help="Also relay the outbox to this broker (memory://, redis://..., amqp://...). "
    "Env: SAGAZ_BROKER_URL.",
)
@click.pass_context
def worker_command(
    ctx: click.Context,
    modules: tuple[str, ...],
    concurrency: int,
    lease_seconds: float | None,
    poll_interval: float,
    grace_period: float,
    broker_url: str | None,
) -> None:
    """Claim and run sagas until SIGTERM/SIGINT (then finish within the grace period)."""
    import signal

    from sagaz.core.worker import SagaWorker

    imported = _import_modules(modules)
    config = _config(ctx)
    if lease_seconds is not None:
        config.storage.lease_seconds = lease_seconds

    async def work() -> None:
        relay = None
        broker = None
        if broker_url:
            from sagaz.core.outbox import OutboxRelay, broker_from_url

            broker = broker_from_url(broker_url)
            relay = OutboxRelay(config.storage, broker)
        worker = SagaWorker(
            config,
            concurrency=concurrency,
            poll_interval=poll_interval,
            grace_period=grace_period,
            relay=relay,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        click.echo(
            f"sagaz worker {config.storage.owner_id}: modules {', '.join(imported) or '-'}; "
            f"sagas {', '.join(worker.saga_names) or '(none registered)'}",
            err=True,
        )
        try:
            stats = await worker.run()
        finally:
            if broker is not None:
                await broker.close()
        click.echo(f"sagaz worker stopped: {stats}", err=True)

    _run(work)


@main.command("relay")
@click.option(
    "--broker-url", envvar="SAGAZ_BROKER_URL", required=True, help="Env: SAGAZ_BROKER_URL."
)
@click.option("--batch-size", default=100, show_default=True, type=click.IntRange(1))
@click.option("--poll-interval", default=0.5, show_default=True, type=click.FloatRange(min=0.01))
@click.pass_context
def relay_command(
    ctx: click.Context, broker_url: str, batch_size: int, poll_interval: float
) -> None:
    """Publish outbox events to a broker until SIGTERM/SIGINT."""
    import signal

    from sagaz.core.outbox import OutboxRelay, broker_from_url

    config = _config(ctx)

    async def relay() -> None:
        broker = broker_from_url(broker_url)
        relay = OutboxRelay(
            config.storage, broker, batch_size=batch_size, poll_interval=poll_interval
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await config.storage.ensure_open()
        try:
            await relay.run(stop)
        finally:
            await broker.close()

    _run(relay)


@main.command("migrate")
@click.pass_context
def migrate_command(ctx: click.Context) -> None:
    """Create or upgrade the storage schema (versioned migrations)."""
    config = _config(ctx)

    async def migrate() -> list[int]:
        storage = config.storage
        migrate_fn = getattr(storage, "migrate", None)
        await storage.ensure_open()
        if migrate_fn is None:
            return []
        applied: list[int] = await migrate_fn()
        return applied

    applied = _run(migrate)
    if applied:
        click.echo(f"applied migrations: {', '.join(map(str, applied))}")
    else:
        click.echo(f"schema of {config.storage_location} is up to date")


@main.command("retry")
@click.argument("saga_id", required=False)
@click.option("--module", "-m", "modules", multiple=True, help=_MODULES_HELP)
@_filters
@click.pass_context
def retry_command(ctx: click.Context, /, saga_id: str | None, **options: Any) -> None:
    """Re-drive FAILED sagas: SAGA_ID, or every FAILED saga matching the filters."""
    _operate(ctx, "retry", saga_id, **options)


@main.command("cancel")
@click.argument("saga_id", required=False)
@click.option("--module", "-m", "modules", multiple=True, help=_MODULES_HELP)
@_filters
@click.pass_context
def cancel_command(ctx: click.Context, /, saga_id: str | None, **options: Any) -> None:
    """Cancel unfinished sagas (compensating what completed): SAGA_ID, or by filters."""
    _operate(ctx, "cancel", saga_id, **options)


def _operate(
    ctx: click.Context,
    operation: Operation,
    saga_id: str | None,
    *,
    modules: tuple[str, ...],
    statuses: tuple[str, ...],
    saga_name: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    dry_run: bool,
) -> None:
    """The body of ``retry`` and ``cancel`` (see :func:`sagaz.core.operations.run_operation`)."""
    from sagaz.core.operations import OperationUsageError, check_operation, run_operation

    _import_modules(modules)
    config = _config(ctx)
    query = None if saga_id is not None else _query(statuses, saga_name, since, until, limit)
    try:
        check_operation(operation, saga_id, query, dry_run=dry_run)
    except OperationUsageError as exc:
        raise click.UsageError(str(exc)) from None
    report = _run(lambda: run_operation(operation, saga_id, query, config, dry_run=dry_run))
    for line in report.lines:
        click.echo(line)
    if report.failed:
        raise click.exceptions.Exit(1)


@main.command("outbox")
@click.option(
    "--status",
    type=click.Choice(["PENDING", "SENT", "DEAD"], case_sensitive=False),
    help="Only events in this state (DEAD: dead letters).",
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.pass_context
def outbox_command(ctx: click.Context, status: str | None, limit: int, as_json: bool) -> None:
    """List outbox events and their delivery state, with counts per state."""
    from sagaz.core.records import OutboxRecord, OutboxStatus

    config = _config(ctx)

    async def fetch() -> tuple[list[OutboxRecord], dict[OutboxStatus, int]]:
        storage = config.storage
        await storage.ensure_open()
        wanted = OutboxStatus(status.upper()) if status else None
        return await storage.list_outbox(wanted, limit), await storage.outbox_counts()

    records, counts = _run(fetch)
    if as_json:
        for rec in records:
            click.echo(json.dumps(rec.to_dict(), sort_keys=True))
        return
    click.echo("  ".join(f"{s.value}: {n}" for s, n in counts.items()))
    for rec in records:
        e = rec.event
        error = f"  ({rec.last_error})" if rec.last_error else ""
        click.echo(
            f"{rec.seq:6}  {rec.status.value:7}  {e.event_type:24}  saga {e.saga_id}  "
            f"attempts {rec.attempts}{error}"
        )


# -- the example applications ----------------------------------------------------------

_PATH_HELP = (
    "The examples folder (default: SAGAZ_EXAMPLES_PATH, else examples/ found from the "
    "current directory upwards)."
)


@main.group("examples")
def examples_group() -> None:
    """List and run the example applications (FastAPI, Flask, Django)."""


def _examples_dir(path: str | None) -> Path:
    from sagaz.core.examples import ExampleError, find_examples_dir

    try:
        return find_examples_dir(path)
    except ExampleError as exc:
        raise click.ClickException(str(exc)) from None


@examples_group.command("list")
@click.option("--path", type=click.Path(file_okay=False), help=_PATH_HELP)
def examples_list_command(path: str | None) -> None:
    """List the examples and whether each can run in this Python."""
    from sagaz.core.examples import ExampleError, discover_examples, missing_requirements

    folder = _examples_dir(path)
    try:
        examples = discover_examples(folder)
    except ExampleError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"examples in {folder}:")
    for example in examples:
        missing = missing_requirements(example)
        ready = f"needs {', '.join(missing)}" if missing else "ready"
        click.echo(f"  {example.name:14}  {example.description}  [{ready}]")
    click.echo(
        "run one with: sagaz examples run NAME  (e.g. sagaz examples run "
        f"{examples[0].name if examples else 'flask_app'})"
    )


@examples_group.command("run")
@click.argument("name")
@click.option("--path", type=click.Path(file_okay=False), help=_PATH_HELP)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to serve on.")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: the example's own).")
@click.option("--dry-run", is_flag=True, help="Only print what would run.")
@click.pass_context
def examples_run_command(
    ctx: click.Context, name: str, path: str | None, host: str, port: int | None, dry_run: bool
) -> None:
    """Start the example NAME (e.g. flask_app) with its documented command.

    Sagas go to the example's SQLite file unless --storage-url (or SAGAZ_STORAGE_URL)
    names another storage, e.g. postgresql://user@host/db.
    """
    import os

    from sagaz.core.examples import ExampleError, check_requirements, find_example, run_example

    folder = _examples_dir(path)
    env = dict(os.environ)
    root = ctx.find_root()
    if root.get_parameter_source("storage_url") == click.core.ParameterSource.COMMANDLINE:
        env["SAGAZ_STORAGE_URL"] = root.params["storage_url"]
    try:
        example = find_example(folder, name)
        chosen = example.port if port is None else port
        shown = example.shown_commands(host=host, port=chosen)
        if dry_run:
            click.echo(f"cd {example.path} && HOST={host} PORT={chosen} {shown}")
            return
        check_requirements(example)
        storage = (
            "SAGAZ_STORAGE_URL" if env.get("SAGAZ_STORAGE_URL") else "the example's SQLite file"
        )
        click.echo(
            f"sagaz: {example.name} in {example.path}: {shown}\n"
            f"sagaz: serving on http://{host}:{chosen} (storage: {storage}); Ctrl-C stops it",
            err=True,
        )
        code = run_example(example, host=host, port=chosen, env=env)
    except ExampleError as exc:
        raise click.ClickException(str(exc)) from None
    ctx.exit(code)


if __name__ == "__main__":  # python -m sagaz.core.cli
    main()
