"""Shared fixtures of the sagaz-core tests.

Nothing here is autouse: a module opts in with
``pytestmark = pytest.mark.usefixtures("isolated_config")``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import sagaz.core.config as config_module
from sagaz.core import InMemorySagaStorage, SagaConfig, SagaStorage, storage_from_url

TESTS_DIR = Path(__file__).resolve().parent

# The helper module of this directory (sagaz_core_test_sagas) must be importable by
# name: the tests import it, the CLI's ``diagram MODULE:Class`` and resume_saga find
# sagas that way, and the crash tests run it in a child process.
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from sagaz_core_test_sagas import fast_config  # noqa: E402


@pytest.fixture
def isolated_config(monkeypatch: pytest.MonkeyPatch) -> SagaConfig:
    """A fresh process-wide config (in memory) and no SAGAZ_* variables in the environment."""
    for name in list(os.environ):
        if name.startswith("SAGAZ_"):
            monkeypatch.delenv(name)
    config = fast_config()
    monkeypatch.setattr(config_module, "_global_config", config)
    return config


@pytest.fixture
def memory_storage() -> InMemorySagaStorage:
    return InMemorySagaStorage()


@pytest.fixture
def config(memory_storage: InMemorySagaStorage) -> SagaConfig:
    """A config on in-memory storage with tiny compensation backoffs."""
    return fast_config(memory_storage)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sagas.db'}"


@pytest.fixture
async def sqlite_storage(sqlite_url: str) -> AsyncIterator[SagaStorage]:
    """SQLite storage on a fresh file, closed after the test (an open one keeps the
    interpreter from exiting)."""
    storage = storage_from_url(sqlite_url)
    try:
        yield storage
    finally:
        await storage.close()


@pytest.fixture
def sqlite_config(sqlite_storage: SagaStorage) -> SagaConfig:
    return fast_config(sqlite_storage)


@pytest.fixture(params=["memory", "sqlite"])
async def any_storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SagaStorage]:
    """Each backend in turn: in memory, then SQLite on a fresh file."""
    if request.param == "memory":
        yield InMemorySagaStorage()
        return
    storage = storage_from_url(f"sqlite:///{tmp_path / 'any.db'}")
    try:
        yield storage
    finally:
        await storage.close()
