"""Structured logging: saga fields on log records, without configuring the host's logging.

Sagaz never adds handlers or calls ``logging.basicConfig``; the ``sagaz`` logger only
has a ``NullHandler``. Two opt-in helpers put the saga fields (``saga_id``,
``saga_name``, ``step``, ``attempt``, ``correlation_id``) on records as attributes, so
a JSON formatter or a format string (``%(saga_id)s``) picks them up:

- :class:`SagaLogFilter`, added to a *handler* of the host application, fills them on
  every record that handler emits while a saga step runs (the engine's, a library's
  or the step's own records) and the correlation id inside a request scope;
- :class:`SagaLogAdapter` wraps a logger for code inside steps;
- :class:`CorrelationIdFilter` sets only ``correlation_id`` but on *every* record (a
  placeholder outside requests and sagas), for request logs in any web framework.

For one line per saga transition, add a :class:`~sagaz.core.LoggingListener` to
``SagaConfig(listeners=[...])``.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from sagaz.core.context import current_correlation_id
from sagaz.core.engine import current_step

__all__ = [
    "SAGA_LOG_FIELDS",
    "CorrelationIdFilter",
    "SagaLogAdapter",
    "SagaLogFilter",
    "saga_log_fields",
]

#: The attributes :class:`SagaLogFilter`, :class:`SagaLogAdapter` and
#: :class:`~sagaz.core.LoggingListener` put on log records.
SAGA_LOG_FIELDS: tuple[str, ...] = ("saga_id", "saga_name", "step", "attempt", "correlation_id")

_EMPTY_FIELDS: dict[str, Any] = dict.fromkeys(SAGA_LOG_FIELDS)


def saga_log_fields() -> dict[str, Any] | None:
    """The saga fields of the code running now, or None outside sagas and requests.

    Inside a step or compensation: all five fields. Outside one but inside a request
    scope with a correlation id (:class:`~sagaz.core.SagaContextManager`): only
    ``correlation_id`` is set, the others are None.
    """
    try:
        info = current_step()
    except RuntimeError:
        correlation_id = current_correlation_id()
        if correlation_id is None:
            return None
        fields = dict(_EMPTY_FIELDS)
        fields["correlation_id"] = correlation_id
        return fields
    return {
        "saga_id": info.saga_id,
        "saga_name": info.saga_name,
        "step": info.step,
        "attempt": info.attempt,
        "correlation_id": info.correlation_id,
    }


class SagaLogFilter(logging.Filter):
    """Adds the saga fields (:data:`SAGA_LOG_FIELDS`) to records as attributes.

    Add it to a handler (handler filters see records of every logger, logger filters
    only the records logged on that very logger)::

        handler = logging.StreamHandler()
        handler.addFilter(SagaLogFilter())
        handler.setFormatter(logging.Formatter("%(levelname)s %(saga_id)s %(message)s"))

    A field already on the record (e.g. from :class:`~sagaz.core.LoggingListener` or an
    explicit ``extra``) is kept. Outside sagas and request scopes nothing is added,
    unless ``always=True``: then the fields are set to None, so format strings such as
    ``%(saga_id)s`` work on every record. The filter never drops a record.
    """

    def __init__(self, *, always: bool = False) -> None:
        super().__init__()
        self.always = always

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields; always keep the record."""
        fields = saga_log_fields()
        if fields is None:
            if not self.always:
                return True
            fields = _EMPTY_FIELDS
        attributes = record.__dict__
        for key, value in fields.items():
            if key not in attributes:
                attributes[key] = value
        return True


class SagaLogAdapter(logging.LoggerAdapter[logging.Logger]):
    """A logger for step code whose records carry the running step's saga fields::

        log = SagaLogAdapter(logging.getLogger(__name__))

        async def charge(ctx):
            log.info("charging %s", ctx["amount"])   # record.saga_id, .step, ... set

    ``extra`` given to the adapter, then ``extra`` given to a call, win over the saga
    fields. Outside a step the adapter logs like the wrapped logger (plus the request
    scope's correlation id, if any).
    """

    def __init__(self, logger: logging.Logger, extra: dict[str, Any] | None = None) -> None:
        super().__init__(logger, extra or {})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        """Merge the saga fields, the adapter's ``extra`` and the call's ``extra``."""
        fields = saga_log_fields() or {}
        if self.extra:
            fields.update(self.extra)
        given = kwargs.get("extra")
        if given:
            fields.update(given)
        kwargs["extra"] = fields
        return msg, kwargs


class CorrelationIdFilter(logging.Filter):
    """Sets ``record.correlation_id`` on every record, so formats can use
    ``%(correlation_id)s``.

    The id is the current :class:`~sagaz.core.SagaContextManager` scope's (opened per
    request by each web plugin's middleware: FastAPI's and Django's
    ``SagaContextMiddleware``, Flask's ``SagaFlask``), else, inside a saga step, the
    saga's (sagas resumed at start-up or run by a worker run outside any request), else
    ``default``. A record that already has a ``correlation_id`` keeps it; the filter
    never drops a record. Attach it to a handler::

        handler = logging.StreamHandler()
        handler.addFilter(CorrelationIdFilter())
        handler.setFormatter(logging.Formatter("%(correlation_id)s %(message)s"))

    It works the same in FastAPI, Flask, Django and plain asyncio code. For every saga
    field (``saga_id``, ``step``, ...) use :class:`SagaLogFilter` instead.
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
