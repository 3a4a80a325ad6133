"""The version of the sagaz-core distribution (read by hatchling)."""

__version__ = "0.1.0"
