"""Sagaz for Django: durable sagas stored in your Django database.

Add ``"sagaz.integrations.django"`` to ``INSTALLED_APPS``, run ``manage.py migrate``, define
sagas in your apps' ``sagas.py``, and start them inside your transactions::

    from django.db import transaction
    from sagaz.integrations.django import atomic_saga_start

    with transaction.atomic():
        order = Order.objects.create(...)
        atomic_saga_start(OrderSaga, {"order_id": order.pk})

Read a saga from your views with :func:`load_saga` / :func:`saga_diagram` (async:
``aload_saga`` / ``asaga_diagram``). Names are imported lazily, so importing this package
does not need Django set up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sagaz.integrations.django._version import __version__

if TYPE_CHECKING:
    from sagaz.integrations.django.conf import SagazSettings, get_settings
    from sagaz.integrations.django.lookup import aload_saga, asaga_diagram, load_saga, saga_diagram
    from sagaz.integrations.django.middleware import SagaContextMiddleware
    from sagaz.integrations.django.runtime import get_config, get_service
    from sagaz.integrations.django.storage import DjangoSagaStorage
    from sagaz.integrations.django.transactions import atomic_saga_start

__all__ = [
    "DjangoSagaStorage",
    "SagaContextMiddleware",
    "SagazSettings",
    "__version__",
    "aload_saga",
    "asaga_diagram",
    "atomic_saga_start",
    "get_config",
    "get_service",
    "get_settings",
    "load_saga",
    "saga_diagram",
]

_LAZY = {
    "DjangoSagaStorage": "sagaz.integrations.django.storage",
    "SagaContextMiddleware": "sagaz.integrations.django.middleware",
    "SagazSettings": "sagaz.integrations.django.conf",
    "aload_saga": "sagaz.integrations.django.lookup",
    "asaga_diagram": "sagaz.integrations.django.lookup",
    "atomic_saga_start": "sagaz.integrations.django.transactions",
    "get_config": "sagaz.integrations.django.runtime",
    "get_service": "sagaz.integrations.django.runtime",
    "get_settings": "sagaz.integrations.django.conf",
    "load_saga": "sagaz.integrations.django.lookup",
    "saga_diagram": "sagaz.integrations.django.lookup",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
