"""SQLite connections to SAGAZ["DATABASE"] get WAL mode and a busy timeout; others do not.

Each test opens real connections (Django's SQLite backend) to files of its own.
"""

from __future__ import annotations

import copy
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import django
import pytest
from django.db import connections
from django.db.backends.sqlite3.base import DatabaseWrapper

from sagaz.integrations.django.sqlite import BUSY_TIMEOUT_MS

pytestmark = pytest.mark.django_db(transaction=True)


def _sqlite_only() -> None:
    if connections["default"].vendor != "sqlite":
        pytest.skip("the tests' database is not SQLite (SAGAZ_TEST_DB); nothing to set up")


def _wrapper(name: str, alias: str = "default", **options: Any) -> DatabaseWrapper:
    """A Django SQLite connection like the tests' one, to ``name``, under ``alias``."""
    _sqlite_only()
    settings = copy.deepcopy(connections["default"].settings_dict)
    settings["NAME"] = name
    settings["OPTIONS"] = options
    return DatabaseWrapper(settings, alias)


def _pragma(wrapper: DatabaseWrapper, name: str) -> Any:
    with wrapper.cursor() as cursor:
        cursor.execute(f"PRAGMA {name}")
        return cursor.fetchone()[0]


def _plain_file(path: Path) -> str:
    sqlite3.connect(path).close()  # a new file in the default (rollback journal) mode
    return str(path)


def test_the_sagaz_database_gets_wal_and_a_busy_timeout(tmp_path: Path) -> None:
    db = _wrapper(_plain_file(tmp_path / "shop.sqlite3"))
    try:
        assert _pragma(db, "journal_mode") == "wal"
        assert _pragma(db, "busy_timeout") == BUSY_TIMEOUT_MS
        assert _pragma(db, "synchronous") == 1  # NORMAL
    finally:
        db.close()
    # WAL is stored in the file: a plain sqlite3 connection (another process) sees it.
    with sqlite3.connect(tmp_path / "shop.sqlite3") as plain:
        assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_timeout_in_options_is_kept(tmp_path: Path) -> None:
    db = _wrapper(_plain_file(tmp_path / "t.sqlite3"), timeout=3)
    try:
        assert _pragma(db, "busy_timeout") == 3000
        assert _pragma(db, "journal_mode") == "wal"
    finally:
        db.close()


def test_other_aliases_are_left_alone(tmp_path: Path) -> None:
    db = _wrapper(_plain_file(tmp_path / "other.sqlite3"), alias="reporting")
    try:
        assert _pragma(db, "journal_mode") == "delete"
        assert _pragma(db, "busy_timeout") == 5000  # Python's sqlite3 default
    finally:
        db.close()


def test_an_in_memory_database_only_gets_the_timeout() -> None:
    db = _wrapper(":memory:")
    try:
        assert _pragma(db, "journal_mode") == "memory"
        assert _pragma(db, "busy_timeout") == BUSY_TIMEOUT_MS
    finally:
        db.close()


@pytest.mark.skipif(django.VERSION < (5, 1), reason="OPTIONS['init_command'] is Django >= 5.1")
def test_a_journal_mode_of_the_projects_own_wins(tmp_path: Path) -> None:
    db = _wrapper(
        _plain_file(tmp_path / "own.sqlite3"), init_command="PRAGMA journal_mode=TRUNCATE;"
    )
    try:
        assert _pragma(db, "journal_mode") == "truncate"
        assert _pragma(db, "synchronous") == 2  # FULL, SQLite's default: left alone
    finally:
        db.close()


def test_a_failed_switch_is_logged_and_the_connection_still_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _plain_file(tmp_path / "ro.sqlite3")
    db = _wrapper(f"file:{path}?mode=ro")
    try:
        with caplog.at_level(logging.WARNING, logger="sagaz.django"):
            assert _pragma(db, "journal_mode") == "delete"
    finally:
        db.close()
    assert "could not switch the SQLite database" in caplog.text
    assert "ro.sqlite3" in caplog.text


def test_the_tests_database_itself_is_in_wal_mode() -> None:
    """The connections Django opens for SAGAZ["DATABASE"] (here: a new thread's)."""
    _sqlite_only()
    found: list[Any] = []

    def in_a_thread() -> None:
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute("PRAGMA journal_mode")
                found.append(cursor.fetchone()[0])
        finally:
            connections["default"].close()

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert found == ["wal"]
