"""The :class:`Saga` class, and the ``@action`` / ``@compensate`` decorators.

Two ways to define a saga, never mixed in one class::

    class OrderSaga(Saga):                     # declarative
        @action("reserve")
        async def reserve(self, ctx): return {"reservation": 1}

        @compensate("reserve")
        async def release(self, ctx): ...

    saga = Saga(name="order").add_step("reserve", reserve, compensation=release)  # imperative

A step's ``depends_on`` defaults to the step defined just before it (sequential);
pass ``depends_on=[]`` for a step with no dependencies, or the names it waits for.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

from sagaz.core.config import SagaConfig, get_config
from sagaz.core.definition import SagaDefinition, StepDefinition, StepFunction
from sagaz.core.engine import SagaExecution
from sagaz.core.errors import SagaDefinitionError, SagaNotFoundError
from sagaz.core.registry import TriggerBinding, registry
from sagaz.core.retry import RetryPolicy

if TYPE_CHECKING:
    from sagaz.core.records import SagaRecord
    from sagaz.core.result import SagaResult

__all__ = ["Saga", "action", "compensate"]

_F = TypeVar("_F", bound=Callable[..., Any])

_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class _ActionSpec:
    name: str
    depends_on: tuple[str, ...] | None
    retry: RetryPolicy | None
    timeout: float | None


@dataclass(frozen=True, slots=True)
class _CompensationSpec:
    step: str
    retry: RetryPolicy | None
    timeout: float | None


def action(
    name: str | None = None,
    *,
    depends_on: Iterable[str] | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
) -> Callable[[_F], _F]:
    """Mark a method of a :class:`Saga` subclass as a step (named after it by default).

    ``depends_on=None`` means "after the step defined before this one"; ``[]`` means no
    dependencies. ``retry`` and ``timeout`` (seconds) override the config's defaults.
    """
    if callable(name):
        raise SagaDefinitionError(
            "use @action(...) with parentheses, e.g. @action('reserve') or @action()"
        )
    if isinstance(depends_on, str):
        raise SagaDefinitionError(
            f"depends_on must be a list of step names, not the string {depends_on!r} "
            f"(write depends_on=[{depends_on!r}])"
        )
    deps = None if depends_on is None else tuple(depends_on)

    def mark(func: _F) -> _F:
        func.__sagaz_action__ = _ActionSpec(name or func.__name__, deps, retry, timeout)  # type: ignore[attr-defined]
        return func

    return mark


def compensate(
    step: str, *, retry: RetryPolicy | None = None, timeout: float | None = None
) -> Callable[[_F], _F]:
    """Mark a method of a :class:`Saga` subclass as the compensation of ``step``."""
    if callable(step):
        raise SagaDefinitionError(
            "@compensate needs the name of the step it undoes, e.g. @compensate('reserve')"
        )

    def mark(func: _F) -> _F:
        func.__sagaz_compensation__ = _CompensationSpec(step, retry, timeout)  # type: ignore[attr-defined]
        return func

    return mark


@dataclass(frozen=True, slots=True)
class _DeclaredStep:
    action: _ActionSpec
    method: str
    compensation: _CompensationSpec | None
    compensation_method: str | None


class Saga:
    """A saga definition and the way to run it.

    Subclass it with ``@action`` / ``@compensate`` methods (declarative; the saga's
    name is the class attribute ``saga_name`` or the class name), or create
    ``Saga(name=...)`` and call :meth:`add_step` (imperative). ``config`` overrides the
    process-wide :func:`~sagaz.core.get_config` for this saga.
    """

    #: The declarative saga's name (default: the class name).
    saga_name: ClassVar[str | None] = None
    #: Declarative sagas: their steps, checked when the class is created.
    _declared: ClassVar[tuple[_DeclaredStep, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._declared = _collect_steps(cls)
        if cls._declared:
            name = cls.saga_name_of()
            # Build once with the plain functions: every definition error surfaces now.
            SagaDefinition(name, _steps_of(cls, cls._declared))
            registry.register_class(name, cls)
        for attr, value in _members(cls):
            spec = getattr(value, "__sagaz_trigger__", None)
            if spec is not None:
                if not cls._declared:
                    raise SagaDefinitionError(
                        f"{cls.__qualname__}.{attr} is a @trigger but {cls.__qualname__} has "
                        "no @action steps; triggers belong on declarative saga classes"
                    )
                registry.register_trigger(
                    TriggerBinding(spec.source, cls, attr, spec.idempotency_key, value)
                )

    @classmethod
    def saga_name_of(cls) -> str:
        """The name a declarative saga class is registered and recorded under."""
        return cls.__dict__.get("saga_name") or cls.__name__

    def __init__(self, name: str | None = None, *, config: SagaConfig | None = None) -> None:
        cls = type(self)
        self._config = config
        if cls._declared:
            if name is not None and name != cls.saga_name_of():
                raise SagaDefinitionError(
                    f"{cls.__qualname__} is declarative: its name is {cls.saga_name_of()!r} "
                    "(set the class attribute saga_name to change it), not a constructor argument"
                )
            self._definition = SagaDefinition(cls.saga_name_of(), _steps_of(self, cls._declared))
            return
        if not name or not isinstance(name, str):
            raise SagaDefinitionError(
                "an imperative saga needs a name: Saga(name='order'); or subclass Saga "
                "and declare @action methods"
            )
        self._definition = SagaDefinition(name, [])
        registry.register_instance(self)

    # -- definition --------------------------------------------------------------

    @property
    def name(self) -> str:
        """The saga's name, as recorded in storage."""
        return self._definition.name

    @property
    def definition(self) -> SagaDefinition:
        """The validated step DAG."""
        return self._definition

    @property
    def own_config(self) -> SagaConfig | None:
        """The config given to this saga itself (None: it uses the process-wide one)."""
        return self._config

    @property
    def config(self) -> SagaConfig:
        """This saga's config, or the process-wide one."""
        return self._config if self._config is not None else get_config()

    def with_config(self, config: SagaConfig) -> Self:
        """A copy of this saga that uses ``config``."""
        clone = copy.copy(self)
        clone._config = config
        return clone

    def add_step(
        self,
        name: str,
        action: StepFunction,
        compensation: StepFunction | None = None,
        *,
        depends_on: Iterable[str] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        compensation_retry: RetryPolicy | None = None,
        compensation_timeout: float | None = None,
    ) -> Self:
        """Add a step to an imperative saga; returns the saga for chaining.

        ``depends_on=None`` means "after the last added step"; dependencies must be
        added first, so a cycle cannot be built.
        """
        if type(self)._declared:
            raise SagaDefinitionError(
                f"{type(self).__qualname__} is declarative (it has @action methods); "
                "add_step is for sagas built with Saga(name=...). Do not mix the two styles."
            )
        if name in self._definition.steps:
            raise SagaDefinitionError(f"saga {self.name!r} defines step {name!r} twice")
        if depends_on is None:
            order = self._definition.order
            depends_on = order[-1:] if order else ()
        step = StepDefinition.create(
            name,
            action,
            compensation=compensation,
            depends_on=depends_on,
            retry=retry,
            timeout=timeout,
            compensation_retry=compensation_retry,
            compensation_timeout=compensation_timeout,
        )
        self._definition = self._definition.with_step(step)
        return self

    # -- running -----------------------------------------------------------------

    async def run(
        self,
        context: Mapping[str, Any] | None = None,
        *,
        saga_id: str | None = None,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
    ) -> SagaResult:
        """Run the saga to a terminal state and return its :class:`SagaResult`.

        A business failure (a step that fails for good) is a result with status
        COMPENSATED or FAILED, not an exception. With an ``idempotency_key`` already
        recorded for this saga, nothing runs: the existing saga's result is returned
        (``result.created`` is False). ``correlation_id`` defaults to the current
        :class:`~sagaz.core.context.SagaContextManager` scope's.
        """
        from sagaz.core.context import current_correlation_id

        execution = SagaExecution(
            self._definition,
            self.config,
            context=context,
            saga_id=saga_id,
            correlation_id=correlation_id
            if correlation_id is not None
            else current_correlation_id(),
            idempotency_key=idempotency_key,
        )
        return await execution.run()

    async def resume(self, saga_id: str) -> SagaResult:
        """Continue a recorded saga: skip completed steps, re-run the in-flight one, go
        on compensating if it was compensating.

        The saga is leased to this process first; when another live process holds it,
        or it has finished, its recorded state is returned and nothing runs here. A
        saga already recovered ``config.max_recoveries`` times is parked as FAILED.
        """
        from sagaz.core.result import SagaResult

        storage = self.config.storage
        await storage.ensure_open()
        record = None if saga_id in storage.running_here else await storage.claim(saga_id)
        if record is None:
            current = await storage.load(saga_id)
            if current is None:
                raise SagaNotFoundError(f"no saga {saga_id!r} in {type(storage).__name__}")
            return SagaResult.from_record(current)
        return await self.run_claimed(record)

    async def run_claimed(self, record: SagaRecord) -> SagaResult:
        """Run a saga whose lease this process already holds (from ``claim`` or
        ``claim_runnable``) to a terminal state; workers call this."""
        from sagaz.core.records import Transition, TransitionKind
        from sagaz.core.result import SagaResult
        from sagaz.core.status import SagaStatus

        config = self.config
        storage = config.storage
        saga_id = record.saga_id
        if record.saga_name != self.name:
            await storage.release_leases([saga_id])
            raise SagaDefinitionError(
                f"saga {saga_id!r} is a {record.saga_name!r}, not a {self.name!r}; "
                "resume it with resume_saga() to find its definition by name"
            )
        if record.status is not SagaStatus.PENDING and record.recoveries >= config.max_recoveries:
            reason = (
                f"parked after {record.recoveries} recoveries (max_recoveries="
                f"{config.max_recoveries}): the saga keeps crashing its process; inspect it "
                f"with 'sagaz show {saga_id}', then 'sagaz retry {saga_id}'"
            )
            await storage.record(
                saga_id, [Transition(TransitionKind.SAGA_FAILED, record.failed_step, error=reason)]
            )
            parked = await storage.load(saga_id)
            assert parked is not None
            return SagaResult.from_record(parked)
        return await SagaExecution(self._definition, config, record=record).run()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} steps={list(self._definition.order)}>"


