"""The version of sagaz-fastapi (read by hatch; bump with ``hatch version``)."""

__version__ = "0.1.0"
