"""Saga definitions: steps, their dependencies (a DAG), and the checks made when defined."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sagaz.core.errors import SagaDefinitionError
from sagaz.core.retry import RetryPolicy

__all__ = ["SagaDefinition", "StepDefinition", "StepFunction"]

#: A step action or compensation: takes the saga context, returns a dict (or None),
#: plain or ``async def``.
StepFunction = Callable[[dict[str, Any]], Any]


def _is_async(func: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - async callable objects
    )


@dataclass(frozen=True, slots=True)
class StepDefinition:
    """One step: its action, optional compensation, dependencies, retry and timeouts."""

    name: str
    action: StepFunction
    compensation: StepFunction | None = None
    depends_on: tuple[str, ...] = ()
    retry: RetryPolicy | None = None
    timeout: float | None = None
    compensation_retry: RetryPolicy | None = None
    compensation_timeout: float | None = None
    action_is_async: bool = False
    compensation_is_async: bool = False

    @classmethod
    def create(
        cls,
        name: str,
        action: StepFunction,
        *,
        compensation: StepFunction | None = None,
        depends_on: Iterable[str] = (),
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        compensation_retry: RetryPolicy | None = None,
        compensation_timeout: float | None = None,
    ) -> StepDefinition:
        """Check the arguments and build the step (errors name the step)."""
        if not isinstance(name, str) or not name:
            raise SagaDefinitionError(f"a step name must be a non-empty string, got {name!r}")
        if not callable(action):
            raise SagaDefinitionError(f"step {name!r}: action must be callable, got {action!r}")
        if compensation is not None and not callable(compensation):
            raise SagaDefinitionError(
                f"step {name!r}: compensation must be callable, got {compensation!r}"
            )
        if isinstance(depends_on, str):
            raise SagaDefinitionError(
                f"step {name!r}: depends_on must be a list of step names, "
                f"not the string {depends_on!r} (write depends_on=[{depends_on!r}])"
            )
        deps = tuple(depends_on)
        if name in deps:
            raise SagaDefinitionError(f"step {name!r} depends on itself")
        if len(set(deps)) != len(deps):
            raise SagaDefinitionError(f"step {name!r} lists a dependency twice: {deps}")
        for label, value in (("timeout", timeout), ("compensation_timeout", compensation_timeout)):
            if value is not None and value <= 0:
                raise SagaDefinitionError(f"step {name!r}: {label} must be > 0, got {value}")
        for label, policy in (("retry", retry), ("compensation_retry", compensation_retry)):
            if policy is not None and not isinstance(policy, RetryPolicy):
                raise SagaDefinitionError(
                    f"step {name!r}: {label} must be a RetryPolicy, got {policy!r}"
                )
        return cls(
            name=name,
            action=action,
            compensation=compensation,
            depends_on=deps,
            retry=retry,
            timeout=timeout,
            compensation_retry=compensation_retry,
            compensation_timeout=compensation_timeout,
            action_is_async=_is_async(action),
            compensation_is_async=compensation is not None and _is_async(compensation),
        )


class SagaDefinition:
    """A validated DAG of steps.

    ``order`` is a topological order (definition order where dependencies allow);
    ``dependents`` maps each step to the steps waiting on it; ``is_linear`` is true when
    every step depends on exactly the one before it (the engine's fast path).
    """

    __slots__ = ("dependents", "is_linear", "name", "order", "roots", "steps")

    def __init__(self, name: str, steps: Iterable[StepDefinition]) -> None:
        self.name = name
        self.steps: dict[str, StepDefinition] = {}
        for step in steps:
            self._check_new_step(step)
            self.steps[step.name] = step
        self.order, self.dependents = _topological(name, self.steps)
        self.roots = tuple(n for n in self.order if not self.steps[n].depends_on)
        self.is_linear = all(
            self.steps[n].depends_on == ((self.order[i - 1],) if i else ())
            for i, n in enumerate(self.order)
        )

    def _check_new_step(self, step: StepDefinition) -> None:
        if step.name in self.steps:
            raise SagaDefinitionError(f"saga {self.name!r} defines step {step.name!r} twice")

    def with_step(self, step: StepDefinition) -> SagaDefinition:
        """A new definition with ``step`` added (its dependencies must already exist)."""
        self._check_new_step(step)
        for dep in step.depends_on:
            if dep not in self.steps:
                raise SagaDefinitionError(_unknown_dep(self.name, step.name, dep, self.steps))
        return SagaDefinition(self.name, [*self.steps.values(), step])

    def reverse_order(self, names: Iterable[str]) -> list[str]:
        """``names`` in reverse dependency order (dependents before their dependencies)."""
        wanted = set(names)
        return [n for n in reversed(self.order) if n in wanted]

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return f"SagaDefinition({self.name!r}, steps={list(self.order)})"


def _unknown_dep(saga: str, step: str, dep: str, known: Mapping[str, Any]) -> str:
    names = ", ".join(known) or "none yet"
    return (
        f"saga {saga!r}: step {step!r} depends on unknown step {dep!r} "
        f"(defined steps: {names}); check the spelling or define {dep!r} first"
    )


def _topological(
    saga: str, steps: Mapping[str, StepDefinition]
) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    dependents: dict[str, list[str]] = {name: [] for name in steps}
    for step in steps.values():
        for dep in step.depends_on:
            if dep not in steps:
                raise SagaDefinitionError(_unknown_dep(saga, step.name, dep, steps))
            dependents[dep].append(step.name)
    waiting = {name: len(step.depends_on) for name, step in steps.items()}
    order: list[str] = []
    ready = [name for name, count in waiting.items() if count == 0]
    while ready:
        name = ready.pop(0)
        order.append(name)
        for nxt in dependents[name]:
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                ready.append(nxt)
    if len(order) != len(steps):
        cycle = [name for name in steps if name not in order]
        raise SagaDefinitionError(
            f"saga {saga!r} has a dependency cycle among steps {cycle}; "
            "remove a depends_on entry so the steps form a DAG"
        )
    return tuple(order), {name: tuple(deps) for name, deps in dependents.items()}
