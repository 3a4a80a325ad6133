"""Shared by the install_wheels smoke scripts: prove the code runs from installed wheels.

Each check fails with a message naming what is wrong: a `sagaz` package that is not a PEP 420
namespace, a module imported from the source tree instead of site-packages, or a distribution
installed in editable mode.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SITE = Path(sysconfig.get_paths()["purelib"]).resolve()


def check_installed(distributions: dict[str, str]) -> None:
    """`distributions` maps distribution name -> module: each must come from a wheel."""
    import sagaz
    import sagaz.integrations

    for namespace in (sagaz, sagaz.integrations):
        assert getattr(namespace, "__file__", None) is None, (
            f"{namespace.__name__} is not a namespace package: {namespace.__file__}"
        )
    for name, module_name in distributions.items():
        dist = importlib.metadata.distribution(name)
        direct_url = dist.read_text("direct_url.json")
        if direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"):
            raise AssertionError(f"{name} is an editable install, not a wheel: {direct_url}")
        module = importlib.import_module(module_name)
        origin = Path(module.__file__ or "").resolve()
        assert origin.is_relative_to(SITE), f"{module_name} comes from {origin}, not {SITE}"
    tree = [p for p in sys.path if (Path(p) / "packages" / "sagaz-core").is_dir()]
    assert not tree, f"the source tree is on sys.path: {tree}"


def wait_for(probe: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Call `probe` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
