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
    "MAX_CORRELATION_ID_LENGTH",
    "SagaContextManager",
    "check_correlation_id",
    "correlation_id_from_header",
    "correlation_id_problem",
    "current_correlation_id",
    "generate_correlation_id",
    "is_valid_correlation_id",
]

#: The HTTP header every plugin reads and echoes.
CORRELATION_ID_HEADER = "X-Correlation-ID"

_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_VALID_CHAR = re.compile(r"[A-Za-z0-9._:-]")
#: The longest correlation id accepted.
MAX_CORRELATION_ID_LENGTH = 128
_RULE = f"at most {MAX_CORRELATION_ID_LENGTH} characters of A-Z a-z 0-9 . _ : -"
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


def correlation_id_problem(value: object) -> str | None:
    """Why ``value`` is not a valid correlation id (see :func:`is_valid_correlation_id`),
    or None when it is one."""
    if not isinstance(value, str):
        return f"it is of type {type(value).__name__}, not str"
    if not value:
        return "it is empty"
    if len(value) > MAX_CORRELATION_ID_LENGTH:
        return f"it is {len(value)} characters long, more than {MAX_CORRELATION_ID_LENGTH}"
    bad = sorted({char for char in value if not _VALID_CHAR.fullmatch(char)})
    if bad:
        shown = " ".join(repr(char) for char in bad[:5]) + (" ..." if len(bad) > 5 else "")
        return f"it contains characters that are not allowed: {shown}"
    return None


def check_correlation_id(value: object, what: str = "correlation_id") -> str:
    """``value`` when it is a valid correlation id; else :class:`ValueError` naming the
    problem (``what`` names the argument in the message)."""
    problem = correlation_id_problem(value)
    if problem is None and isinstance(value, str):
        return value
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise ValueError(
        f"{what} {shown} is not a valid correlation id: {problem}; use {_RULE} "
        "(the rule of the X-Correlation-ID header), or leave it out to use the current "
        "request's id or a new one"
    )


def correlation_id_from_header(value: str | None) -> str:
    """The incoming header value if it is valid, else a newly generated id."""
    if value is not None and is_valid_correlation_id(value):
        return value
    return generate_correlation_id()


def current_correlation_id() -> str | None:
    """The correlation id of the current scope, if any."""
    value = SagaContextManager.get("correlation_id")
    return value if isinstance(value, str) else None
