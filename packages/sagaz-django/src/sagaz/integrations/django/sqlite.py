"""SQLite set up for several processes: WAL mode and a busy timeout, automatically.

On SQLite, a web server and ``manage.py sagaz_worker`` (or several server threads and
the saga threads) share one database file. In SQLite's default rollback-journal mode a
writer blocks every reader, and Python's default 5 s busy timeout makes a busy moment an
``OperationalError: database is locked``. So when ``SAGAZ["DATABASE"]`` is a SQLite
database, each new connection to it gets, from a ``connection_created`` handler the
Sagaz app connects when it is ready:

- ``PRAGMA busy_timeout`` of :data:`BUSY_TIMEOUT_MS` (30 s, as the core's SQLite
  storage), unless the database's ``OPTIONS`` set ``"timeout"`` (then yours applies);
- ``PRAGMA journal_mode=WAL`` (readers and one writer at once; the mode is stored in the
  file, so this switches it once) and ``PRAGMA synchronous=NORMAL`` (the usual pairing
  with WAL, as in the core's SQLite storage: a commit survives a process crash), unless
  ``OPTIONS["init_command"]`` sets a ``journal_mode`` of its own (Django >= 5.1), or the
  database is in memory (tests). An ``init_command`` setting ``synchronous`` keeps its
  value.

It is automatic rather than a setting: every multi-process SQLite deployment needs it,
WAL is what the core's own SQLite storage uses, and ``settings.SAGAZ`` stays small. Other
aliases and other database engines are left alone. If the switch to WAL fails (a
read-only file, a lock held past the timeout), the connection is still used and a
warning is logged with the reason.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError

__all__ = ["BUSY_TIMEOUT_MS", "configure_sqlite_connection"]

logger = logging.getLogger("sagaz.django")

#: The busy timeout given to SQLite connections without an ``OPTIONS["timeout"]``.
BUSY_TIMEOUT_MS: Final = 30_000


def _sagaz_alias() -> str | None:
    from sagaz.integrations.django.conf import get_settings

    try:
        return get_settings().database
    except ImproperlyConfigured:
        return None  # the system checks report the bad setting


def configure_sqlite_connection(sender: Any, connection: Any, **kwargs: Any) -> None:
    """The ``connection_created`` handler: WAL and a busy timeout for the Sagaz database.

    Does nothing for another vendor or another alias than ``SAGAZ["DATABASE"]``.
    """
    if getattr(connection, "vendor", None) != "sqlite" or connection.alias != _sagaz_alias():
        return
    options = connection.settings_dict.get("OPTIONS") or {}
    with connection.cursor() as cursor:
        if "timeout" not in options:
            cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
        if connection.is_in_memory_db():
            return
        if "journal_mode" in str(options.get("init_command", "")).lower():
            return  # the project chose its journal mode
        cursor.execute("PRAGMA journal_mode")
        mode = str(cursor.fetchone()[0]).lower()
        if mode != "wal":
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                mode = str(cursor.fetchone()[0]).lower()
            except DatabaseError as exc:
                mode = f"unchanged ({type(exc).__name__}: {exc})"
        if mode == "wal":
            if "synchronous" not in str(options.get("init_command", "")).lower():
                cursor.execute("PRAGMA synchronous = NORMAL")
        else:
            logger.warning(
                "sagaz: could not switch the SQLite database %r (alias %r) to WAL mode: %s; "
                "a web process and sagaz_worker sharing it may hit 'database is locked'",
                str(connection.settings_dict.get("NAME")),
                connection.alias,
                mode,
            )
