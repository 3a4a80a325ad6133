"""The execution engine: runs one saga over its DAG, records every transition, compensates.

The engine is internal; users reach it through :meth:`sagaz.core.Saga.run` and
:meth:`sagaz.core.Saga.resume`. Writes are batched without weakening durability:
"step N completed" is written together with "step N+1 started", before step N+1 runs.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sagaz.core.config import FailurePolicy, SagaConfig
from sagaz.core.context import SagaContextManager
from sagaz.core.definition import SagaDefinition, StepDefinition, StepFunction
from sagaz.core.errors import (
    ContextNotSerializableError,
    SagaCancelledError,
    SagaDefinitionError,
    SagaTimeoutError,
    StepTimeoutError,
)
from sagaz.core.listeners import SagaListenerEvent, notify_listeners
from sagaz.core.records import NewSaga, OutboxEvent, SagaRecord, Transition, TransitionKind
from sagaz.core.result import SagaResult
from sagaz.core.status import SagaStatus, StepStatus

__all__ = [
    "SagaExecution",
    "StepInfo",
    "check_json",
    "current_step",
    "describe_error",
    "emit_event",
]

logger = logging.getLogger("sagaz.engine")

_K = TransitionKind


@dataclass(frozen=True, slots=True)
class StepInfo:
    """Which step is running: read it with :func:`current_step` inside a step.

    ``step_key`` is stable across attempts and recoveries (``"<saga_id>:<step>"``):
    pass it to the services a step calls as their idempotency key, since steps run
    at least once.
    """

    saga_id: str
    saga_name: str
    step: str
    attempt: int
    correlation_id: str | None
    compensating: bool = False
    #: Events emitted by the step (None when the outbox is off).
    emitted: list[tuple[str, dict[str, Any]]] | None = None

    @property
    def step_key(self) -> str:
        """The step's idempotency key, stable across retries and recoveries."""
        return f"{self.saga_id}:{self.step}"


_current_step: ContextVar[StepInfo | None] = ContextVar("sagaz_current_step", default=None)


def current_step() -> StepInfo:
    """The step (or compensation) running in the current task or worker thread."""
    info = _current_step.get()
    if info is None:
        raise RuntimeError("current_step() is only available inside a running saga step")
    return info


def emit_event(event_type: str, payload: Mapping[str, Any] | None = None) -> None:
    """Emit an event from inside a step; it is written to the outbox with the step's
    completion (in the same transaction) and dropped if the step fails.

    Needs ``SagaConfig(outbox=True)``; the payload must be JSON-serialisable.
    """
    info = current_step()
    if info.emitted is None:
        raise RuntimeError(
            "emit_event() needs the transactional outbox: configure SagaConfig(outbox=True) "
            "(or SAGAZ_OUTBOX=1) and run a relay to publish the events"
        )
    if not isinstance(event_type, str) or not event_type:
        raise ValueError(f"emit_event needs a non-empty event type, got {event_type!r}")
    body = dict(payload or {})
    check_json(body, f"payload of event {event_type!r}")
    info.emitted.append((event_type, body))


