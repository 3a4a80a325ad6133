"""Storage backends, chosen by URL.

``memory://`` keeps records in this process; ``sqlite:///path.db`` (``sagaz-core[sqlite]``)
is the embedded, durable default of the examples and the CLI; ``postgresql://...``
(``sagaz-core[postgres]``) is for production with many workers on one database.
"""

from __future__ import annotations

from sagaz.core.errors import ConfigurationError
from sagaz.core.storage.base import SagaStorage
from sagaz.core.storage.memory import InMemorySagaStorage

__all__ = ["InMemorySagaStorage", "SagaStorage", "storage_from_url"]


def storage_from_url(url: str) -> SagaStorage:
    """Create (but do not open) the storage backend a URL names.

    >>> type(storage_from_url("memory://")).__name__
    'InMemorySagaStorage'
    """
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigurationError(
            f"storage URL {url!r} has no scheme; use memory://, sqlite:///path.db "
            "or postgresql://user@host/db"
        )
    scheme = scheme.lower()
    if scheme == "memory":
        return InMemorySagaStorage()
    if scheme == "sqlite":
        from sagaz.core.storage.sqlite import SQLiteSagaStorage

        return SQLiteSagaStorage.from_url(url)
    if scheme in {"postgresql", "postgres"} or scheme.startswith("postgresql+"):
        try:
            from sagaz.core.storage.postgres import (  # type: ignore[import-not-found,unused-ignore]
                PostgresSagaStorage,
            )
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise ConfigurationError(
                f"storage URL {url!r} needs the PostgreSQL backend: "
                "pip install 'sagaz-core[postgres]'"
            ) from exc
        return PostgresSagaStorage.from_url(url)  # type: ignore[no-any-return,unused-ignore]
    raise ConfigurationError(
        f"unknown storage URL scheme {scheme!r} in {url!r}; use memory://, "
        "sqlite:///path.db or postgresql://user@host/db"
    )
