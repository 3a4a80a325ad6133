"""The version of sagaz-flask."""

__version__ = "0.1.0"
