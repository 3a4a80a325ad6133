"""Django system checks for ``settings.SAGAZ`` (run by ``manage.py check``, ``runserver``,
``migrate`` and the test runner).

Each problem is its own error whose ``obj`` is the bad key's full path
(``SAGAZ['OUTBOX']``, ``SAGAZ['WEBHOOKS']['MAX_BODY_BYTES']``): ``sagaz.E001`` the value is
not a dict, ``sagaz.E002`` a bad value, ``sagaz.E003`` an unknown key (with a "did you mean",
or where a webhook option written at the top level moved to), ``sagaz.E004`` a
``SAGA_MODULES`` entry that cannot be imported. ``sagaz.W001`` warns about a database engine
Sagaz is not tested on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from sagaz.integrations.django.conf import validate

__all__ = ["check_settings", "import_errors"]

#: Problems found importing ``SAGAZ["SAGA_MODULES"]`` when the app became ready.
import_errors: dict[str, str] = {}

_TESTED_VENDORS = ("postgresql", "sqlite", "mysql")
_IDS = {"type": "sagaz.E001", "value": "sagaz.E002", "key": "sagaz.E003"}


@register(Tags.compatibility)
def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Validate ``settings.SAGAZ``: one error per bad key, naming it."""
    raw = getattr(settings, "SAGAZ", None)
    databases = getattr(settings, "DATABASES", {})
    messages: list[CheckMessage] = []
    problems = validate(raw, databases)
    for problem in problems:
        messages.append(
            Error(
                problem.message,
                hint=problem.hint or None,
                id=_IDS[problem.kind],
                obj=problem.setting,
            )
        )
    for module, error in import_errors.items():
        messages.append(
            Error(
                f"SAGAZ['SAGA_MODULES'] names {module!r}, which cannot be imported: {error}",
                id="sagaz.E004",
                obj="SAGAZ['SAGA_MODULES']",
            )
        )
    if isinstance(raw, dict | type(None)) and not any(
        p.setting == "SAGAZ['DATABASE']" for p in problems
    ):
        alias = (raw or {}).get("DATABASE", "default")
        engine = str(databases.get(alias, {}).get("ENGINE", ""))
        if engine and not any(vendor in engine for vendor in _TESTED_VENDORS):
            messages.append(
                Warning(
                    f"SAGAZ['DATABASE'] is {alias!r}, whose ENGINE {engine!r} Sagaz is not "
                    "tested on (PostgreSQL, SQLite and MariaDB/MySQL are)",
                    id="sagaz.W001",
                    obj="SAGAZ['DATABASE']",
                )
            )
    return messages
