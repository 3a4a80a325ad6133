"""A ``metrics`` route in the Prometheus text format (needs ``sagaz-core[prometheus]``).

Include it where Prometheus scrapes::

    urlpatterns = [
        path("sagaz/", include("sagaz.integrations.django.urls")),
        path("", include("sagaz.integrations.django.metrics")),   # GET /metrics
    ]

or route :func:`metrics_view` (sync, WSGI) / :func:`metrics_view_async` (ASGI) yourself.
The first scrape calls :func:`enable_metrics`, which adds a
:class:`~sagaz.core.observability.PrometheusListener` to the project's Sagaz config so
its sagas, steps, retries and compensations are counted; call it yourself in your
``AppConfig.ready`` to count from process start or to pick another registry (default:
prometheus-client's global ``REGISTRY``). Each scrape also reads the outbox backlog and
age, unfinished sagas and leases from the database. Loading these URLs without
prometheus-client raises :class:`~sagaz.core.ConfigurationError` naming
``pip install 'sagaz-core[prometheus]'``. The route is not protected:
expose it only to your scraper (network rules, or wrap the view).
"""

from __future__ import annotations

import importlib.util
import threading
from typing import TYPE_CHECKING

from django.http import HttpRequest, HttpResponse

from sagaz.core.errors import ConfigurationError
from sagaz.core.observability.prometheus import MetricsEndpoint
from sagaz.core.portal import run_sync
from sagaz.integrations.django.runtime import get_config
from sagaz.integrations.django.urls import DualURLPattern

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["app_name", "enable_metrics", "metrics_view", "metrics_view_async", "urlpatterns"]

app_name = "sagaz_metrics"

_lock = threading.Lock()
_endpoint: MetricsEndpoint | None = None


def enable_metrics(
    registry: CollectorRegistry | None = None, *, collect_storage: bool = True
) -> MetricsEndpoint:
    """Count this project's sagas on ``registry`` and serve it from the metrics views.

    The first call in a process decides the registry; later calls return the same
    endpoint. Raises :class:`~sagaz.core.ConfigurationError` naming ``pip install
    'sagaz-core[prometheus]'`` when prometheus-client is missing.
    """
    global _endpoint
    with _lock:
        endpoint = _endpoint
        if endpoint is None:
            endpoint = _endpoint = MetricsEndpoint(registry, collect_storage=collect_storage)
        endpoint.attach(get_config())
        return endpoint


def _response(body: bytes, content_type: str) -> HttpResponse:
    return HttpResponse(body, content_type=content_type)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET metrics``: the Prometheus metrics of this process (sync view)."""
    if request.method not in {"GET", "HEAD"}:
        return HttpResponse(status=405, headers={"Allow": "GET"})
    endpoint = enable_metrics()
    body, content_type = run_sync(
        endpoint.render, get_config().storage, request.headers.get("Accept")
    )
    return _response(body, content_type)


async def metrics_view_async(request: HttpRequest) -> HttpResponse:
    """``GET metrics``: the Prometheus metrics of this process (async view)."""
    if request.method not in {"GET", "HEAD"}:
        return HttpResponse(status=405, headers={"Allow": "GET"})
    endpoint = enable_metrics()
    body, content_type = await endpoint.render(get_config().storage, request.headers.get("Accept"))
    return _response(body, content_type)


def _require_client() -> None:
    # Fail when the URLs load (start-up), not at the first scrape.
    if importlib.util.find_spec("prometheus_client") is None:
        raise ConfigurationError(
            "sagaz.integrations.django.metrics needs prometheus-client: "
            "pip install 'sagaz-core[prometheus]'"
        )


_require_client()

urlpatterns = [DualURLPattern("metrics", metrics_view, metrics_view_async, "metrics")]
