"""Authorisation hooks the security tests name in ``SAGAZ["WEBHOOKS"]["AUTHORIZE"]``."""

from __future__ import annotations

from django.http import HttpRequest

TOKEN = "Bearer let-me-in"


def bearer_only(request: HttpRequest) -> bool:
    """Allow requests carrying the test token."""
    return request.headers.get("Authorization") == TOKEN


async def async_bearer_only(request: HttpRequest) -> bool:
    """The same check as a coroutine (awaited by the async views)."""
    return bearer_only(request)
