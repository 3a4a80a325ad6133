"""The outbox relay: publishes the events sagas wrote to the outbox, at least once.

The engine writes saga events (with ``SagaConfig(outbox=True)``) in the same storage
transaction as the state change that caused them; the relay claims them in batches,
publishes them to a :class:`~sagaz.core.outbox.Broker` and marks them sent::

    relay = OutboxRelay(storage, broker_from_url("redis://127.0.0.1:6379/0"))
    stop = asyncio.Event()
    await relay.run(stop)          # until stop.set()

Guarantees:

- **At least once.** An event is marked sent only after the broker accepted it; a
  crash in between publishes it again once its claim expires (the storage's
  ``lease_seconds``). Every message carries the event id (``sagaz-event-id`` header,
  and the message id on RabbitMQ): consumers drop duplicates with
  :class:`~sagaz.core.outbox.Inbox`.
- **In order per saga.** Storage hands out an event only when no earlier event of its
  saga is still pending; within a batch, events of one saga are published one after
  the other, and once one fails the later ones of that saga wait.
- **Retries with backoff.** A failed event is retried after
  ``backoff_base * 2 ** (attempts - 1)`` seconds (at most ``backoff_max``), times a
  jitter factor in [0.5, 1]. After ``max_attempts`` failures the broker *refused*
  (:class:`~sagaz.core.outbox.BrokerError`, or any error that is not a connection
  error) the event is dead-lettered: status DEAD, never retried, visible in
  ``list_outbox`` / ``outbox_counts``.
- **Outages are not the event's fault.** When the broker cannot be reached
  (:class:`~sagaz.core.outbox.BrokerUnavailableError`, ``ConnectionError``,
  ``OSError``, a timeout) the claimed events are failed with the same backoff, so
  their ``attempts`` and ``next_attempt_at`` grow and the outage shows in the outbox
  listing, but they are never dead-lettered for it: they are delivered when the broker
  is back. The relay reconnects by itself and never crashes or spins on an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence

from sagaz.core.errors import ConfigurationError
from sagaz.core.outbox.broker import Broker, BrokerMessage, BrokerUnavailableError
from sagaz.core.records import OutboxRecord
from sagaz.core.storage.base import SagaStorage

__all__ = ["OutboxRelay", "is_outage"]

logger = logging.getLogger("sagaz.outbox")


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the broker could not be reached (as opposed to refusing
    one message): such failures are retried for as long as they last."""
    return isinstance(exc, BrokerUnavailableError | ConnectionError | OSError | TimeoutError)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class OutboxRelay:
    """Publishes outbox events from ``storage`` to ``broker``.

    ``batch_size`` events are claimed at a time; :meth:`run` polls every
    ``poll_interval`` seconds when there is nothing to publish. Failed events are
    retried with exponential backoff (``backoff_base`` doubling per attempt, capped at
    ``backoff_max`` seconds, with jitter) and dead-lettered after ``max_attempts``
    refusals; broker outages never dead-letter (see the module documentation).
    ``publish_timeout`` bounds one batch publication; a batch that takes longer counts
    as an outage.

    Counters :attr:`published`, :attr:`failed` and :attr:`dead_lettered` add up what
    this relay did since it was created.
    """

    def __init__(
        self,
        storage: SagaStorage,
        broker: Broker,
        *,
        batch_size: int = 100,
        poll_interval: float = 0.5,
        max_attempts: int = 10,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        publish_timeout: float = 30.0,
    ) -> None:
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
        if poll_interval <= 0:
            raise ConfigurationError(f"poll_interval must be > 0 seconds, got {poll_interval}")
        if max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be >= 1, got {max_attempts}")
        if backoff_base <= 0 or backoff_max < backoff_base:
            raise ConfigurationError(
                f"backoff must satisfy 0 < backoff_base <= backoff_max, got "
                f"backoff_base={backoff_base}, backoff_max={backoff_max}"
            )
        if publish_timeout <= 0:
            raise ConfigurationError(f"publish_timeout must be > 0 seconds, got {publish_timeout}")
        self.storage = storage
        self.broker = broker
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.publish_timeout = publish_timeout
        self.published = 0
        self.failed = 0
        self.dead_lettered = 0
        self._outage_since: float | None = None

    def __repr__(self) -> str:
        return (
            f"OutboxRelay(storage={type(self.storage).__name__}, broker={self.broker!r}, "
            f"batch_size={self.batch_size})"
        )

    def retry_delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failure of an event (with jitter)."""
        exponent = min(max(attempts - 1, 0), 62)
        delay = min(self.backoff_max, self.backoff_base * 2.0**exponent)
        return delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not crypto  # nosec B311

    # -- one batch -----------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim one batch, publish it and record the outcome; return how many were sent.

        Broker failures are recorded on the events (never raised); a storage failure
        propagates.
        """
        await self.storage.ensure_open()
        records = await self.storage.claim_outbox(self.batch_size)
        if not records:
            return 0
        records.sort(key=lambda r: r.seq)
        if not self.broker.connected:
            try:
                await self.broker.connect()
            except Exception as exc:
                # Whatever the error, it is the broker's, not the events': an outage.
                outage: BaseException = exc
                if not is_outage(exc):
                    outage = BrokerUnavailableError(_describe(exc))
                    outage.__cause__ = exc
                self._note_outage(outage)
                await self._quiet_close()
                for rec in records:
                    await self._failed(rec, outage)
                return 0
        return await self._publish(records)

    async def _publish(self, records: list[OutboxRecord]) -> int:
        # Wave k holds the k-th claimed event of each saga: one call never carries two
        # events of one saga, and a saga whose event failed sits out the later waves.
        waves: list[list[OutboxRecord]] = []
        position: dict[str, int] = {}
        for rec in records:
            k = position.get(rec.event.saga_id, 0)
            position[rec.event.saga_id] = k + 1
            if k == len(waves):
                waves.append([])
            waves[k].append(rec)
        blocked: set[str] = set()
        sent: list[str] = []
        outage: BaseException | None = None
        for wave in waves:
            todo = [r for r in wave if r.event.saga_id not in blocked]
            if outage is not None:
                # The broker just went away: fail the rest without trying each one.
                for rec in todo:
                    await self._failed(rec, outage)
                continue
            messages: list[BrokerMessage] = []
            ready: list[OutboxRecord] = []
            for rec in todo:
                try:
                    messages.append(self.broker.message_for(rec.event))
                except Exception as exc:
                    blocked.add(rec.event.saga_id)
                    await self._failed(rec, exc)
                else:
                    ready.append(rec)
            if not ready:
                continue
            outcomes = await self._publish_batch(messages)
            for rec, error in zip(ready, outcomes, strict=True):
                if error is None:
                    sent.append(rec.event.event_id)
                    continue
                blocked.add(rec.event.saga_id)
                if is_outage(error):
                    outage = error
                    self._note_outage(error)  # one warning, not one per event
                await self._failed(rec, error)
            if outage is not None:
                await self._quiet_close()
        if len(waves) > 1:
            skipped = sum(1 for wave in waves[1:] for r in wave if r.event.saga_id in blocked)
            if skipped:
                logger.debug(
                    "sagaz.outbox: %d later event(s) of failed sagas wait for their claim "
                    "to expire",
                    skipped,
                )
        if sent:
            await self.storage.outbox_sent(sent)
            self.published += len(sent)
            if outage is None:
                self._note_recovered()
        return len(sent)

    async def _publish_batch(self, messages: Sequence[BrokerMessage]) -> list[BaseException | None]:
        try:
            async with asyncio.timeout(self.publish_timeout):
                outcomes = await self.broker.publish_batch(messages)
        except TimeoutError:
            error: BaseException = BrokerUnavailableError(
                f"publishing {len(messages)} event(s) to {self.broker!r} took longer than "
                f"{self.publish_timeout}s"
            )
            return [error] * len(messages)
        except Exception as exc:
            return [exc] * len(messages)
        if len(outcomes) != len(messages):  # a broken Broker subclass
            error = RuntimeError(
                f"{type(self.broker).__name__}.publish_batch returned {len(outcomes)} "
                f"outcomes for {len(messages)} messages"
            )
            return [error] * len(messages)
        return outcomes

    async def _failed(self, rec: OutboxRecord, exc: BaseException) -> None:
        event = rec.event
        attempts = rec.attempts + 1
        error = _describe(exc)
        self.failed += 1
        if attempts >= self.max_attempts and not is_outage(exc):
            self.dead_lettered += 1
            logger.error(
                "sagaz.outbox: dead-lettered event %s (%s of saga %s) after %d attempts: %s",
                event.event_id,
                event.event_type,
                event.saga_id,
                attempts,
                error,
            )
            await self.storage.outbox_failed(event.event_id, error, None)
            return
        delay = self.retry_delay(attempts)
        if self._outage_since is None:
            logger.warning(
                "sagaz.outbox: publishing event %s (%s of saga %s) failed (attempt %d), "
                "retrying in %.1fs: %s",
                event.event_id,
                event.event_type,
                event.saga_id,
                attempts,
                delay,
                error,
            )
        await self.storage.outbox_failed(event.event_id, error, time.time() + delay)

    def _note_outage(self, exc: BaseException) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            logger.warning(
                "sagaz.outbox: broker %r is unavailable; events are kept and retried with "
                "backoff: %s",
                self.broker,
                _describe(exc),
            )

    def _note_recovered(self) -> None:
        if self._outage_since is not None:
            logger.info(
                "sagaz.outbox: broker %r is reachable again after %.1fs",
                self.broker,
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None

    async def _quiet_close(self) -> None:
        try:
            await self.broker.close()
        except Exception:
            logger.debug("sagaz.outbox: closing %r failed", self.broker, exc_info=True)

    # -- the loop ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Publish until ``stop`` is set (or the task is cancelled), then close the broker.

        Goes on at once while batches are being sent, sleeps ``poll_interval`` when
        there is nothing to send (or the broker is down), and backs off when the
        storage fails. Never raises for a broker or storage failure.
        """
        stop = stop if stop is not None else asyncio.Event()
        storage_failures = 0
        logger.info("sagaz.outbox: relay started (%r)", self)
        try:
            while not stop.is_set():
                try:
                    sent = await self.run_once()
                except Exception:
                    storage_failures += 1
                    delay = min(
                        self.backoff_max, self.poll_interval * 2.0 ** min(storage_failures, 20)
                    )
                    logger.warning(
                        "sagaz.outbox: the relay's storage call failed (%d in a row); "
                        "retrying in %.1fs",
                        storage_failures,
                        delay,
                        exc_info=True,
                    )
                    await self._sleep(stop, delay)
                    continue
                storage_failures = 0
                if sent:
                    await asyncio.sleep(0)  # let others run between full batches
                else:
                    await self._sleep(stop, self.poll_interval)
        finally:
            await self._quiet_close()
            logger.info("sagaz.outbox: relay stopped (%d published)", self.published)

    async def drain(self) -> int:
        """Run batches until one sends nothing; return how many events were sent.

        Events waiting for a retry later are left alone. Handy in tests and scripts
        (bound it with ``asyncio.timeout`` if writers keep adding events).
        """
        total = 0
        while sent := await self.run_once():
            total += sent
        return total

    async def close(self) -> None:
        """Close the broker connection (the storage is the caller's to close)."""
        await self._quiet_close()

    @staticmethod
    async def _sleep(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()
