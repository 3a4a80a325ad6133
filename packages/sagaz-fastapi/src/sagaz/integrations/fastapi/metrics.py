"""A ``/metrics`` route in the Prometheus text format (needs ``sagaz-core[prometheus]``).

::

    from sagaz.core import SagaConfig
    from sagaz.core.observability import PrometheusListener
    from sagaz.integrations.fastapi import create_lifespan, create_metrics_router

    config = SagaConfig(storage_url="sqlite:///app.db", listeners=[PrometheusListener()])
    app = FastAPI(lifespan=create_lifespan(config))
    app.include_router(create_metrics_router())

The route exposes the registry (default: prometheus-client's global ``REGISTRY``) with
the Sagaz metrics: ``sagaz_sagas_total{saga,status}``, ``sagaz_steps_total{saga,step,
outcome}``, retries, compensations, durations, ``sagaz_sagas_in_flight`` and, read from
storage at each scrape, the outbox backlog and age, unfinished sagas and leases (see
:mod:`sagaz.core.observability.prometheus`). Passing ``config`` (or giving the
config a :class:`~sagaz.core.observability.PrometheusListener`) counts sagas from the
first one; otherwise the listener is added at the first scrape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
from fastapi.params import Depends

from sagaz.core import SagaConfig
from sagaz.core.observability.prometheus import MetricsEndpoint
from sagaz.integrations.fastapi.lifespan import SagazNotInitializedError, get_config

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["create_metrics_router"]


def create_metrics_router(
    registry: CollectorRegistry | None = None,
    *,
    path: str = "/metrics",
    config: SagaConfig | None = None,
    collect_storage: bool = True,
    dependencies: Sequence[Depends] | None = None,
    include_in_schema: bool = False,
) -> APIRouter:
    """A router with ``GET {path}``: the Prometheus exposition of ``registry``.

    ``config`` defaults to the application's (from
    :func:`~sagaz.integrations.fastapi.create_lifespan`); its storage is read for the
    backlog gauges (``collect_storage=False`` skips that). ``dependencies`` guard the
    route (e.g. an authentication dependency). OpenMetrics is served when the scraper
    asks for it in ``Accept``.

    Raises :class:`~sagaz.core.ConfigurationError` naming ``pip install
    'sagaz-core[prometheus]'`` when prometheus-client is not installed.
    """
    if not path.startswith("/"):
        raise ValueError(f"the metrics path must start with '/', got {path!r}")
    endpoint = MetricsEndpoint(registry, collect_storage=collect_storage)
    if config is not None:
        endpoint.attach(config)
    router = APIRouter(dependencies=dependencies, include_in_schema=include_in_schema)

    @router.get(path, name="sagaz_metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        """The Prometheus metrics of this process."""
        cfg = config if config is not None else _app_config(request)
        storage = None
        if cfg is not None:
            endpoint.attach(cfg)
            storage = cfg.storage
        body, content_type = await endpoint.render(storage, request.headers.get("accept"))
        return Response(body, media_type=content_type)

    return router


def _app_config(request: Request) -> SagaConfig | None:
    try:
        return get_config(request)
    except SagazNotInitializedError:  # no Sagaz lifespan: the registry alone
        return None
