"""Sagaz for FastAPI: lifespan, dependencies, correlation ids and webhook routes.

::

    from fastapi import FastAPI
    from sagaz.core import SagaConfig
    from sagaz.integrations.fastapi import (
        SagaContextMiddleware, create_lifespan, create_webhook_router,
    )

    app = FastAPI(lifespan=create_lifespan(SagaConfig(storage_url="sqlite:///app.db")))
    app.add_middleware(SagaContextMiddleware)
    app.include_router(create_webhook_router())
"""

from sagaz.integrations.fastapi._version import __version__
from sagaz.integrations.fastapi.dependencies import SagaFactory, run_saga_background, saga_factory
from sagaz.integrations.fastapi.diagrams import saga_diagram_response
from sagaz.integrations.fastapi.lifespan import (
    DEFAULT_SHUTDOWN_GRACE,
    SagazNotInitializedError,
    create_lifespan,
    get_config,
)
from sagaz.integrations.fastapi.logs import CorrelationIdFilter
from sagaz.integrations.fastapi.metrics import create_metrics_router
from sagaz.integrations.fastapi.middleware import SagaContextMiddleware, get_correlation_id
from sagaz.integrations.fastapi.models import (
    ErrorResponse,
    HealthStatus,
    SagaDiagram,
    SagaState,
    SourceStatus,
    StepState,
    ValidationErrorResponse,
    WebhookAccepted,
)
from sagaz.integrations.fastapi.webhooks import SagazRoute, create_webhook_router

__all__ = [
    "DEFAULT_SHUTDOWN_GRACE",
    "CorrelationIdFilter",
    "ErrorResponse",
    "HealthStatus",
    "SagaContextMiddleware",
    "SagaDiagram",
    "SagaFactory",
    "SagaState",
    "SagazNotInitializedError",
    "SagazRoute",
    "SourceStatus",
    "StepState",
    "ValidationErrorResponse",
    "WebhookAccepted",
    "__version__",
    "create_lifespan",
    "create_metrics_router",
    "create_webhook_router",
    "get_config",
    "get_correlation_id",
    "run_saga_background",
    "saga_diagram_response",
    "saga_factory",
]
