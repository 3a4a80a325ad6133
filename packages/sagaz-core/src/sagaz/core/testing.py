"""Helpers for testing your own sagas: in-memory config, sync runs, history assertions.

Built on the real engine and in-memory storage (nothing is mocked)::

    from sagaz.core.testing import memory_config, run_saga, history

    def test_payment_failure_is_compensated():
        with memory_config():
            result = run_saga(OrderSaga(), {"order_id": "A1", "amount": 5000})
            result_history = history(result)
        result_history.assert_status("COMPENSATED")
        result_history.assert_compensated_in_order(["reserve_inventory"])

:func:`memory_config` installs a fresh in-memory :class:`~sagaz.core.SagaConfig` as the
process-wide config for the ``with`` block and restores the previous one afterwards; use
it in a pytest fixture (``with memory_config() as config: yield config``). Its storage
checks, like SQLite and PostgreSQL do, that contexts and step results are JSON.

In ``async def`` tests, ``await saga.run(...)`` and ``await load_history(...)`` instead
of the sync :func:`run_saga` and :func:`history`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import sagaz.core.config as _config_module
from sagaz.core.config import SagaConfig, get_config
from sagaz.core.errors import SagaNotFoundError
from sagaz.core.records import HistoryEntry, SagaRecord, TransitionKind
from sagaz.core.result import SagaResult
from sagaz.core.retry import RetryPolicy
from sagaz.core.saga import Saga
from sagaz.core.status import SagaStatus
from sagaz.core.storage.memory import InMemorySagaStorage
from sagaz.core.triggers import fire_event

__all__ = [
    "SagaHistory",
    "StrictMemoryStorage",
    "assert_compensated_in_order",
    "assert_saga_status",
    "assert_steps_completed",
    "fire_and_wait",
    "fresh_config",
    "history",
    "load_history",
    "memory_config",
    "run_saga",
]

_T = TypeVar("_T")

#: Compensations keep the production default of three attempts, without the waits.
_FAST_COMPENSATION_RETRY = RetryPolicy(max_attempts=3, backoff_base=0.0, jitter=0.0)


class StrictMemoryStorage(InMemorySagaStorage):
    """In-memory storage that holds sagas to the rules of durable storage.

    Like SQLite and PostgreSQL, it refuses a context, step result or trigger payload that
    is not JSON (:class:`~sagaz.core.ContextNotSerializableError` names the key), and
    sagas run under leases. Records live in this process only.
    """

    durable: ClassVar[bool] = True


def fresh_config(*, strict: bool = True, **kwargs: Any) -> SagaConfig:
    """A new :class:`~sagaz.core.SagaConfig` on fresh in-memory storage, for tests.

    ``strict=True`` uses :class:`StrictMemoryStorage` (JSON is enforced as in
    production); ``strict=False`` the plain :class:`~sagaz.core.InMemorySagaStorage`.
    Compensations are retried three times (the production default) without backoff
    waits. Other keywords go to :class:`~sagaz.core.SagaConfig` and win.
    """
    if "storage" not in kwargs and "storage_url" not in kwargs:
        kwargs["storage"] = StrictMemoryStorage() if strict else InMemorySagaStorage()
    kwargs.setdefault("compensation_retry", _FAST_COMPENSATION_RETRY)
    return SagaConfig(**kwargs)


@contextmanager
def memory_config(*, strict: bool = True, **kwargs: Any) -> Iterator[SagaConfig]:
    """Make a fresh in-memory :func:`fresh_config` the process-wide config in the block.

    Sagas without a config of their own, :func:`~sagaz.core.fire_event` and
    :func:`history` use it; the previous process-wide config is restored on exit (even
    when the test fails), so tests do not see each other's sagas. A pytest fixture::

        @pytest.fixture
        def sagaz_config():
            with memory_config() as config:
                yield config
    """
    config = fresh_config(strict=strict, **kwargs)
    previous = _config_module._global_config
    _config_module._global_config = config
    try:
        yield config
    finally:
        _config_module._global_config = previous


def _call(what: str, instead: str, factory: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to completion on a new event loop (sync tests only)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            f"{what} is for sync tests and cannot run inside a running event loop; "
            f"in an async test use {instead}"
        )

    async def main() -> _T:
        return await factory()

    return asyncio.run(main())


def run_saga(
    saga: Saga | type[Saga],
    context: Mapping[str, Any] | None = None,
    *,
    config: SagaConfig | None = None,
    idempotency_key: str | None = None,
    correlation_id: str | None = None,
) -> SagaResult:
    """Run a saga to its end from a sync test and return its :class:`~sagaz.core.SagaResult`.

    ``saga`` is a saga object or a declarative saga class (instantiated here). It uses
    ``config`` when given, else its own config or the process-wide one (see
    :func:`memory_config`). A business failure is a result (COMPENSATED or FAILED),
    not an exception, exactly as with ``await saga.run(...)``.
    """
    if isinstance(saga, type):
        if not issubclass(saga, Saga):
            raise TypeError(f"run_saga needs a Saga or a Saga subclass, got {saga.__name__}")
        saga = saga(config=config)
    elif not isinstance(saga, Saga):
        raise TypeError(f"run_saga needs a Saga or a Saga subclass, got {type(saga).__name__}")
    elif config is not None:
        saga = saga.with_config(config)
    runnable = saga
    return _call(
        "run_saga()",
        "`await saga.run(context)`",
        lambda: runnable.run(
            context, idempotency_key=idempotency_key, correlation_id=correlation_id
        ),
    )


def fire_and_wait(
    source: str,
    payload: Mapping[str, Any],
    *,
    config: SagaConfig | None = None,
    correlation_id: str | None = None,
) -> list[SagaResult]:
    """Fire an event at a trigger ``source`` from a sync test; wait for the sagas it starts.

    Returns the result of each saga the event started (or found, for a repeated
    idempotency key), as recorded when they finished. Raises what
    :func:`~sagaz.core.fire_event` raises for an unknown source or a bad payload.
    """
    cfg = config or get_config()

    async def fire() -> list[SagaResult]:
        fired = await fire_event(
            source, payload, config=cfg, correlation_id=correlation_id, wait=True
        )
        results = []
        for saga_id, created in zip(fired.saga_ids, fired.created, strict=True):
            record = await cfg.storage.load(saga_id)
            if record is None:  # pragma: no cover - an in-memory saga was just recorded
                raise SagaNotFoundError(f"no saga {saga_id!r} after firing {source!r}")
            results.append(SagaResult.from_record(record, created=created))
        return results

    return _call("fire_and_wait()", "`await fire_event(source, payload, wait=True)`", fire)


@dataclass(frozen=True, slots=True)
class SagaHistory:
    """A saga's record and history as storage holds them, with assertions for tests.

    Get one with :func:`history` (sync tests) or :func:`load_history` (async tests).
    Every ``assert_*`` method raises :class:`AssertionError` with the saga's recorded
    timeline in the message.
    """

    record: SagaRecord

    @property
    def saga_id(self) -> str:
        """The saga's id."""
        return self.record.saga_id

    @property
    def status(self) -> SagaStatus:
        """The saga's recorded status."""
        return self.record.status

    @property
    def entries(self) -> list[HistoryEntry]:
        """Every recorded transition, oldest first."""
        return list(self.record.history)

    @property
    def kinds(self) -> list[TransitionKind]:
        """The kind of every recorded transition, oldest first."""
        return [e.kind for e in self.record.history]

    def _steps(self, kind: TransitionKind) -> list[str]:
        seen: list[str] = []
        for entry in self.record.history:
            if entry.kind is kind and entry.step is not None and entry.step not in seen:
                seen.append(entry.step)
        return seen

    @property
    def completed_steps(self) -> list[str]:
        """Steps whose action completed, in the order they completed."""
        return self._steps(TransitionKind.STEP_COMPLETED)

    @property
    def compensated_steps(self) -> list[str]:
        """Steps whose compensation completed, in the order they were compensated."""
        return self._steps(TransitionKind.COMPENSATION_COMPLETED)

    @property
    def failed_steps(self) -> list[str]:
        """Steps with at least one failed attempt, in the order they first failed."""
        return self._steps(TransitionKind.STEP_FAILED)

    def attempts(self, step: str) -> int:
        """How many times ``step``'s action was started (retries and recoveries count)."""
        return sum(
            1
            for e in self.record.history
            if e.kind is TransitionKind.STEP_STARTED and e.step == step
        )

    def timeline(self) -> str:
        """The history as text, one transition a line (used in failure messages)."""
        lines = [f"saga {self.record.saga_name} {self.saga_id}: {self.status.value}"]
        for entry in self.record.history:
            line = f"  {entry.seq:>3} {entry.kind.value}"
            if entry.step is not None:
                line += f" {entry.step}"
            if entry.attempt:
                line += f" (attempt {entry.attempt})"
            if entry.error:
                line += f": {entry.error}"
            lines.append(line)
        return "\n".join(lines)

    def _fail(self, message: str) -> AssertionError:
        return AssertionError(f"{message}\n{self.timeline()}")

    def assert_status(self, status: SagaStatus | str) -> None:
        """Assert the saga's recorded status (``SagaStatus`` or its name)."""
        expected = _status(status)
        if self.status is not expected:
            raise self._fail(f"expected status {expected.value}, recorded {self.status.value}")

    def assert_steps_completed(self, steps: Sequence[str], *, ordered: bool = False) -> None:
        """Assert exactly ``steps`` completed; ``ordered=True`` also checks their order."""
        _check_steps("completed", self.completed_steps, steps, ordered, self._fail)

    def assert_compensated_in_order(self, steps: Sequence[str]) -> None:
        """Assert exactly ``steps`` were compensated, in this order."""
        _check_steps("compensated", self.compensated_steps, steps, True, self._fail)

    def assert_not_run(self, *steps: str) -> None:
        """Assert none of ``steps`` was ever started."""
        started = set(self._steps(TransitionKind.STEP_STARTED))
        ran = [s for s in steps if s in started]
        if ran:
            raise self._fail(f"expected these steps never to start, but they did: {ran}")

    def assert_attempts(self, step: str, attempts: int) -> None:
        """Assert ``step``'s action was started ``attempts`` times."""
        actual = self.attempts(step)
        if actual != attempts:
            raise self._fail(f"expected step {step!r} to run {attempts} time(s), ran {actual}")


