"""The FastAPI application of the reliability suite, served by uvicorn.

``uvicorn sagaz_reliability_fastapi_app:create_app --factory``; storage from the
``SAGAZ_*`` environment (``SagaConfig.from_env``); ``REL_RUN_IN_PROCESS=0`` leaves started
sagas to ``sagaz worker`` processes.
"""

from __future__ import annotations

import os

import sagaz_reliability_sagas  # noqa: F401 - defines the saga and its webhook source
from fastapi import FastAPI

from sagaz.core import SagaConfig
from sagaz.core.web import WebhookSettings
from sagaz.integrations.fastapi import (
    SagaContextMiddleware,
    create_lifespan,
    create_webhook_router,
)


def create_app() -> FastAPI:
    """The app: the webhook routes under /webhooks, sagas stored per the environment."""
    run = os.environ.get("REL_RUN_IN_PROCESS", "1") == "1"
    app = FastAPI(lifespan=create_lifespan(SagaConfig.from_env(), shutdown_grace=10))
    app.add_middleware(SagaContextMiddleware)
    app.include_router(create_webhook_router(settings=WebhookSettings(run_in_process=run)))
    return app
