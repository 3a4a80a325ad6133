"""Shared fixtures of the sagaz-flask tests."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # the example app module, also served by gunicorn
    sys.path.insert(0, str(TESTS))

from sagaz_flask_helpers import require_sqlite, sagaz_of  # noqa: E402


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file URL in the test's temporary folder (skips without the backend)."""
    require_sqlite()
    return f"sqlite:///{tmp_path / 'sagas.db'}"


@pytest.fixture
def make_app() -> Iterator[Callable[..., Flask]]:
    """Build example apps; each is closed (sagas drained, storage closed) afterwards."""
    from sagaz_flask_example import create_app

    apps: list[Flask] = []

    def factory(storage_url: str | None = "memory://", **settings: Any) -> Flask:
        app = create_app(storage_url, **settings)
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield factory
    for app in apps:
        sagaz_of(app).close(app)


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """The example app on in-memory storage."""
    return make_app()


@pytest.fixture
def client(app: Flask) -> Any:
    """A test client of the example app."""
    return app.test_client()
