"""Sagaz core: the saga engine, storage, triggers and context (filled in as modules land)."""

from sagaz.core._version import __version__

__all__ = ["__version__"]
