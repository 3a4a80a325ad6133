"""Publish outbox events to a Redis Stream (``pip install 'sagaz-core[redis]'``).

Each event is one stream entry (``XADD <stream> * ...``) whose fields are the
``sagaz-*`` headers plus ``body`` (the JSON payload)::

    sagaz-event-id  3f0c...   sagaz-saga-id  9a1e...   sagaz-event-type  saga.completed
    sagaz-correlation-id  req-42 (when set)   sagaz-created-at  2025-...   body  {"saga_id": ...}

Consumers read with ``XREAD`` / ``XREADGROUP`` and drop duplicates by
``sagaz-event-id`` (see :func:`sagaz.core.outbox.event_id_from_redis`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sagaz.core.errors import ConfigurationError
from sagaz.core.outbox.broker import (
    DEFAULT_TOPIC,
    Broker,
    BrokerError,
    BrokerMessage,
    BrokerUnavailableError,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["BODY_FIELD", "RedisStreamsBroker"]

#: The stream entry field holding the event payload (JSON).
BODY_FIELD = "body"

_OWN_PARAMS = ("stream", "maxlen", "approximate", "timeout")


def _require_redis() -> None:
    try:
        import redis.asyncio  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            "the Redis Streams broker needs redis-py: pip install 'sagaz-core[redis]'"
        ) from exc


def _unavailable(exc: BaseException) -> bool:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError | TimeoutError)


class RedisStreamsBroker(Broker):
    """Publishes to a Redis Stream with ``XADD`` (redis-py asyncio).

    ``stream`` is the stream key; ``maxlen`` caps its length (``MAXLEN ~ n`` when
    ``approximate``, the cheap form; None keeps every entry); ``timeout`` bounds
    connecting and each command, in seconds. A batch is sent as one pipeline.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        stream: str = DEFAULT_TOPIC,
        maxlen: int | None = None,
        approximate: bool = True,
        timeout: float = 5.0,
    ) -> None:
        _require_redis()
        if not stream:
            raise ConfigurationError("the Redis stream name must not be empty")
        if maxlen is not None and maxlen < 1:
            raise ConfigurationError(f"maxlen must be >= 1 or None, got {maxlen}")
        if timeout <= 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, got {timeout}")
        self.url = url
        self.topic = stream
        self.maxlen = maxlen
        self.approximate = approximate
        self.timeout = timeout
        self._client: Redis | None = None

    def __repr__(self) -> str:
        parts = urlsplit(self.url)
        where = parts.hostname or "?"
        return f"RedisStreamsBroker({where}:{parts.port or 6379}, stream={self.topic!r})"

    @classmethod
    def from_url(cls, url: str) -> RedisStreamsBroker:
        """A broker from ``redis://[user:pass@]host:port/db?stream=...&maxlen=...``.

        Query parameters ``stream``, ``maxlen``, ``approximate`` (true/false) and
        ``timeout`` (seconds) are the broker's; any other ones go to redis-py.
        """
        parts = urlsplit(url)
        params = parse_qsl(parts.query, keep_blank_values=True)
        own = {k: v for k, v in params if k in _OWN_PARAMS}
        rest = [(k, v) for k, v in params if k not in _OWN_PARAMS]
        redis_url = urlunsplit(parts._replace(query=urlencode(rest)))
        try:
            maxlen = int(own["maxlen"]) if own.get("maxlen") else None
            timeout = float(own["timeout"]) if own.get("timeout") else 5.0
        except ValueError:
            raise ConfigurationError(
                f"broker URL {url!r}: maxlen must be an integer and timeout a number of seconds"
            ) from None
        approximate = own.get("approximate", "true").strip().lower()
        if approximate not in {"true", "false", "1", "0", "yes", "no"}:
            raise ConfigurationError(f"broker URL {url!r}: approximate must be true or false")
        return cls(
            redis_url,
            stream=own.get("stream") or DEFAULT_TOPIC,
            maxlen=maxlen,
            approximate=approximate in {"true", "1", "yes"},
            timeout=timeout,
        )

    @property
    def connected(self) -> bool:
        """Whether a client is open (redis-py reconnects it per command if needed)."""
        return self._client is not None

    async def connect(self) -> None:
        """Open the client and ``PING`` the server."""
        if self._client is not None:
            return
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        client = Redis.from_url(
            self.url,
            socket_connect_timeout=self.timeout,
            socket_timeout=self.timeout,
            # One quick retry covers a pooled connection the server dropped; the
            # relay does the real retrying, with backoff.
            retry=Retry(NoBackoff(), 1),
        )
        try:
            await client.ping()
        except Exception as exc:
            await _quiet_close(client)
            raise BrokerUnavailableError(f"cannot reach Redis at {self!r}: {exc}") from exc
        self._client = client

    async def close(self) -> None:
        """Close the client and its connection pool."""
        client, self._client = self._client, None
        if client is not None:
            await _quiet_close(client)

    def _fields(self, message: BrokerMessage) -> dict[Any, Any]:
        fields: dict[Any, Any] = dict(message.headers)
        fields[BODY_FIELD] = message.body
        return fields

    def _client_or_raise(self) -> Redis:
        if self._client is None:
            raise BrokerUnavailableError(f"{self!r} is not connected; call connect() first")
        return self._client

    def _wrap(self, exc: BaseException) -> BrokerError:
        if _unavailable(exc):
            return BrokerUnavailableError(f"Redis at {self!r} failed: {exc}")
        return BrokerError(f"Redis refused the entry: {exc}")

    async def publish(self, message: BrokerMessage) -> None:
        """``XADD`` the message to ``message.topic``."""
        client = self._client_or_raise()
        try:
            await client.xadd(
                message.topic,
                self._fields(message),
                maxlen=self.maxlen,
                approximate=self.approximate,
            )
        except Exception as exc:
            raise self._wrap(exc) from exc

    async def publish_batch(self, messages: Sequence[BrokerMessage]) -> list[BaseException | None]:
        """``XADD`` every message in one pipeline (one round trip, not a transaction)."""
        if not messages:
            return []
        client = self._client_or_raise()
        try:
            async with client.pipeline(transaction=False) as pipe:
                for message in messages:
                    pipe.xadd(
                        message.topic,
                        self._fields(message),
                        maxlen=self.maxlen,
                        approximate=self.approximate,
                    )
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            error = self._wrap(exc)
            error.__cause__ = exc
            return [error] * len(messages)
        return [self._wrap(r) if isinstance(r, Exception) else None for r in replies]


async def _quiet_close(client: Redis) -> None:
    with contextlib.suppress(Exception):  # closing a dead connection may fail
        await client.aclose()
