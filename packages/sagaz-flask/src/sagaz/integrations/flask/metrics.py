"""A ``/metrics`` route in the Prometheus text format (needs ``sagaz-core[prometheus]``).

Turn it on with ``app.config["SAGAZ_METRICS_ENDPOINT"] = "/metrics"`` (or ``True`` for
``/metrics``) before ``init_app``, or call ``sagaz.register_metrics_endpoint()``
(:meth:`~sagaz.integrations.flask.SagaFlask.register_metrics_endpoint`).
Either adds a :class:`~sagaz.core.observability.PrometheusListener` to the app's
:class:`~sagaz.core.SagaConfig` (so its sagas, steps, retries and compensations are
counted) and a ``GET`` route exposing the registry (default: prometheus-client's global
``REGISTRY``), with the outbox backlog and age, unfinished sagas and leases read from
storage at each scrape (see :mod:`sagaz.core.observability.prometheus`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Blueprint, Flask, Response, request

from sagaz.core.observability.prometheus import MetricsEndpoint

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from sagaz.integrations.flask.extension import SagaFlaskState

__all__ = ["DEFAULT_METRICS_PATH", "register_metrics"]

#: The path ``SAGAZ_METRICS_ENDPOINT = True`` serves the metrics on.
DEFAULT_METRICS_PATH = "/metrics"


def register_metrics(
    app: Flask,
    state: SagaFlaskState,
    path: str = DEFAULT_METRICS_PATH,
    registry: CollectorRegistry | None = None,
    *,
    collect_storage: bool = True,
    name: str = "sagaz_metrics",
) -> Blueprint:
    """Register ``GET {path}`` on ``app`` and count ``state``'s sagas on ``registry``.

    Raises :class:`~sagaz.core.ConfigurationError` naming ``pip install
    'sagaz-core[prometheus]'`` when prometheus-client is missing, and ValueError for a
    path that does not start with ``/``.
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(
            f"the metrics path must be a string starting with '/', got {path!r}; "
            "e.g. SAGAZ_METRICS_ENDPOINT = '/metrics'"
        )
    endpoint = MetricsEndpoint(registry, collect_storage=collect_storage)
    endpoint.attach(state.config)
    blueprint = Blueprint(name, __name__)

    @blueprint.get(path)
    def metrics() -> Response:
        """The Prometheus metrics of this process."""
        body, content_type = state.call(
            endpoint.render, state.config.storage, request.headers.get("Accept")
        )
        return Response(body, content_type=content_type)

    app.register_blueprint(blueprint)
    return blueprint
