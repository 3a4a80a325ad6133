"""gunicorn settings of the test server: finish running sagas before a worker exits."""

from sagaz.integrations.flask import gunicorn_worker_exit as worker_exit

__all__ = ["worker_exit"]
