"""The process-wide registry of saga definitions (by name) and trigger sources.

Workers and recovery find the saga class of a recorded saga by its name here; the
registry is filled by defining (importing) saga classes, or by :func:`import_saga_modules`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sagaz.core.errors import UnknownSagaError

if TYPE_CHECKING:
    from sagaz.core.config import SagaConfig
    from sagaz.core.saga import Saga

__all__ = ["SagaRegistry", "TriggerBinding", "import_saga_modules", "registry"]

logger = logging.getLogger("sagaz.registry")


@dataclass(frozen=True, slots=True)
class TriggerBinding:
    """A ``@trigger`` method bound to the saga class that owns it."""

    source: str
    saga_class: type[Saga]
    method_name: str
    idempotency_key: str | None
    method: Callable[..., Any]

    @property
    def saga_name(self) -> str:
        """The name of the saga this trigger starts."""
        return self.saga_class.saga_name_of()


class SagaRegistry:
    """Saga classes and imperative saga instances by name, and triggers by source."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Saga]] = {}
        self._instances: dict[str, Saga] = {}
        self._triggers: dict[str, list[TriggerBinding]] = {}

    def register_class(self, name: str, cls: type[Saga]) -> None:
        """Register a declarative saga class (the newest definition of a name wins)."""
        old = self._classes.get(name)
        if old is not None and old is not cls:
            logger.debug("saga name %r now refers to %s.%s", name, cls.__module__, cls.__qualname__)
            for bindings in self._triggers.values():
                bindings[:] = [b for b in bindings if b.saga_class is not old]
        self._instances.pop(name, None)
        self._classes[name] = cls

    def register_instance(self, saga: Saga) -> None:
        """Register an imperative saga (built with ``Saga(name=...)``) by its name."""
        self._classes.pop(saga.name, None)
        self._instances[saga.name] = saga

    def register_trigger(self, binding: TriggerBinding) -> None:
        """Make ``binding.source`` start ``binding.saga_class``."""
        self._triggers.setdefault(binding.source, []).append(binding)

    def triggers_for(self, source: str) -> list[TriggerBinding]:
        """The triggers listening to ``source`` (empty when none)."""
        return list(self._triggers.get(source, ()))

    @property
    def sources(self) -> list[str]:
        """Every source some trigger listens to."""
        return [s for s, bindings in self._triggers.items() if bindings]

    @property
    def names(self) -> list[str]:
        """Every registered saga name."""
        return sorted({*self._classes, *self._instances})

    def saga_class(self, name: str) -> type[Saga] | None:
        """The declarative class registered under ``name``, if any."""
        return self._classes.get(name)

    def create(self, name: str, config: SagaConfig | None = None) -> Saga:
        """A saga object for ``name`` (a new instance of its class, or the registered one)."""
        cls = self._classes.get(name)
        if cls is not None:
            return cls(config=config)
        saga = self._instances.get(name)
        if saga is not None:
            return saga if config is None else saga.with_config(config)
        raise UnknownSagaError(
            f"no saga named {name!r} is registered in this process (known: "
            f"{', '.join(self.names) or 'none'}); import the module that defines it "
            "(e.g. sagaz worker --module myapp.sagas)"
        )


#: The process-wide registry.
registry = SagaRegistry()


def import_saga_modules(modules: Iterable[str]) -> list[str]:
    """Import modules by dotted name so their sagas register; return the names imported."""
    imported = []
    for module in modules:
        module = module.strip()
        if module:
            importlib.import_module(module)
            imported.append(module)
    return imported
