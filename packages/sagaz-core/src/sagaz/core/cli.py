"""The ``sagaz`` command line: inspect sagas, draw diagrams, run the demo."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from sagaz.core._version import __version__
from sagaz.core.config import SagaConfig
from sagaz.core.diagrams import to_mermaid
from sagaz.core.errors import ConfigurationError, SagaError
from sagaz.core.records import SagaQuery, SagaRecord, iso
from sagaz.core.saga import Saga
from sagaz.core.status import SagaStatus

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
    root = ctx.find_root()
    url = root.params.get("storage_url") or DEFAULT_CLI_STORAGE_URL
    try:
        config = SagaConfig(storage_url=url)
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
        raise click.ClickException(f"no saga {saga_id!r} in {config.storage_url}")
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
            raise click.ClickException(f"no saga {saga_id!r} in {config.storage_url}")
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
        click.echo(f"\nrecorded in {config.storage_url}; try: sagaz list, sagaz show <saga id>")

    _run(demo)