def _status(status: SagaStatus | str) -> SagaStatus:
    try:
        return SagaStatus(str(status).upper())
    except ValueError:
        raise ValueError(
            f"unknown saga status {status!r}; use one of {', '.join(s.value for s in SagaStatus)}"
        ) from None


def _check_steps(
    what: str,
    actual: Sequence[str],
    expected: Sequence[str],
    ordered: bool,
    fail: Callable[[str], AssertionError],
) -> None:
    if isinstance(expected, str):
        raise TypeError(f"pass a list of step names, not the string {expected!r}")
    actual, expected = list(actual), list(expected)
    same = actual == expected if ordered else sorted(actual) == sorted(expected)
    if same:
        return
    message = f"expected {what} steps {expected}, got {actual}"
    missing = [s for s in expected if s not in actual]
    extra = [s for s in actual if s not in expected]
    if missing:
        message += f"; missing {missing}"
    if extra:
        message += f"; unexpected {extra}"
    if not missing and not extra:
        message += " (same steps, different order)"
    raise fail(message)


async def load_history(saga: SagaResult | str, *, config: SagaConfig | None = None) -> SagaHistory:
    """The recorded :class:`SagaHistory` of a saga (a result or a saga id), for async tests.

    Reads ``config``'s storage, by default the process-wide config's.
    """
    storage = (config or get_config()).storage
    saga_id = saga.saga_id if isinstance(saga, SagaResult) else saga
    await storage.ensure_open()
    record = await storage.load(saga_id)
    if record is None:
        raise SagaNotFoundError(
            f"no saga {saga_id!r} in {type(storage).__name__}; load the history from the "
            "config the saga ran with (history(result, config=...))"
        )
    return SagaHistory(record)


