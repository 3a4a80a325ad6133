"""The transactional outbox: relay saga events to a broker, drop duplicates in consumers.

With ``SagaConfig(outbox=True)`` the engine writes ``saga.started``,
``saga.step_completed``, ``saga.completed``, ``saga.compensated``, ``saga.failed`` and
the events steps emit (:func:`sagaz.core.engine.emit_event`) to the outbox, in the
same storage transaction as the change that caused them. :class:`OutboxRelay`
publishes them at least once, in order per saga, to a :class:`Broker`
(:func:`broker_from_url`: ``memory://``, ``redis://...`` for Redis Streams,
``amqp://...`` for RabbitMQ); :class:`Inbox` lets a consumer process each event id
once. Message headers are named by the ``HEADER_*`` constants.
"""

from __future__ import annotations

from sagaz.core.outbox.broker import (
    DEFAULT_TOPIC,
    HEADER_CORRELATION_ID,
    HEADER_CREATED_AT,
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    HEADER_SAGA_ID,
    Broker,
    BrokerError,
    BrokerMessage,
    BrokerUnavailableError,
    InMemoryBroker,
    broker_from_url,
)
from sagaz.core.outbox.inbox import (
    AmqpMessageLike,
    Handler,
    Inbox,
    InboxReader,
    event_id_from_amqp,
    event_id_from_redis,
)
from sagaz.core.outbox.rabbitmq import RabbitMQBroker
from sagaz.core.outbox.redis_streams import BODY_FIELD, RedisStreamsBroker
from sagaz.core.outbox.relay import OutboxRelay, is_outage

__all__ = [
    "BODY_FIELD",
    "DEFAULT_TOPIC",
    "HEADER_CORRELATION_ID",
    "HEADER_CREATED_AT",
    "HEADER_EVENT_ID",
    "HEADER_EVENT_TYPE",
    "HEADER_SAGA_ID",
    "AmqpMessageLike",
    "Broker",
    "BrokerError",
    "BrokerMessage",
    "BrokerUnavailableError",
    "Handler",
    "InMemoryBroker",
    "Inbox",
    "InboxReader",
    "OutboxRelay",
    "RabbitMQBroker",
    "RedisStreamsBroker",
    "broker_from_url",
    "event_id_from_amqp",
    "event_id_from_redis",
    "is_outage",
]
