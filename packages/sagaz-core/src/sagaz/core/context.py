"""Request-scoped context (correlation id and request metadata) shared with sagas.

Each web plugin opens a :meth:`SagaContextManager.scope` per request; every saga
started inside it stores the scope's correlation id, which then reaches logs, outbox
headers and trace spans.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, ClassVar

__all__ = [
    "CORRELATION_ID_HEADER",
    "SagaContextManager",
    "correlation_id_from_header",
    "current_correlation_id",
    "generate_correlation_id",
    "is_valid_correlation_id",
]

#: The HTTP header every plugin reads and echoes.
CORRELATION_ID_HEADER = "X-Correlation-ID"

_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_EMPTY: Mapping[str, Any] = MappingProxyType({})


class SagaContextManager:
    """A contextvar-backed mapping for request-scoped values (thread- and task-safe).

    Values set inside a :meth:`scope` are visible to everything that runs in that
    context (the request handler, tasks it creates, worker threads started with
    ``asyncio.to_thread``) and vanish when the scope ends.
    """

    _context: ClassVar[ContextVar[Mapping[str, Any]]] = ContextVar("sagaz_context", default=_EMPTY)

    @classmethod
    def get(cls, key: str, default: Any = None) -> Any:
        """The value of ``key`` in the current scope, or ``default``."""
        return cls._context.get().get(key, default)

    @classmethod
    def set(cls, key: str, value: Any) -> None:
        """Set ``key`` in the current context (copy-on-write: other contexts keep theirs)."""
        ctx = dict(cls._context.get())
        ctx[key] = value
        cls._context.set(MappingProxyType(ctx))

    @classmethod
    def snapshot(cls) -> dict[str, Any]:
        """A copy of every value in the current scope."""
        return dict(cls._context.get())

    @classmethod
    @contextmanager
    def scope(cls, **initial: Any) -> Iterator[None]:
        """Open a new scope holding ``initial`` (e.g. per request); restored on exit."""
        token = cls._context.set(MappingProxyType(dict(initial)))
        try:
            yield
        finally:
            cls._context.reset(token)


def generate_correlation_id() -> str:
    """A new correlation id (a UUID4 string)."""
    return str(uuid.uuid4())


def is_valid_correlation_id(value: object) -> bool:
    """True for at most 128 characters of ``[A-Za-z0-9._:-]`` (safe in logs and headers)."""
    return isinstance(value, str) and _VALID_ID.fullmatch(value) is not None


def correlation_id_from_header(value: str | None) -> str:
    """The incoming header value if it is valid, else a newly generated id."""
    if value is not None and is_valid_correlation_id(value):
        return value
    return generate_correlation_id()


def current_correlation_id() -> str | None:
    """The correlation id of the current scope, if any."""
    value = SagaContextManager.get("correlation_id")
    return value if isinstance(value, str) else None
