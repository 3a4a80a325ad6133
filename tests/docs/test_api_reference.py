"""Every public name (each distribution's ``__all__``) is documented in the built API reference.

mkdocstrings gives each documented object a heading whose HTML id is its dotted path
(``sagaz.core.SagaConfig``). The site is the one ``nox -s docs`` built (its folder in
``SAGAZ_DOCS_SITE``); without it, the test builds the site itself with ``mkdocs build --strict``.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from docs_support import ROOT

#: The module of each distribution whose ``__all__`` is its public API, and the
#: reference page that documents it.
PUBLIC_MODULES = {
    "sagaz.core": "reference/core/index.html",
    "sagaz.core.testing": "reference/testing/index.html",
    "sagaz.integrations.fastapi": "reference/fastapi/index.html",
    "sagaz.integrations.flask": "reference/flask/index.html",
    "sagaz.integrations.django": "reference/django/index.html",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    built = os.environ.get("SAGAZ_DOCS_SITE")
    if built:
        yield Path(built)
        return
    out = tmp_path_factory.mktemp("site")
    subprocess.run(  # noqa: S603 - this interpreter's mkdocs, fixed arguments
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(out)],
        cwd=ROOT,
        check=True,
        timeout=300,
    )
    yield out


def anchors(page: Path) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', page.read_text(encoding="utf-8")))


@pytest.mark.parametrize("module", sorted(PUBLIC_MODULES))
def test_every_public_name_is_in_the_api_reference(module: str, site: Path) -> None:
    page = site / PUBLIC_MODULES[module]
    assert page.is_file(), f"{page} was not built: is it in mkdocs.yml's nav?"
    ids = anchors(page)
    names = list(importlib.import_module(module).__all__)
    assert names, f"{module}.__all__ is empty"
    # A name that is also a submodule (sagaz.core.registry) is documented in that
    # module's own section, e.g. sagaz.core.registry.registry.
    missing = [
        name
        for name in names
        if f"{module}.{name}" not in ids and f"{module}.{name}.{name}" not in ids
    ]
    assert not missing, (
        f"public names of {module} missing from {PUBLIC_MODULES[module]}: {missing}; "
        "document them (a docstring, and the module in docs/reference/)"
    )


def test_the_reference_pages_render_docstrings(site: Path) -> None:
    text = (site / PUBLIC_MODULES["sagaz.core"]).read_text(encoding="utf-8")
    # The first line of SagaConfig's docstring, not just its name.
    assert "Where sagas are stored and the defaults a saga uses" in text
