"""``flask sagaz ...``: the ``sagaz`` CLI's inspection commands on the app's storage.

``flask sagaz list``, ``flask sagaz show SAGA_ID`` and ``flask sagaz diagram
MODULE:SagaClass`` take the same options and print the same output as ``sagaz list``,
``sagaz show`` and ``sagaz diagram`` (they run the core's commands), with the storage
the app is configured with (``SAGAZ_STORAGE_URL``) instead of ``--storage-url``.
"""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from sagaz.core import cli as core_cli

__all__ = ["MIRRORED_COMMANDS", "sagaz_command"]

#: The ``sagaz`` commands mirrored under ``flask sagaz``.
MIRRORED_COMMANDS = ("list", "show", "diagram")

#: The ``flask sagaz`` command group (added to each app by ``init_app``).
sagaz_command = AppGroup(
    "sagaz", help="Inspect this app's sagas: the sagaz CLI on the app's configured storage."
)


def _storage_url() -> str:
    from sagaz.integrations.flask.extension import EXTENSION_KEY, SagaFlaskState

    state = current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(state, SagaFlaskState):
        raise click.ClickException(
            f"Sagaz is not initialised on Flask app {current_app.name!r}: use SagaFlask(app)"
        )
    if state.storage_url is None:
        raise click.ClickException(
            "this app's saga storage was given as an instance; `flask sagaz` needs it as a "
            "URL (SAGAZ_STORAGE_URL), or run `sagaz --storage-url URL ...`"
        )
    if state.storage_url.lower().startswith("memory:"):
        click.echo(
            "note: this app keeps sagas in memory (memory://), which another process such "
            "as this command cannot see; set SAGAZ_STORAGE_URL to sqlite:///... or "
            "postgresql://...",
            err=True,
        )
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
