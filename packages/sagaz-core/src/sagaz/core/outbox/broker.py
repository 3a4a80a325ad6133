"""What the outbox relay publishes to: the :class:`Broker` interface, its messages,
the in-memory broker, and :func:`broker_from_url`.

Every message carries the event id in the ``sagaz-event-id`` header (and as the
broker's message id where it has one): delivery is at least once, so a consumer drops
duplicates by that id (see :class:`sagaz.core.outbox.Inbox`).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self
from urllib.parse import parse_qsl, urlsplit

from sagaz.core.errors import ConfigurationError, SagaError
from sagaz.core.records import OutboxEvent, iso

__all__ = [
    "DEFAULT_TOPIC",
    "HEADER_CORRELATION_ID",
    "HEADER_CREATED_AT",
    "HEADER_EVENT_ID",
    "HEADER_EVENT_TYPE",
    "HEADER_SAGA_ID",
    "Broker",
    "BrokerError",
    "BrokerMessage",
    "BrokerUnavailableError",
    "InMemoryBroker",
    "broker_from_url",
]

#: Header (Redis stream field, AMQP header) holding the event id: the deduplication key.
HEADER_EVENT_ID = "sagaz-event-id"
#: Header holding the id of the saga the event belongs to (also the message key).
HEADER_SAGA_ID = "sagaz-saga-id"
#: Header holding the event type, e.g. ``saga.completed`` (the AMQP routing key too).
HEADER_EVENT_TYPE = "sagaz-event-type"
#: Header holding the correlation id of the request that started the saga; absent
#: when the saga has none.
HEADER_CORRELATION_ID = "sagaz-correlation-id"
#: Header holding when the event was written to the outbox (ISO-8601, UTC).
HEADER_CREATED_AT = "sagaz-created-at"

#: The stream (Redis) or exchange (RabbitMQ) events go to unless the URL names one.
DEFAULT_TOPIC = "sagaz.events"


class BrokerError(SagaError):
    """A broker refused or failed to take a message (the relay retries it later)."""


class BrokerUnavailableError(BrokerError, ConnectionError):
    """The broker cannot be reached (down, refused, timed out, connection lost).

    The relay retries such failures with backoff for as long as the outage lasts and
    never dead-letters an event because of one.
    """


@dataclass(frozen=True, slots=True)
class BrokerMessage:
    """One event as published: where to, its key, its JSON body and its headers.

    ``topic`` is the Redis stream or the RabbitMQ exchange; ``key`` is the saga id
    (events of one saga are published in order); ``body`` is the event payload as
    UTF-8 JSON; ``headers`` hold the ``HEADER_*`` values (strings).
    """

    topic: str
    key: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def event_id(self) -> str:
        """The event id (the :data:`HEADER_EVENT_ID` header)."""
        return self.headers[HEADER_EVENT_ID]

    @property
    def event_type(self) -> str:
        """The event type (the :data:`HEADER_EVENT_TYPE` header)."""
        return self.headers[HEADER_EVENT_TYPE]

    @property
    def correlation_id(self) -> str | None:
        """The correlation id, or None when the saga has none."""
        return self.headers.get(HEADER_CORRELATION_ID)

    def json(self) -> object:
        """The body decoded from JSON."""
        return json.loads(self.body)

    @classmethod
    def from_event(cls, event: OutboxEvent, topic: str = DEFAULT_TOPIC) -> BrokerMessage:
        """The message that publishes ``event`` to ``topic``."""
        headers = {
            HEADER_EVENT_ID: event.event_id,
            HEADER_SAGA_ID: event.saga_id,
            HEADER_EVENT_TYPE: event.event_type,
        }
        if event.correlation_id is not None:
            headers[HEADER_CORRELATION_ID] = event.correlation_id
        created = iso(event.created_at)
        if created is not None:
            headers[HEADER_CREATED_AT] = created
        body = json.dumps(event.payload, separators=(",", ":"), ensure_ascii=False)
        return cls(topic, event.saga_id, body.encode("utf-8"), headers)


class Broker(ABC):
    """Where the outbox relay publishes events.

    :meth:`connect` before publishing (the relay does it, and again after a
    :class:`BrokerUnavailableError`); :meth:`close` releases the connection and may
    be followed by another :meth:`connect`. A publish either returns (the broker has
    the message: acknowledged or confirmed) or raises :class:`BrokerError`.
    """

    #: The stream or exchange messages go to (see :meth:`message_for`).
    topic: str = DEFAULT_TOPIC

    @property
    @abstractmethod
    def connected(self) -> bool:
        """Whether :meth:`connect` succeeded and the connection is not known to be lost."""

    @abstractmethod
    async def connect(self) -> None:
        """Connect (idempotent); raise :class:`BrokerUnavailableError` if unreachable."""

    @abstractmethod
    async def close(self) -> None:
        """Release the connection (idempotent; never raises for a dead connection)."""

    @abstractmethod
    async def publish(self, message: BrokerMessage) -> None:
        """Publish one message; return once the broker has it."""

    async def publish_batch(self, messages: Sequence[BrokerMessage]) -> list[BaseException | None]:
        """Publish several messages; one outcome per message, in order (None: published).

        A broker may publish the messages of one call concurrently, so their relative
        order is not guaranteed: the relay never passes two events of one saga in one
        call. The default publishes one at a time; Redis pipelines the batch and
        RabbitMQ awaits its confirms together.
        """
        outcomes: list[BaseException | None] = []
        for message in messages:
            try:
                await self.publish(message)
            except Exception as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes

    def message_for(self, event: OutboxEvent) -> BrokerMessage:
        """The message publishing ``event`` (to :attr:`topic`); override to route."""
        return BrokerMessage.from_event(event, self.topic)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class InMemoryBroker(Broker):
    """Keeps published messages in this process (tests, demos, ``memory://``).

    :attr:`messages` holds the last ``max_messages`` messages in publication order.
    Set :attr:`available` to False to simulate an outage: :meth:`connect` and
    :meth:`publish` then raise :class:`BrokerUnavailableError`.
    """

    def __init__(self, *, topic: str = DEFAULT_TOPIC, max_messages: int = 100_000) -> None:
        self.topic = topic
        self.messages: deque[BrokerMessage] = deque(maxlen=max_messages)
        self.available = True
        self._connected = False

    def __repr__(self) -> str:
        return f"InMemoryBroker(topic={self.topic!r}, messages={len(self.messages)})"

    @property
    def connected(self) -> bool:
        """Whether the broker is connected (and available)."""
        return self._connected and self.available

    async def connect(self) -> None:
        """Connect; raises :class:`BrokerUnavailableError` while :attr:`available` is False."""
        if not self.available:
            raise BrokerUnavailableError("in-memory broker is unavailable (simulated outage)")
        self._connected = True

    async def close(self) -> None:
        """Disconnect (the messages are kept)."""
        self._connected = False

    async def publish(self, message: BrokerMessage) -> None:
        """Append the message to :attr:`messages`."""
        if not self.available:
            self._connected = False
            raise BrokerUnavailableError("in-memory broker is unavailable (simulated outage)")
        self.messages.append(message)

    def on_topic(self, topic: str) -> list[BrokerMessage]:
        """The messages published to ``topic``, in order."""
        return [m for m in self.messages if m.topic == topic]


def _query(url: str) -> tuple[str, dict[str, str]]:
    """Split ``url`` into its scheme (lower case) and its query parameters."""
    parts = urlsplit(url)
    return parts.scheme.lower(), dict(parse_qsl(parts.query, keep_blank_values=True))


def broker_from_url(url: str) -> Broker:
    """Create (but do not connect) the broker a URL names.

    - ``memory://`` (``?topic=``): :class:`InMemoryBroker`;
    - ``redis://host:6379/0?stream=sagaz.events&maxlen=100000`` (or ``rediss://``):
      Redis Streams, needs ``pip install 'sagaz-core[redis]'``;
    - ``amqp://user:pass@host:5672/vhost?exchange=sagaz.events`` (or ``amqps://``):
      RabbitMQ, needs ``pip install 'sagaz-core[rabbitmq]'``.

    >>> type(broker_from_url("memory://")).__name__
    'InMemoryBroker'
    """
    if "://" not in url:
        raise ConfigurationError(
            f"broker URL {url!r} has no scheme; use memory://, redis://host:6379/0 "
            "or amqp://user:pass@host:5672/"
        )
    scheme, params = _query(url)
    if scheme == "memory":
        return InMemoryBroker(topic=params.get("topic") or DEFAULT_TOPIC)
    if scheme in {"redis", "rediss"}:
        from sagaz.core.outbox.redis_streams import RedisStreamsBroker

        return RedisStreamsBroker.from_url(url)
    if scheme in {"amqp", "amqps"}:
        from sagaz.core.outbox.rabbitmq import RabbitMQBroker

        return RabbitMQBroker.from_url(url)
    raise ConfigurationError(
        f"unknown broker URL scheme {scheme!r} in {url!r}; use memory://, "
        "redis://host:6379/0?stream=sagaz.events or amqp://user:pass@host:5672/?exchange=sagaz.events"
    )
