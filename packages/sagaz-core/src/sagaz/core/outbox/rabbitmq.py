"""Publish outbox events to RabbitMQ (``pip install 'sagaz-core[rabbitmq]'``, aio-pika).

Events go to a durable topic exchange (``sagaz.events`` unless the URL names one)
with the event type as the routing key, so a consumer binds its queue with e.g.
``saga.*`` or ``order.#``. Messages are persistent; ``message_id`` is the event id,
``correlation_id`` the saga's correlation id, ``type`` the event type, and the
``sagaz-*`` headers repeat them. Publisher confirms are on: a publish returns once
RabbitMQ has taken responsibility for the message.

Unroutable messages (no queue bound for their routing key) are dropped by RabbitMQ
unless ``mandatory=true``, which makes them fail and be retried by the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sagaz.core.errors import ConfigurationError
from sagaz.core.outbox.broker import (
    DEFAULT_TOPIC,
    HEADER_CORRELATION_ID,
    HEADER_CREATED_AT,
    Broker,
    BrokerError,
    BrokerMessage,
    BrokerUnavailableError,
)

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

__all__ = ["RabbitMQBroker"]

_OWN_PARAMS = ("exchange", "exchange_type", "mandatory", "timeout")
_EXCHANGE_TYPES = ("topic", "direct", "fanout", "headers")
_TRUE = {"1", "true", "yes", "on"}
_BOOLEANS = _TRUE | {"0", "false", "no", "off"}


def _require_aio_pika() -> None:
    try:
        import aio_pika  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            "the RabbitMQ broker needs aio-pika: pip install 'sagaz-core[rabbitmq]'"
        ) from exc


class RabbitMQBroker(Broker):
    """Publishes to a durable RabbitMQ exchange with publisher confirms (aio-pika).

    ``exchange`` is the exchange name (``message.topic`` picks another per message);
    ``exchange_type`` is ``topic`` unless told; the routing key is the event type.
    ``timeout`` bounds connecting and each confirm, in seconds.
    """

    def __init__(
        self,
        url: str = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        exchange: str = DEFAULT_TOPIC,
        exchange_type: str = "topic",
        mandatory: bool = False,
        timeout: float = 10.0,
    ) -> None:
        _require_aio_pika()
        if not exchange:
            raise ConfigurationError(
                "the RabbitMQ exchange name must not be empty (the default exchange "
                "cannot route by event type)"
            )
        if exchange_type not in _EXCHANGE_TYPES:
            raise ConfigurationError(
                f"exchange_type {exchange_type!r} is not one of {', '.join(_EXCHANGE_TYPES)}"
            )
        if timeout <= 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, got {timeout}")
        self.url = url
        self.topic = exchange
        self.exchange_type = exchange_type
        self.mandatory = mandatory
        self.timeout = timeout
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}

    def __repr__(self) -> str:
        parts = urlsplit(self.url)
        where = f"{parts.hostname or '?'}:{parts.port or 5672}"
        return f"RabbitMQBroker({where}, exchange={self.topic!r})"

    @classmethod
    def from_url(cls, url: str) -> RabbitMQBroker:
        """A broker from ``amqp://user:pass@host:5672/vhost?exchange=sagaz.events``.

        Query parameters ``exchange``, ``exchange_type``, ``mandatory`` (true/false)
        and ``timeout`` (seconds) are the broker's; any other ones go to aio-pika.
        """
        parts = urlsplit(url)
        params = parse_qsl(parts.query, keep_blank_values=True)
        own = {k: v for k, v in params if k in _OWN_PARAMS}
        rest = [(k, v) for k, v in params if k not in _OWN_PARAMS]
        amqp_url = urlunsplit(parts._replace(query=urlencode(rest)))
        try:
            timeout = float(own["timeout"]) if own.get("timeout") else 10.0
        except ValueError:
            raise ConfigurationError(
                f"broker URL {url!r}: timeout must be a number of seconds"
            ) from None
        mandatory = own.get("mandatory", "false").strip().lower()
        if mandatory not in _BOOLEANS:
            raise ConfigurationError(f"broker URL {url!r}: mandatory must be true or false")
        return cls(
            amqp_url,
            exchange=own.get("exchange") or DEFAULT_TOPIC,
            exchange_type=own.get("exchange_type") or "topic",
            mandatory=mandatory in _TRUE,
            timeout=timeout,
        )

    @property
    def connected(self) -> bool:
        """Whether the connection and channel are open."""
        return (
            self._connection is not None
            and not self._connection.is_closed
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def connect(self) -> None:
        """Connect, open a confirming channel and declare :attr:`topic`'s exchange."""
        if self.connected:
            return
        await self.close()
        import aio_pika

        try:
            connection = await aio_pika.connect(self.url, timeout=self.timeout)
        except Exception as exc:
            raise BrokerUnavailableError(f"cannot reach RabbitMQ at {self!r}: {exc}") from exc
        self._connection = connection
        try:
            self._channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await self._exchange(self.topic)
        except Exception as exc:
            await self.close()
            raise BrokerUnavailableError(
                f"cannot open a channel or declare exchange {self.topic!r} on {self!r}: {exc}"
            ) from exc

    async def close(self) -> None:
        """Close the channel and the connection."""
        connection, self._connection = self._connection, None
        self._channel = None
        self._exchanges.clear()
        if connection is not None:
            with contextlib.suppress(Exception):  # closing a dead connection may fail
                await connection.close()

    async def _exchange(self, name: str) -> AbstractExchange:
        exchange = self._exchanges.get(name)
        if exchange is None:
            if self._channel is None:
                raise BrokerUnavailableError(f"{self!r} is not connected; call connect() first")
            import aio_pika

            exchange = await self._channel.declare_exchange(
                name, aio_pika.ExchangeType(self.exchange_type), durable=True
            )
            self._exchanges[name] = exchange
        return exchange

    async def publish(self, message: BrokerMessage) -> None:
        """Publish persistently to ``message.topic``'s exchange and await the confirm."""
        import aio_pika
        from aio_pika.exceptions import DeliveryError

        if not self.connected:
            raise BrokerUnavailableError(f"{self!r} is not connected; call connect() first")
        headers = message.headers
        created = headers.get(HEADER_CREATED_AT)
        amqp_message = aio_pika.Message(
            message.body,
            headers=dict(headers),
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.event_id,
            correlation_id=headers.get(HEADER_CORRELATION_ID),
            type=message.event_type,
            timestamp=datetime.fromisoformat(created) if created else None,
            app_id="sagaz",
        )
        try:
            exchange = await self._exchange(message.topic)
            await exchange.publish(
                amqp_message,
                routing_key=message.event_type,
                mandatory=self.mandatory,
                timeout=self.timeout,
            )
        except DeliveryError as exc:  # nack, or returned as unroutable (mandatory)
            raise BrokerError(f"RabbitMQ did not accept event {message.event_id}: {exc}") from exc
        except Exception as exc:
            # Connection or channel lost, or a confirm timed out: reconnect next time.
            await self.close()
            raise BrokerUnavailableError(f"publishing to {self!r} failed: {exc!r}") from exc

    async def publish_batch(self, messages: Sequence[BrokerMessage]) -> list[BaseException | None]:
        """Publish every message, then await all their confirms together."""
        if not messages:
            return []
        results = await asyncio.gather(*(self.publish(m) for m in messages), return_exceptions=True)
        outcomes: list[BaseException | None] = []
        for result in results:
            if isinstance(result, asyncio.CancelledError):
                raise result
            outcomes.append(result if isinstance(result, BaseException) else None)
        return outcomes
