"""A small Django project for the sagaz-django tests (also run by gunicorn, uvicorn and the
``sagaz_worker`` subprocess)."""