def _members(cls: type) -> list[tuple[str, Any]]:
    """Class attributes in definition order, base classes first, overrides in place."""
    seen: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            seen[attr] = value
    return list(seen.items())


def _collect_steps(cls: type[Saga]) -> tuple[_DeclaredStep, ...]:
    actions: list[tuple[str, _ActionSpec]] = []
    compensations: dict[str, tuple[str, _CompensationSpec]] = {}
    where = cls.__qualname__
    for attr, value in _members(cls):
        act = getattr(value, "__sagaz_action__", None)
        comp = getattr(value, "__sagaz_compensation__", None)
        if act is not None and comp is not None:
            raise SagaDefinitionError(
                f"{where}.{attr} is marked both @action and @compensate; use two methods"
            )
        if act is not None:
            actions.append((attr, act))
        elif comp is not None:
            if comp.step in compensations:
                raise SagaDefinitionError(
                    f"{where}: step {comp.step!r} has two compensations "
                    f"({compensations[comp.step][0]} and {attr}); keep one"
                )
            compensations[comp.step] = (attr, comp)
    names = [spec.name for _, spec in actions]
    for step, (attr, _) in compensations.items():
        if step not in names:
            raise SagaDefinitionError(
                f"{where}.{attr} compensates step {step!r}, which {where} does not define "
                f"(steps: {', '.join(names) or 'none'})"
            )
    declared = []
    for attr, spec in actions:
        comp_attr, comp_spec = compensations.get(spec.name, (None, None))
        declared.append(_DeclaredStep(spec, attr, comp_spec, comp_attr))
    return tuple(declared)


def _steps_of(owner: object, declared: tuple[_DeclaredStep, ...]) -> list[StepDefinition]:
    steps = []
    previous: str | None = None
    seen: set[str] = set()
    for item in declared:
        spec = item.action
        if spec.name in seen:
            label = owner.__name__ if isinstance(owner, type) else type(owner).__name__
            raise SagaDefinitionError(
                f"saga {label} defines step {spec.name!r} twice (again on method {item.method})"
            )
        seen.add(spec.name)
        if spec.depends_on is None:
            deps: tuple[str, ...] = (previous,) if previous is not None else ()
        else:
            deps = spec.depends_on
        comp = item.compensation
        steps.append(
            StepDefinition.create(
                spec.name,
                getattr(owner, item.method),
                compensation=None
                if item.compensation_method is None
                else getattr(owner, item.compensation_method),
                depends_on=deps,
                retry=spec.retry,
                timeout=spec.timeout,
                compensation_retry=None if comp is None else comp.retry,
                compensation_timeout=None if comp is None else comp.timeout,
            )
        )
        previous = spec.name
    return steps
