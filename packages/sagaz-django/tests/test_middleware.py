"""The correlation-id middleware in sync and async stacks."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from sagaz.core import current_correlation_id
from sagaz.integrations.django.middleware import SagaContextMiddleware, request_correlation_id


def _view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"{request.correlation_id}|{current_correlation_id()}")  # type: ignore[attr-defined]


async def _async_view(request: HttpRequest) -> HttpResponse:
    return _view(request)


def test_sync_stack() -> None:
    middleware = SagaContextMiddleware(_view)
    request = RequestFactory().get("/", headers={"X-Correlation-ID": "sync-1"})
    response = middleware(request)
    assert response.content == b"sync-1|sync-1"
    assert response["X-Correlation-ID"] == "sync-1"
    assert current_correlation_id() is None  # the scope ended with the request
    fresh = middleware(RequestFactory().get("/", headers={"X-Correlation-ID": "bad id"}))
    assert fresh["X-Correlation-ID"] != "bad id"
    assert len(fresh["X-Correlation-ID"]) == 36


async def test_async_stack() -> None:
    middleware = SagaContextMiddleware(_async_view)
    request = RequestFactory().get("/", headers={"X-Correlation-ID": "async-1"})
    response = await middleware(request)
    assert response.content == b"async-1|async-1"
    assert response["X-Correlation-ID"] == "async-1"


def test_request_correlation_id_without_middleware() -> None:
    request = RequestFactory().get("/")
    value = request_correlation_id(request)
    assert request_correlation_id(request) == value
    assert len(value) == 36