def history(saga: SagaResult | str, *, config: SagaConfig | None = None) -> SagaHistory:
    """The recorded :class:`SagaHistory` of a saga (a result or a saga id), for sync tests."""
    return _call(
        "history()", "`await load_history(result)`", lambda: load_history(saga, config=config)
    )


def _view(target: SagaResult | SagaHistory) -> SagaHistory | _ResultView:
    if isinstance(target, SagaHistory):
        return target
    if isinstance(target, SagaResult):
        return _ResultView(target)
    raise TypeError(f"expected a SagaResult or a SagaHistory, got {type(target).__name__}")


@dataclass(frozen=True, slots=True)
class _ResultView:
    """The assertions of :class:`SagaHistory`, on a :class:`SagaResult` (no storage read)."""

    result: SagaResult

    def _fail(self, message: str) -> AssertionError:
        r = self.result
        return AssertionError(
            f"{message}\nsaga {r.saga_name} {r.saga_id}: {r.status.value}, completed "
            f"{r.completed_steps}, compensated {r.compensated_steps}, failed step "
            f"{r.failed_step!r}, error {r.error!r}"
        )

    def assert_status(self, status: SagaStatus | str) -> None:
        expected = _status(status)
        if self.result.status is not expected:
            raise self._fail(f"expected status {expected.value}, got {self.result.status.value}")

    def assert_steps_completed(self, steps: Sequence[str], *, ordered: bool = False) -> None:
        _check_steps("completed", self.result.completed_steps, steps, ordered, self._fail)

    def assert_compensated_in_order(self, steps: Sequence[str]) -> None:
        _check_steps("compensated", self.result.compensated_steps, steps, True, self._fail)


def assert_saga_status(target: SagaResult | SagaHistory, status: SagaStatus | str) -> None:
    """Assert a saga result's (or recorded history's) status, e.g. ``"COMPLETED"``."""
    _view(target).assert_status(status)


def assert_steps_completed(
    target: SagaResult | SagaHistory, steps: Sequence[str], *, ordered: bool = False
) -> None:
    """Assert exactly ``steps`` completed (in any order unless ``ordered=True``).

    Steps compensated since count as completed: they ran.
    """
    _view(target).assert_steps_completed(steps, ordered=ordered)


def assert_compensated_in_order(target: SagaResult | SagaHistory, steps: Sequence[str]) -> None:
    """Assert exactly ``steps`` were compensated, in this order (reverse of completion)."""
    _view(target).assert_compensated_in_order(steps)
