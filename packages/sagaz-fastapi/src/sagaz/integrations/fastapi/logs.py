"""Compatibility re-export: :class:`CorrelationIdFilter` now lives in the core.

It is framework-neutral, so it moved to :mod:`sagaz.core.observability.logs`; import it
from ``sagaz.core.observability`` in new code. This name stays for code written against
the FastAPI plugin (``from sagaz.integrations.fastapi import CorrelationIdFilter``) and
is the very same class.
"""

from __future__ import annotations

from sagaz.core.observability.logs import CorrelationIdFilter

__all__ = ["CorrelationIdFilter"]
