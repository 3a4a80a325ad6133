"""Fixtures of the repository checks (tests/repo, run by `nox -s tests_repo`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from sagaz_repo_support import ROOT, nox_list


@pytest.fixture(scope="session")
def full_matrix() -> list[dict[str, Any]]:
    return nox_list(full=True)


@pytest.fixture(scope="session")
def default_matrix() -> list[dict[str, Any]]:
    return nox_list(full=False)


@pytest.fixture(scope="session")
def noxfile() -> ModuleType:
    """The noxfile as a module, for its PLUGINS registry (which plugin tests which framework)."""
    spec = importlib.util.spec_from_file_location("sagaz_noxfile", ROOT / "noxfile.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
