"""Exceptions raised by Sagaz. Every message names the problem and the fix."""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "ContextNotSerializableError",
    "SagaCancelledError",
    "SagaDefinitionError",
    "SagaError",
    "SagaNotFoundError",
    "SagaTimeoutError",
    "StepTimeoutError",
    "StorageError",
    "TriggerPayloadError",
    "UnknownSagaError",
    "UnknownSourceError",
]


class SagaError(Exception):
    """Base class of every error Sagaz raises."""


class SagaDefinitionError(SagaError, TypeError):
    """A saga is defined wrongly (unknown dependency, cycle, duplicate step name, ...).

    Raised when the class is created or the step is added, never at run time.
    """


class ConfigurationError(SagaError, ValueError):
    """A configuration value (storage URL, environment variable, option) is invalid."""


class ContextNotSerializableError(SagaError, TypeError):
    """A context value cannot be stored as JSON while the storage is durable."""

    def __init__(self, key: str, value: object, where: str) -> None:
        self.key = key
        super().__init__(
            f"context key {key!r} ({where}) holds a {type(value).__name__}, which is not "
            "JSON-serialisable; durable storage records the context as JSON, so store a "
            "str, int, float, bool, None, list or dict there instead (e.g. an id or an "
            "ISO-8601 string)"
        )


class SagaCancelledError(SagaError):
    """An operator cancelled the saga (``sagaz cancel``); completed steps are compensated."""


class StepTimeoutError(SagaError, TimeoutError):
    """A step or compensation ran longer than its timeout."""


class SagaTimeoutError(SagaError, TimeoutError):
    """The whole saga ran longer than its timeout; completed steps are compensated."""


class StorageError(SagaError, RuntimeError):
    """The storage backend failed or is not usable as configured."""


class SagaNotFoundError(SagaError, LookupError):
    """No saga with the given id is recorded in the storage."""


class UnknownSagaError(SagaError, LookupError):
    """A recorded saga names a saga definition that is not registered in this process."""


class UnknownSourceError(SagaError, LookupError):
    """An event was fired for a source no ``@trigger`` listens to."""

    def __init__(self, source: str, known: list[str]) -> None:
        self.source = source
        names = ", ".join(sorted(known)) or "none registered"
        super().__init__(
            f"no saga is triggered by source {source!r} (known sources: {names}); "
            "decorate a saga method with @trigger(source=...) and import its module"
        )


class TriggerPayloadError(SagaError, ValueError):
    """An event payload lacks the field a trigger needs (e.g. its idempotency key)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)
