"""Sagaz for Flask: the :class:`SagaFlask` extension.

::

    from flask import Flask
    from sagaz.core import Saga, action, trigger
    from sagaz.integrations.flask import SagaFlask

    app = Flask(__name__)
    app.config["SAGAZ_STORAGE_URL"] = "sqlite:///sagas.db"
    sagaz = SagaFlask(app)
    sagaz.register_webhook_blueprint("/webhooks")   # POST /webhooks/<source>, status routes

See :data:`SETTINGS` for every ``app.config["SAGAZ_*"]`` key.
"""

from __future__ import annotations

from sagaz.integrations.flask._version import __version__
from sagaz.integrations.flask.extension import (
    EXTENSION_KEY,
    SagaFlask,
    SagaFlaskState,
    SagazExtension,
    close_all,
    gunicorn_worker_exit,
    json_response,
)
from sagaz.integrations.flask.settings import SETTINGS, SagaFlaskSettings

__all__ = [
    "EXTENSION_KEY",
    "SETTINGS",
    "SagaFlask",
    "SagaFlaskSettings",
    "SagaFlaskState",
    "SagazExtension",
    "__version__",
    "close_all",
    "gunicorn_worker_exit",
    "json_response",
]
