"""``flask sagaz ...``: the ``sagaz`` CLI on the app's storage.

``flask sagaz list``, ``flask sagaz show SAGA_ID`` and ``flask sagaz diagram
MODULE:SagaClass`` take the same options and print the same output as ``sagaz list``,
``sagaz show`` and ``sagaz diagram`` (they run the core's commands), with the storage
the app is configured with (``SAGAZ_STORAGE_URL``) instead of ``--storage-url``.

``flask sagaz worker`` runs the core's ``sagaz worker`` (a
:class:`~sagaz.core.worker.SagaWorker`) with the app's own :class:`~sagaz.core.SagaConfig`
(its storage and engine settings, ``SAGAZ_*`` in ``app.config``) and the sagas the app
registered (its modules, ``SAGAZ_SAGA_MODULES``, and any ``--module``), until SIGTERM or
SIGINT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from flask import current_app
from flask.cli import AppGroup

from sagaz.core import cli as core_cli

if TYPE_CHECKING:
    from sagaz.integrations.flask.extension import SagaFlaskState

__all__ = ["MIRRORED_COMMANDS", "sagaz_command", "worker_command"]

#: The ``sagaz`` commands mirrored under ``flask sagaz``.
MIRRORED_COMMANDS = ("list", "show", "diagram")

#: The ``flask sagaz`` command group (added to each app by ``init_app``).
sagaz_command = AppGroup(
    "sagaz",
    help="Inspect and run this app's sagas: the sagaz CLI on the app's configured storage.",
)

_MEMORY_NOTE = (
    "note: this app keeps sagas in memory (memory://), which another process such "
    "as this command cannot see; set SAGAZ_STORAGE_URL to sqlite:///... or "
    "postgresql://..."
)


def _state() -> SagaFlaskState:
    from sagaz.integrations.flask.extension import EXTENSION_KEY, SagaFlaskState

    state = current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(state, SagaFlaskState):
        raise click.ClickException(
            f"Sagaz is not initialised on Flask app {current_app.name!r}: use SagaFlask(app)"
        )
    return state


def _storage_url() -> str:
    state = _state()
    if state.storage_url is None:
        raise click.ClickException(
            "this app's saga storage was given as an instance; `flask sagaz` needs it as a "
            "URL (SAGAZ_STORAGE_URL), or run `sagaz --storage-url URL ...`"
        )
    if state.storage_url.lower().startswith("memory:"):
        click.echo(_MEMORY_NOTE, err=True)
    return state.storage_url


def _mirror(name: str) -> None:
    core_command = core_cli.main.commands[name]

    @sagaz_command.command(
        name,
        help=core_command.help,
        short_help=core_command.get_short_help_str(),
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        core_cli.main.main(
            args=["--storage-url", _storage_url(), name, *args],
            prog_name="flask sagaz",
            standalone_mode=True,
        )

    command.__doc__ = core_command.help


for _name in MIRRORED_COMMANDS:
    _mirror(_name)


# -- flask sagaz worker: the core's worker command with the app's config -----------------

_CORE_WORKER: click.Command = core_cli.main.commands["worker"]


@sagaz_command.command(
    "worker",
    params=list(_CORE_WORKER.params),  # the same options as `sagaz worker`
    short_help="Claim and run this app's sagas until SIGTERM/SIGINT.",
)
@click.pass_context
def worker_command(ctx: click.Context, /, **options: Any) -> None:
    """Claim and run this app's sagas until SIGTERM/SIGINT (then finish within the
    grace period).

    The core's `sagaz worker` on the app's configuration: its storage
    (SAGAZ_STORAGE_URL) and engine settings, and the sagas the app registered (its
    modules and SAGAZ_SAGA_MODULES; --module imports more). Run as many as needed,
    on as many machines: they share the work through leases.
    """
    state = _state()
    if state.storage_url is not None and state.storage_url.lower().startswith("memory:"):
        click.echo(_MEMORY_NOTE, err=True)
    callback = _CORE_WORKER.callback
    assert callback is not None  # a click command always has one here
    # The core command takes the SagaConfig it finds as a context object (instead of
    # building one from --storage-url): give it the app's.
    with click.Context(_CORE_WORKER, info_name=ctx.info_name, parent=ctx, obj=state.config) as sub:
        sub.invoke(callback, **options)
