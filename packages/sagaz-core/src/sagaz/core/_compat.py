"""Detect the older single-distribution ``sagaz`` 1.x, which breaks the namespace."""

from __future__ import annotations

import importlib.util

__all__ = ["check_no_legacy_sagaz"]


def check_no_legacy_sagaz() -> None:
    """Raise ImportError when a regular ``sagaz`` package shadows the namespace.

    The PyPI project ``sagaz`` 1.x ships ``sagaz/__init__.py``; installed beside
    sagaz-core it turns ``sagaz`` into a regular package and hides the plugins.
    """
    spec = importlib.util.find_spec("sagaz")
    if spec is not None and spec.origin not in (None, "namespace"):
        raise ImportError(
            f"a legacy 'sagaz' package is installed at {spec.origin}; it ships "
            "sagaz/__init__.py and breaks the 'sagaz' namespace that sagaz-core and its "
            "plugins share. Uninstall it: pip uninstall sagaz (then reinstall sagaz-core)"
        )
