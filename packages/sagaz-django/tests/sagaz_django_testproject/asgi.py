"""ASGI entry point (uvicorn)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sagaz_django_testproject.settings")
application = get_asgi_application()
