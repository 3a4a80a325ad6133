"""The Flask application of the reliability suite, served by gunicorn.

``gunicorn 'sagaz_reliability_flask_app:create_app()'``; storage from the ``SAGAZ_*``
environment.
"""

from __future__ import annotations

import sagaz_reliability_sagas  # noqa: F401 - defines the saga and its webhook source
from flask import Flask

from sagaz.integrations.flask import SagaFlask


def create_app() -> Flask:
    """The app: the webhook blueprint under /webhooks."""
    app = Flask(__name__)
    sagaz = SagaFlask(app)
    sagaz.register_webhook_blueprint("/webhooks")
    return app
