"""Event triggers: ``@trigger`` turns an event payload into a saga's initial context.

::

    class OrderSaga(Saga):
        @trigger(source="order_created", idempotency_key="order_id")
        def on_order(self, event):
            return {"order_id": event["order_id"], "amount": event["amount"]}

    result = await fire_event("order_created", {"order_id": "A1", "amount": 10})

``fire_event`` records the event and the PENDING sagas it starts in one write, then
runs them in this process (or leaves them to a worker). Status can be read later by
correlation id from any process.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sagaz.core.config import SagaConfig, get_config
from sagaz.core.context import (
    check_correlation_id,
    current_correlation_id,
    generate_correlation_id,
)
from sagaz.core.engine import check_json
from sagaz.core.errors import ContextNotSerializableError, TriggerPayloadError, UnknownSourceError
from sagaz.core.records import NewSaga, TriggerEvent
from sagaz.core.registry import SagaRegistry, registry
from sagaz.core.runner import get_runner
from sagaz.core.status import SagaStatus

if TYPE_CHECKING:
    from sagaz.core.saga import Saga

__all__ = ["FireResult", "TriggerSpec", "fire_event", "trigger"]

_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class TriggerSpec:
    """What ``@trigger`` records on a method."""

    source: str
    idempotency_key: str | None = None


def trigger(source: str, *, idempotency_key: str | None = None) -> Callable[[_F], _F]:
    """Make a saga method start the saga when an event arrives at ``source``.

    The method takes the payload (a dict) and returns the initial context, or None to
    skip. ``idempotency_key`` names a payload field: a second event with the same value
    returns the first saga instead of starting another. The method may be async.
    """
    if not isinstance(source, str) or not source:
        raise TypeError(f"@trigger needs a non-empty source name, got {source!r}")

    def mark(func: _F) -> _F:
        func.__sagaz_trigger__ = TriggerSpec(source, idempotency_key)  # type: ignore[attr-defined]
        return func

    return mark


@dataclass(slots=True)
class FireResult:
    """What :func:`fire_event` did: the event id and the sagas it started (or found)."""

    event_id: str
    source: str
    correlation_id: str
    saga_ids: list[str] = field(default_factory=list)
    created: list[bool] = field(default_factory=list)

    @property
    def duplicate(self) -> bool:
        """True when every saga already existed (the same idempotency key was seen)."""
        return bool(self.saga_ids) and not any(self.created)


def _idempotency_value(payload: Mapping[str, Any], key: str, source: str, saga: str) -> str:
    if key not in payload or payload[key] is None or payload[key] == "":
        raise TriggerPayloadError(
            f"the payload for source {source!r} is missing the field {key!r}, which saga "
            f'{saga!r} uses as its idempotency key; send it, e.g. {{{key!r}: "..."}}',
            field=key,
        )
    value = payload[key]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TriggerPayloadError(
            f"the field {key!r} (the idempotency key of saga {saga!r}) must be a string "
            f"or an integer, got {type(value).__name__}",
            field=key,
        )
    return f"{source}:{value}"


async def fire_event(
    source: str,
    payload: Mapping[str, Any],
    *,
    correlation_id: str | None = None,
    config: SagaConfig | None = None,
    run: bool = True,
    wait: bool = False,
    saga_registry: SagaRegistry | None = None,
) -> FireResult:
    """Record an event at ``source`` and start the sagas whose triggers accept it.

    Raises :class:`UnknownSourceError` when nothing listens to ``source``,
    :class:`TriggerPayloadError` (naming the field) for a payload a trigger cannot use,
    and :class:`ValueError` (naming the problem) for a ``correlation_id`` that breaks
    the ``X-Correlation-ID`` rule (at most 128 characters of ``[A-Za-z0-9._:-]``); in
    each case nothing is recorded. Without ``correlation_id`` the current request
    scope's id is used, else a new one. With ``run=True`` new sagas run in this
    process (recorded already leased to it: no claim is needed, and a worker takes
    them over if it dies); ``wait=True`` also waits for them to finish.
    """
    if correlation_id is not None:
        check_correlation_id(correlation_id, "fire_event(correlation_id=...):")
    reg = saga_registry or registry
    bindings = reg.triggers_for(source)
    if not bindings:
        raise UnknownSourceError(source, reg.sources)
    if not isinstance(payload, Mapping):
        raise TriggerPayloadError(
            f"the payload for source {source!r} must be a JSON object, got {type(payload).__name__}"
        )
    config = config or get_config()
    storage = config.storage
    if storage.durable:
        _check_payload(payload, source)
    keys = [
        None
        if b.idempotency_key is None
        else _idempotency_value(payload, b.idempotency_key, source, b.saga_name)
        for b in bindings
    ]
    correlation_id = correlation_id or current_correlation_id() or generate_correlation_id()
    starts: list[tuple[Saga, NewSaga]] = []
    for binding, key in zip(bindings, keys, strict=True):
        saga = binding.saga_class(config=config)
        method = f"{binding.saga_class.__qualname__}.{binding.method_name}"
        try:
            context = getattr(saga, binding.method_name)(dict(payload))
            if inspect.isawaitable(context):
                context = await context
        except TriggerPayloadError:
            raise
        except (KeyError, ValueError, TypeError) as exc:
            # The trigger could not read the payload: the sender's problem, not ours.
            raise TriggerPayloadError(
                f"trigger {method} for source {source!r} rejected the payload: "
                f"{type(exc).__name__}: {exc}",
                field=exc.args[0] if isinstance(exc, KeyError) and exc.args else None,
            ) from exc
        if context is None:
            continue
        if not isinstance(context, Mapping):
            raise TypeError(
                f"trigger {binding.saga_class.__qualname__}.{binding.method_name} returned "
                f"{type(context).__name__}; return a dict (the initial context) or None"
            )
        if storage.durable:
            check_json(context, f"initial context from trigger {binding.method_name!r}")
        new = NewSaga(
            str(uuid.uuid4()),
            saga.name,
            dict(context),
            SagaStatus.PENDING,
            correlation_id,
            key,
            leased=run,  # run here: leased in the same write, no separate claim
        )
        starts.append((saga, new))
    event = TriggerEvent(str(uuid.uuid4()), source, dict(payload), correlation_id)
    await storage.ensure_open()
    outcomes = await storage.record_trigger_event(event, [new for _, new in starts])
    result = FireResult(event.event_id, source, correlation_id)
    tasks = []
    for (saga, new), (saga_id, created) in zip(starts, outcomes, strict=True):
        result.saga_ids.append(saga_id)
        result.created.append(created)
        if created and run:
            tasks.append(get_runner().submit_created(saga, new))
    if wait and tasks:
        for task in tasks:
            await task
    return result


def _check_payload(payload: Mapping[str, Any], source: str) -> None:
    try:
        check_json(payload, f"payload of source {source!r}")
    except ContextNotSerializableError as exc:
        raise TriggerPayloadError(str(exc), field=exc.key) from None
