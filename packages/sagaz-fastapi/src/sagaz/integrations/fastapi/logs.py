"""A logging filter that puts the current correlation id on every log record."""

from __future__ import annotations

import logging

from sagaz.core import current_correlation_id, current_step

__all__ = ["CorrelationIdFilter"]


class CorrelationIdFilter(logging.Filter):
    """Sets ``record.correlation_id`` so formats can use ``%(correlation_id)s``.

    The id is the current :class:`~sagaz.core.SagaContextManager` scope's (set per
    request by :class:`~sagaz.integrations.fastapi.SagaContextMiddleware`), else, inside a
    saga step, the saga's (sagas resumed at start-up run outside any request), else
    ``default``. A record that already has a ``correlation_id`` keeps it. Attach it to a
    handler: ``handler.addFilter(CorrelationIdFilter())``.
    """

    def __init__(self, default: str = "-") -> None:
        super().__init__()
        self.default = default

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the attribute; never drops a record."""
        if getattr(record, "correlation_id", None) is None:
            found = current_correlation_id() or _step_correlation_id()
            record.correlation_id = found or self.default
        return True


def _step_correlation_id() -> str | None:
    try:
        return current_step().correlation_id
    except RuntimeError:
        return None
