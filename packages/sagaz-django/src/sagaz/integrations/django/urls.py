"""Includable URLs: ``path("sagaz/", include("sagaz.integrations.django.urls"))``.

===========================================  ======  =====================================
path (after the prefix)                      method  what
===========================================  ======  =====================================
``health``                                   GET     200 when the database answers
``status/<saga_id>``                         GET     one saga's state
``status/<saga_id>/diagram``                 GET     its Mermaid diagram
``<source>``                                 POST    webhook: start the sagas (202)
``<source>/status/<correlation_id>``         GET     the sagas an event started
anything else                                any     a JSON 404
===========================================  ======  =====================================

Each route resolves to its async view when Django handles the request on an event loop
(ASGI) and to its sync view otherwise (WSGI), so neither stack pays for an adapter
thread or a throwaway event loop. URL names are namespaced ``sagaz:``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from django.urls import URLPattern
from django.urls.resolvers import ResolverMatch, RoutePattern

from sagaz.integrations.django import views

__all__ = ["DualURLPattern", "app_name", "urlpatterns"]

app_name = "sagaz"


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class DualURLPattern(URLPattern):
    """A URL pattern with a sync view (WSGI) and an async view (ASGI)."""

    def __init__(
        self,
        route: str,
        sync_view: Callable[..., Any],
        async_view: Callable[..., Any],
        name: str,
    ) -> None:
        super().__init__(RoutePattern(route, name=name, is_endpoint=True), sync_view, {}, name)
        self.async_callback = async_view

    def resolve(self, path: str) -> ResolverMatch | None:
        """Resolve as usual; hand out the async view when on an event loop."""
        match = super().resolve(path)
        if match is not None and _on_event_loop():
            match.func = self.async_callback
        return match


urlpatterns = [
    DualURLPattern("health", views.health, views.health_async, "health"),
    DualURLPattern(
        "status/<str:saga_id>/diagram", views.diagram, views.diagram_async, "saga-diagram"
    ),
    DualURLPattern(
        "status/<str:saga_id>", views.saga_status, views.saga_status_async, "saga-status"
    ),
    DualURLPattern(
        "<str:source>/status/<str:correlation_id>",
        views.source_status,
        views.source_status_async,
        "source-status",
    ),
    DualURLPattern("<str:source>", views.webhook, views.webhook_async, "webhook"),
    # Anything else under the prefix: a JSON 404, not Django's HTML page.
    DualURLPattern("<path:rest>", views.not_found, views.not_found_async, "not-found"),
]
