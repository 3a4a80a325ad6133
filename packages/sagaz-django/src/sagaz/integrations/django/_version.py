"""The version of sagaz-django."""

__version__ = "0.1.0"