def describe_error(exc: BaseException) -> str:
    """``"ExceptionType: message"`` (how errors are recorded)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_json(values: Mapping[str, Any], where: str) -> None:
    """Raise :class:`ContextNotSerializableError` naming the first key that is not JSON."""
    for key, value in values.items():
        if not isinstance(key, str):
            raise ContextNotSerializableError(repr(key), key, f"{where}: keys must be strings")
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise ContextNotSerializableError(key, value, where) from None


async def _in_thread(func: StepFunction, ctx: dict[str, Any]) -> Any:
    """Run a plain-function step in a worker thread.

    While the interpreter exits no thread can start: that interrupts the saga (it
    stays recorded for recovery) instead of failing the step and compensating it.
    """
    started = False

    def call() -> Any:
        nonlocal started
        started = True
        return func(ctx)

    try:
        return await asyncio.to_thread(call)
    except RuntimeError as exc:
        if not started:  # no thread could run it: the process is exiting
            raise asyncio.CancelledError(f"interpreter shutting down: {exc}") from exc
        raise


@dataclass(slots=True)
class _Failure:
    step: str | None
    error: str
    exception: BaseException | None = None


class _DuplicateSagaError(Exception):
    def __init__(self, saga_id: str) -> None:
        self.saga_id = saga_id


_DONE = frozenset({StepStatus.COMPLETED})
#: Steps whose action completed (whatever became of their compensation since).
_RAN = frozenset(
    {
        StepStatus.COMPLETED,
        StepStatus.COMPENSATING,
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATION_FAILED,
    }
)


class SagaExecution:
    """One run (or recovery) of a saga: the scheduler, the recorder and the compensator."""

    def __init__(
        self,
        definition: SagaDefinition,
        config: SagaConfig,
        *,
        context: Mapping[str, Any] | None = None,
        saga_id: str | None = None,
        correlation_id: str | None = None,
        idempotency_key: str | None = None,
        record: SagaRecord | None = None,
        retried: bool = False,
    ) -> None:
        if not definition.steps:
            raise SagaDefinitionError(
                f"saga {definition.name!r} has no steps; add steps before running it"
            )
        self.definition = definition
        self.config = config
        self.storage = config.storage
        self.listeners = config.listeners
        self.timings: dict[str, float] = {}
        self._buffer: list[Transition] = []
        self._events: list[OutboxEvent] = []
        self._outbox = config.outbox
        self._cancel_requested = False
        self._context_dirty = False
        self._cancelled: list[str] = []
        self._final_error: str | None = None
        self._new: NewSaga | None = None
        self._resume_compensation: _Failure | None = None
        self.compensated: list[str] = []
        if record is None:
            ctx = {} if context is None else context
            if not isinstance(ctx, Mapping):
                raise TypeError(
                    f"a saga context must be a dict, got {type(ctx).__name__}; "
                    "pass e.g. {'order_id': 42}"
                )
            self.context: dict[str, Any] = dict(ctx)
            if self.storage.durable:
                check_json(self.context, "initial context")
            self.saga_id = saga_id or str(uuid.uuid4())
            self.correlation_id = correlation_id
            self.completed: list[str] = []
            self._new = NewSaga(
                self.saga_id,
                definition.name,
                self.context,
                SagaStatus.RUNNING,
                correlation_id,
                idempotency_key,
            )
            self.trace_context = self._new.trace_context
            self._buffer.append(Transition(_K.SAGA_STARTED))
            self._emit("saga.started")
        else:
            self._init_from_record(record, retried)

    def _emit(self, event_type: str, **payload: Any) -> None:
        if self._outbox:
            body = {"saga_id": self.saga_id, "saga_name": self.definition.name, **payload}
            self._events.append(
                OutboxEvent(str(uuid.uuid4()), self.saga_id, event_type, body, self.correlation_id)
            )

    def _init_from_record(self, record: SagaRecord, retried: bool) -> None:
        self.saga_id = record.saga_id
        self.correlation_id = record.correlation_id
        self.trace_context = record.trace_context
        self.context = dict(record.context)
        self._cancel_requested = record.cancel_requested
        steps = record.steps
        known = self.definition.steps
        by_start = sorted(steps.values(), key=lambda s: s.started_at or 0.0)
        if record.status is SagaStatus.PENDING:
            self.completed = []
            self._buffer.append(Transition(_K.SAGA_STARTED))
            self._emit("saga.started")
            return
        if not retried:
            self._buffer.append(Transition(_K.SAGA_RESUMED))
        if record.status is SagaStatus.RUNNING:
            self.completed = [s.name for s in by_start if s.status in _DONE and s.name in known]
            return
        # COMPENSATING: undo what is still done; keep what was compensated already.
        self.completed = [s.name for s in by_start if s.status in _RAN and s.name in known]
        self.compensated = [
            s.name
            for s in sorted(steps.values(), key=lambda s: s.finished_at or 0.0)
            if s.status is StepStatus.COMPENSATED
        ]
        self._resume_compensation = _Failure(record.failed_step, record.error or "unknown error")

    # -- recording ---------------------------------------------------------------

    async def _flush(self) -> None:
        transitions = self._buffer
        if not transitions:
            return
        self._buffer = []
        events = self._events
        if events:
            self._events = []
        new = self._new
        if new is not None:
            self._new = None
            saga_id, created = await self.storage.create_saga(new, transitions, events)
            if not created:
                raise _DuplicateSagaError(saga_id)
            if self.listeners:
                await self._notify("on_saga_started")
            return
        context = None
        if self._context_dirty:
            self._context_dirty = False
            context = dict(self.context)
        if await self.storage.record(self.saga_id, transitions, context, events):
            self._cancel_requested = True

    async def _notify(
        self,
        method: str,
        step: str | None = None,
        attempt: int = 0,
        error: BaseException | None = None,
        duration: float | None = None,
        status: SagaStatus | None = None,
    ) -> None:
        event = SagaListenerEvent(
            self.saga_id,
            self.definition.name,
            self.correlation_id,
            step,
            attempt,
            status,
            error,
            duration,
            self.trace_context,
        )
        await notify_listeners(self.listeners, method, event)

    # -- the run -----------------------------------------------------------------

    async def run(self) -> SagaResult:
        """Execute (or continue) the saga to a terminal state and return its result."""
        started = time.perf_counter()
        storage = self.storage
        await storage.ensure_open()
        active = storage.running_here
        active.add(self.saga_id)
        try:
            cid = self.correlation_id
            if cid is None or SagaContextManager.get("correlation_id") == cid:
                return await self._run_holding_leases(started)
            # A resumed saga (worker, recovery) keeps the id of the request that started it.
            with SagaContextManager.scope(
                **{**SagaContextManager.snapshot(), "correlation_id": cid}
            ):
                return await self._run_holding_leases(started)
        except BaseException:
            # Not finished here (storage outage, cancellation): let the lease go rather
            # than keep renewing it, so that a worker resumes the saga.
            if storage.durable:
                storage.release_lease_later(self.saga_id)
            raise
        finally:
            active.discard(self.saga_id)

    async def _run_holding_leases(self, started: float) -> SagaResult:
        if not self.storage.durable:
            return await self._run(started)
        async with self.storage.holding_leases():
            return await self._run(started)

    async def _run(self, started: float) -> SagaResult:
        try:
            if self._resume_compensation is not None:
                if self.listeners:
                    await self._notify("on_saga_started")
                status = await self._compensate(self._resume_compensation, resumed=True)
                return self._result(status, self._resume_compensation, started)
            if self._new is None and self.listeners:
                await self._notify("on_saga_started")
            failure = await self._forward_with_timeout()
        except _DuplicateSagaError as dup:
            record = await self.storage.load(dup.saga_id)
            if record is None:  # pragma: no cover - evicted between two calls
                raise
            return SagaResult.from_record(record, created=False)
        if failure is None:
            self._buffer.append(Transition(_K.SAGA_COMPLETED))
            self._emit("saga.completed", status=SagaStatus.COMPLETED.value)
            await self._flush()
            if self.listeners:
                await self._notify("on_saga_completed", status=SagaStatus.COMPLETED)
            return self._result(SagaStatus.COMPLETED, None, started)
        status = await self._compensate(failure)
        return self._result(status, failure, started)

    def _result(self, status: SagaStatus, failure: _Failure | None, started: float) -> SagaResult:
        self.timings["total"] = time.perf_counter() - started
        return SagaResult(
            saga_id=self.saga_id,
            saga_name=self.definition.name,
            status=status,
            context=self.context,
            completed_steps=self.completed,
            compensated_steps=self.compensated,
            failed_step=None if failure is None else failure.step,
            error=None if failure is None else self._final_error,
            exception=None if failure is None else failure.exception,
            timings=self.timings,
            correlation_id=self.correlation_id,
        )

    async def _forward_with_timeout(self) -> _Failure | None:
        limit = self.config.saga_timeout
        if limit is None:
            return await self._forward()
        try:
            async with asyncio.timeout(limit) as scope:
                return await self._forward()
        except TimeoutError:
            if not scope.expired():
                raise
            await self._flush()
            exc = SagaTimeoutError(
                f"saga {self.definition.name!r} timed out after {limit}s; "
                "raise saga_timeout or make its steps faster"
            )
            step = self._timed_out_step
            return _Failure(step, describe_error(exc), exc)

    async def _forward(self) -> _Failure | None:
        definition = self.definition
        done = set(self.completed)
        if definition.is_linear:
            for name in definition.order:
                if name not in done:
                    failure = await self._run_step(definition.steps[name])
                    if failure is not None:
                        return failure
            return None
        return await self._forward_dag(done)

    async def _forward_dag(self, done: set[str]) -> _Failure | None:
        steps = self.definition.steps
        waiting = {
            name: sum(dep not in done for dep in step.depends_on)
            for name, step in steps.items()
            if name not in done
        }
        ready = deque(name for name in self.definition.order if waiting.get(name) == 0)
        running: dict[asyncio.Task[_Failure | None], str] = {}
        failure: _Failure | None = None
        fail_fast = self.config.failure_policy is FailurePolicy.FAIL_FAST
        limit = self.config.max_parallel

        def release(name: str) -> None:
            for nxt in self.definition.dependents[name]:
                waiting[nxt] -= 1
                if waiting[nxt] == 0:
                    ready.append(nxt)

        try:
            while True:
                while ready and failure is None and len(running) < limit:
                    name = ready.popleft()
                    if not running and not ready:
                        # Nothing else can run now: no task needed.
                        failure = await self._run_step(steps[name])
                        if failure is None:
                            release(name)
                        continue
                    if self._new is not None:
                        # The saga row (and its idempotency check) must exist before
                        # concurrent steps record anything.
                        await self._flush()
                    running[asyncio.create_task(self._run_step(steps[name]))] = name
                if not running:
                    return failure
                await self._flush()
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    name = running.pop(task)
                    outcome = task.result()
                    if outcome is None:
                        if failure is None:
                            release(name)
                    elif failure is None:
                        failure = outcome
                        if fail_fast:
                            await self._cancel(running)
        finally:
            if running:
                await self._cancel(running)

    async def _cancel(self, running: dict[asyncio.Task[_Failure | None], str]) -> None:
        """Stop running siblings: async steps are cancelled; plain-function steps run in
        a thread that cannot be stopped, so they are waited for (and compensated later
        if they completed)."""
        tasks = list(running)
        steps = self.definition.steps
        for task in tasks:
            if steps[running[task]].action_is_async:
                task.cancel()
        running.clear()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._flush()

    @property
    def _timed_out_step(self) -> str | None:
        return self._cancelled[0] if self._cancelled else None

    # -- steps -------------------------------------------------------------------

    async def _call(
        self,
        func: StepFunction,
        is_async: bool,
        limit: float | None,
        info: StepInfo,
    ) -> Any:
        ctx = dict(self.context)
        token = _current_step.set(info)
        try:
            if limit is None:
                if is_async:
                    return await func(ctx)
                result = await _in_thread(func, ctx)
            else:
                try:
                    async with asyncio.timeout(limit) as scope:
                        if is_async:
                            result = await func(ctx)
                        else:
                            result = await _in_thread(func, ctx)
                except TimeoutError:
                    if not scope.expired():
                        raise
                    what = "compensation of step" if info.compensating else "step"
                    raise StepTimeoutError(
                        f"{what} {info.step!r} timed out after {limit}s "
                        f"(attempt {info.attempt}); raise its timeout or make it faster"
                    ) from None
            if inspect.isawaitable(result):
                result = await result
            return result
        finally:
            _current_step.reset(token)

    def _merge(self, step: str, result: Any, what: str) -> BaseException | None:
        """Merge a step's returned dict into the context; an error if it cannot be."""
        if result is None:
            return None
        if type(result) is not dict and not isinstance(result, Mapping):
            return TypeError(
                f"{what} {step!r} returned a {type(result).__name__}; "
                "return a dict (merged into the saga context) or None"
            )
        if result:
            if self.storage.durable:
                try:
                    check_json(result, f"returned by {what} {step!r}")
                except ContextNotSerializableError as exc:
                    return exc
            self.context.update(result)
            self._context_dirty = True
        return None

    async def _run_step(self, step: StepDefinition) -> _Failure | None:
        config = self.config
        policy = step.retry or config.retry
        timeout = step.timeout if step.timeout is not None else config.step_timeout
        name = step.name
        listeners = self.listeners
        attempt = 0
        while True:
            if self._cancel_requested:
                return self._cancelled_failure(name)
            attempt += 1
            self._buffer.append(Transition(_K.STEP_STARTED, name, attempt))
            await self._flush()
            if self._cancel_pending():
                self._buffer.append(
                    Transition(_K.STEP_CANCELLED, name, attempt, error="cancelled by operator")
                )
                return self._cancelled_failure(name)
            if listeners:
                await self._notify("on_step_started", name, attempt)
            began = time.perf_counter()
            info = StepInfo(
                self.saga_id,
                self.definition.name,
                name,
                attempt,
                self.correlation_id,
                False,
                [] if self._outbox else None,
            )
            error: BaseException | None
            try:
                result = await self._call(step.action, step.action_is_async, timeout, info)
            except asyncio.CancelledError:
                self._cancelled.append(name)
                self._buffer.append(Transition(_K.STEP_CANCELLED, name, attempt, error="cancelled"))
                raise
            except Exception as exc:
                error = exc
                retry = policy.should_retry(attempt, exc)
            else:
                error = self._merge(name, result, "step")
                retry = False
            elapsed = time.perf_counter() - began
            if error is None:
                self.timings[name] = elapsed
                self.completed.append(name)
                step_result = dict(result or {})
                self._buffer.append(
                    Transition(_K.STEP_COMPLETED, name, attempt, result=step_result)
                )
                if info.emitted is not None:
                    self._emit("saga.step_completed", step=name, result=step_result)
                    for event_type, body in info.emitted:
                        self._events.append(
                            OutboxEvent(
                                str(uuid.uuid4()),
                                self.saga_id,
                                event_type,
                                body,
                                self.correlation_id,
                            )
                        )
                if listeners:
                    await self._notify("on_step_completed", name, attempt, duration=elapsed)
                return None
            text = describe_error(error)
            self._buffer.append(Transition(_K.STEP_FAILED, name, attempt, error=text))
            if listeners:
                await self._notify("on_step_failed", name, attempt, error, elapsed)
            if not retry:
                return _Failure(name, text, error)
            try:
                await asyncio.sleep(policy.delay(attempt))
            except asyncio.CancelledError:
                self._cancelled.append(name)  # the saga timed out while this step waited
                raise

    def _cancel_pending(self) -> bool:
        """Whether the last write reported an operator's cancel request."""
        return self._cancel_requested

    def _cancelled_failure(self, step: str) -> _Failure:
        exc = SagaCancelledError(
            f"saga {self.definition.name!r} ({self.saga_id}) was cancelled by an operator"
        )
        return _Failure(step, describe_error(exc), exc)

    # -- compensation --------------------------------------------------------------

    async def _compensate(self, failure: _Failure, *, resumed: bool = False) -> SagaStatus:
        if not resumed:
            self._buffer.append(Transition(_K.SAGA_COMPENSATING, failure.step, error=failure.error))
            if self.listeners:
                await self._notify(
                    "on_saga_compensating",
                    failure.step,
                    error=failure.exception,
                    status=SagaStatus.COMPENSATING,
                )
        errors: list[str] = []
        steps = self.definition.steps
        undone = set(self.compensated)
        for name in self.definition.reverse_order(self.completed):
            step = steps[name]
            if step.compensation is None or name in undone:
                continue
            problem = await self._run_compensation(step)
            if problem is not None:
                errors.append(f"compensation of step {name!r} failed: {problem}")
        self._final_error = failure.error
        if errors:
            text = "; ".join(errors)
            self._final_error = f"{failure.error}; {text}"
            self._buffer.append(Transition(_K.SAGA_FAILED, failure.step, error=text))
            self._emit("saga.failed", status=SagaStatus.FAILED.value, error=self._final_error)
            await self._flush()
            logger.error(
                "saga %s (%s) FAILED: %s; it needs intervention (sagaz retry %s)",
                self.definition.name,
                self.saga_id,
                self._final_error,
                self.saga_id,
            )
            if self.listeners:
                await self._notify("on_saga_failed", failure.step, status=SagaStatus.FAILED)
            return SagaStatus.FAILED
        self._buffer.append(Transition(_K.SAGA_COMPENSATED, failure.step))
        self._emit("saga.compensated", status=SagaStatus.COMPENSATED.value, error=failure.error)
        await self._flush()
        if self.listeners:
            await self._notify("on_saga_compensated", status=SagaStatus.COMPENSATED)
        return SagaStatus.COMPENSATED

    async def _run_compensation(self, step: StepDefinition) -> str | None:
        """Run a step's compensation with its retries; the error text if it failed for good."""
        assert step.compensation is not None
        config = self.config
        policy = step.compensation_retry or config.compensation_retry
        timeout = (
            step.compensation_timeout
            if step.compensation_timeout is not None
            else config.step_timeout
        )
        name = step.name
        attempt = 0
        while True:
            attempt += 1
            self._buffer.append(Transition(_K.COMPENSATION_STARTED, name, attempt))
            await self._flush()
            if self.listeners:
                await self._notify("on_compensation_started", name, attempt)
            began = time.perf_counter()
            info = StepInfo(
                self.saga_id, self.definition.name, name, attempt, self.correlation_id, True
            )
            error: BaseException | None
            try:
                result = await self._call(
                    step.compensation, step.compensation_is_async, timeout, info
                )
            except Exception as exc:
                error = exc
                retry = policy.should_retry(attempt, exc)
            else:
                error = self._merge(name, result, "compensation of step")
                retry = False
            elapsed = time.perf_counter() - began
            if error is None:
                self.compensated.append(name)
                self.timings[f"compensate:{name}"] = elapsed
                self._buffer.append(Transition(_K.COMPENSATION_COMPLETED, name, attempt))
                if self.listeners:
                    await self._notify("on_compensation_completed", name, attempt, duration=elapsed)
                return None
            text = describe_error(error)
            self._buffer.append(Transition(_K.COMPENSATION_FAILED, name, attempt, error=text))
            if self.listeners:
                await self._notify("on_compensation_failed", name, attempt, error, elapsed)
            if not retry:
                return text
            await asyncio.sleep(policy.delay(attempt))
