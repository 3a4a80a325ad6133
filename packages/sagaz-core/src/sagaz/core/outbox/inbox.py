"""The consumer inbox: run a handler once per event id, however often it is delivered.

The relay publishes at least once, so a consumer can see an event twice (a relay
crash after publishing, a lost confirm, a consumer crash before its ack). Wrap the
consumer's work in :meth:`Inbox.process_once`::

    inbox = Inbox(storage, "billing")

    async for message in queue:                       # aio-pika
        async with message.process():
            await inbox.process_once(event_id_from_amqp(message), lambda: charge(message))

**Semantics: at least once, duplicates dropped after success.** By default the
event is recorded as processed (``storage.inbox_mark``) only *after* the handler
returns. A handler that raises is not recorded, so the redelivery runs it again; a
crash between the handler's end and the record also runs it again. The handler must
therefore tolerate running twice in those rare cases (make its effect idempotent,
e.g. with the event id as a key in its own database); what the inbox removes is the
common duplicate, an event delivered again after it was processed. Two deliveries of
one event processed *concurrently* may both run the handler.

``mark="before"`` records the event before running the handler instead: at most
once. A handler that fails or a crash mid-handler then loses the event for this
consumer (the redelivery is dropped as a duplicate); use it only where running twice
is worse than not running.

The default needs the storage to answer "was this event processed?" (an
``inbox_seen(consumer, event_id)`` method, see :class:`InboxReader`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Protocol, runtime_checkable

from sagaz.core.errors import ConfigurationError
from sagaz.core.outbox.broker import HEADER_EVENT_ID
from sagaz.core.storage.base import SagaStorage

__all__ = [
    "AmqpMessageLike",
    "Handler",
    "Inbox",
    "InboxReader",
    "event_id_from_amqp",
    "event_id_from_redis",
]

logger = logging.getLogger("sagaz.outbox")

#: What :meth:`Inbox.process_once` runs: a function of no arguments, async or not.
Handler = Callable[[], Awaitable[object] | object]


@runtime_checkable
class InboxReader(Protocol):
    """A storage that can tell whether a consumer already processed an event."""

    async def inbox_seen(self, consumer: str, event_id: str) -> bool:
        """Whether :meth:`SagaStorage.inbox_mark` recorded ``event_id`` for ``consumer``."""
        ...


class Inbox:
    """Drops events ``consumer_name`` has already processed (by event id).

    ``mark="after"`` (the default) records an event once its handler succeeded: at
    least once. ``mark="before"`` records it first: at most once. See the module
    documentation for what each means when a handler fails or the process crashes.
    """

    def __init__(
        self,
        storage: SagaStorage,
        consumer_name: str,
        *,
        mark: Literal["after", "before"] = "after",
    ) -> None:
        if not consumer_name:
            raise ConfigurationError("an inbox needs a non-empty consumer name")
        if mark not in ("after", "before"):
            raise ConfigurationError(f"mark must be 'after' or 'before', got {mark!r}")
        if mark == "after" and not isinstance(storage, InboxReader):
            raise ConfigurationError(
                f"{type(storage).__name__} cannot tell whether an event was processed "
                "(it has no inbox_seen method), which the at-least-once inbox needs; "
                "use a storage backend that has it, or Inbox(..., mark='before') for "
                "at-most-once processing"
            )
        self.storage = storage
        self.consumer_name = consumer_name
        self.mark = mark

    def __repr__(self) -> str:
        return f"Inbox({self.consumer_name!r}, mark={self.mark!r})"

    async def seen(self, event_id: str) -> bool:
        """Whether this consumer already processed ``event_id`` (``mark="after"`` only)."""
        storage = self.storage
        if not isinstance(storage, InboxReader):
            raise ConfigurationError(f"{type(storage).__name__} has no inbox_seen method")
        await self.storage.ensure_open()
        return await storage.inbox_seen(self.consumer_name, event_id)

    async def process_once(self, event_id: str, handler: Handler) -> bool:
        """Run ``handler`` unless this consumer already processed ``event_id``.

        Returns True when the handler ran (and succeeded), False when the event was
        dropped as a duplicate. An exception from the handler propagates; with
        ``mark="after"`` the event is then not recorded, so a redelivery runs it again.
        """
        if not event_id:
            raise ValueError("process_once needs the event id (the sagaz-event-id header)")
        storage = self.storage
        await storage.ensure_open()
        consumer = self.consumer_name
        if self.mark == "before":
            if not await storage.inbox_mark(consumer, event_id):
                logger.debug("sagaz.outbox: %s dropped duplicate event %s", consumer, event_id)
                return False
            await _call(handler)
            return True
        if await self.seen(event_id):
            logger.debug("sagaz.outbox: %s dropped duplicate event %s", consumer, event_id)
            return False
        await _call(handler)
        if not await storage.inbox_mark(consumer, event_id):
            # Another delivery of the same event was processed at the same time.
            logger.info(
                "sagaz.outbox: %s processed event %s concurrently with another delivery",
                consumer,
                event_id,
            )
        return True


async def _call(handler: Handler) -> None:
    result = handler()
    if inspect.isawaitable(result):
        await result


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8")
    return str(value)


def event_id_from_redis(fields: Mapping[Any, Any]) -> str:
    """The event id of a Redis stream entry's fields (bytes or str keys and values).

    ``fields`` is the mapping of one entry as ``XREAD``/``XREADGROUP`` return it, e.g.
    ``client.xread({"sagaz.events": "0"})[0][1][0][1]``.
    """
    value = fields.get(HEADER_EVENT_ID)
    if value is None:
        value = fields.get(HEADER_EVENT_ID.encode())
    if value is None:
        raise ValueError(f"the stream entry has no {HEADER_EVENT_ID!r} field: {fields!r}")
    return _text(value)


class AmqpMessageLike(Protocol):
    """The part of an aio-pika (incoming) message :func:`event_id_from_amqp` reads."""

    @property
    def message_id(self) -> str | None:
        """The AMQP ``message_id`` property."""
        ...

    @property
    def headers(self) -> Mapping[str, Any]:
        """The AMQP headers table."""
        ...


def event_id_from_amqp(message: AmqpMessageLike) -> str:
    """The event id of a RabbitMQ message (its ``message_id``, else its header)."""
    if message.message_id:
        return message.message_id
    value = (message.headers or {}).get(HEADER_EVENT_ID)
    if value is None:
        raise ValueError(f"the message has neither a message_id nor a {HEADER_EVENT_ID!r} header")
    return _text(value)
