"""SagaContextMiddleware, get_correlation_id and CorrelationIdFilter."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, Response, WebSocket
from fastapi.testclient import TestClient
from sagaz_fastapi_support import terminal_state
from sagaz_fastapi_testapp import SOURCE, create_app

from sagaz.core import Saga, SagaConfig, SagaContextManager, current_correlation_id
from sagaz.integrations.fastapi import (
    CorrelationIdFilter,
    SagaContextMiddleware,
    get_correlation_id,
)


def make_app(**options: Any) -> tuple[FastAPI, list[Any]]:
    app = FastAPI()
    app.add_middleware(SagaContextMiddleware, **options)
    seen: list[Any] = []

    @app.get("/id")
    async def show(correlation_id: str = Depends(get_correlation_id)) -> dict[str, Any]:
        return {"dependency": correlation_id, "context": current_correlation_id()}

    @app.get("/sets-header")
    async def sets_header(response: Response) -> dict[str, str]:
        response.headers["X-Correlation-ID"] = "from-the-endpoint"
        return {}

    @app.get("/background")
    async def background(tasks: BackgroundTasks) -> dict[str, str]:
        async def note() -> None:
            seen.append(SagaContextManager.get("correlation_id"))

        tasks.add_task(note)
        return {}

    @app.get("/missing")
    async def missing() -> None:
        raise HTTPException(404, "no such thing")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"context": current_correlation_id()})
        await websocket.close()

    return app, seen


@pytest.fixture
def client() -> Iterator[TestClient]:
    app, _ = make_app()
    with TestClient(app) as test_client:
        yield test_client


def test_a_valid_header_is_used_and_echoed(client: TestClient) -> None:
    response = client.get("/id", headers={"X-Correlation-ID": "req.1:a-B_9"})
    assert response.headers["X-Correlation-ID"] == "req.1:a-B_9"
    assert response.json() == {"dependency": "req.1:a-B_9", "context": "req.1:a-B_9"}


@pytest.mark.parametrize(
    "value", [b"has space", b"x" * 129, b"semi;colon", "\u00fcn\u00ef".encode("latin-1"), b""]
)
def test_an_invalid_header_is_replaced_by_a_new_id(client: TestClient, value: bytes) -> None:
    response = client.get("/id", headers={"X-Correlation-ID": value})  # type: ignore[dict-item]
    new = response.headers["X-Correlation-ID"]
    assert new.encode() != value
    assert uuid.UUID(new).version == 4
    assert response.json()["context"] == new


def test_an_id_is_generated_for_each_request(client: TestClient) -> None:
    first = client.get("/id").headers["X-Correlation-ID"]
    second = client.get("/id").headers["X-Correlation-ID"]
    assert first != second
    assert uuid.UUID(first).version == 4


def test_the_header_is_set_once(client: TestClient) -> None:
    response = client.get("/sets-header", headers={"X-Correlation-ID": "mine"})
    assert response.headers.get_list("X-Correlation-ID") == ["mine"]


def test_errors_carry_the_id(client: TestClient) -> None:
    response = client.get("/missing", headers={"X-Correlation-ID": "e-1"})
    assert response.status_code == 404
    assert response.headers["X-Correlation-ID"] == "e-1"
    unknown = client.get("/no/such/route", headers={"X-Correlation-ID": "e-2"})
    assert unknown.status_code == 404
    assert unknown.headers["X-Correlation-ID"] == "e-2"


def test_an_unhandled_exception_is_a_json_500_with_the_id() -> None:
    app, _ = make_app()
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom", headers={"X-Correlation-ID": "boom-1"})
    assert response.status_code == 500
    assert response.headers["X-Correlation-ID"] == "boom-1"
    body = response.json()
    assert body["error"] == "internal_error"
    assert body["correlation_id"] == "boom-1"
    assert "boom" not in body["detail"]


def test_the_exception_still_reaches_the_server() -> None:
    app, _ = make_app()
    with TestClient(app) as client, pytest.raises(RuntimeError, match="boom"):
        client.get("/boom")


def test_json_errors_can_be_left_to_starlette() -> None:
    app, _ = make_app(json_errors=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.text == "Internal Server Error"


def test_background_tasks_see_the_id() -> None:
    app, seen = make_app()
    with TestClient(app) as client:
        client.get("/background", headers={"X-Correlation-ID": "bg-9"})
    assert seen == ["bg-9"]


def test_websockets_get_the_id() -> None:
    app, _ = make_app()
    with (
        TestClient(app) as client,
        client.websocket_connect("/ws", headers={"X-Correlation-ID": "ws-1"}) as websocket,
    ):
        assert websocket.receive_json() == {"context": "ws-1"}


def test_a_custom_header_name() -> None:
    app, _ = make_app(header_name="X-Request-ID")
    with TestClient(app) as client:
        response = client.get("/id", headers={"X-Request-ID": "r-1"})
    assert response.headers["X-Request-ID"] == "r-1"
    assert response.json()["context"] == "r-1"


def test_without_the_middleware_the_dependency_reads_the_header() -> None:
    app = FastAPI()

    @app.get("/id")
    async def show(
        first: str = Depends(get_correlation_id),
        again: str = Depends(get_correlation_id, use_cache=False),
    ) -> dict[str, str]:
        return {"first": first, "again": again}

    with TestClient(app) as client:
        assert client.get("/id", headers={"X-Correlation-ID": "h-1"}).json() == {
            "first": "h-1",
            "again": "h-1",
        }
        generated = client.get("/id").json()
        assert generated["first"] == generated["again"]
        assert uuid.UUID(generated["first"]).version == 4


async def test_the_dependency_prefers_an_open_scope() -> None:
    from starlette.requests import Request

    request = Request({"type": "http", "headers": [(b"x-correlation-id", b"header")]})
    with SagaContextManager.scope(correlation_id="scoped"):
        assert get_correlation_id(request) == "scoped"
    assert get_correlation_id(request) == "scoped"  # remembered for the request


async def test_non_http_scopes_pass_through() -> None:
    calls: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["type"])

    middleware = SagaContextMiddleware(inner)
    await middleware({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert calls == ["lifespan"]


# -- logs -----------------------------------------------------------------------------------


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.handler.addFilter(CorrelationIdFilter())
    caplog.set_level(logging.INFO)
    return caplog


def test_log_records_inside_sagas_carry_the_id(logs: pytest.LogCaptureFixture) -> None:
    with TestClient(create_app(SagaConfig())) as client:
        response = client.post(
            f"/webhooks/{SOURCE}",
            content=b'{"order_id": "log-1", "amount": 1}',
            headers={"Content-Type": "application/json", "X-Correlation-ID": "log-1"},
        )
        terminal_state(client, response.json()["saga_ids"][0])
    reserving = [r for r in logs.records if r.getMessage() == "reserving order log-1"]
    assert [r.correlation_id for r in reserving] == ["log-1"]  # type: ignore[attr-defined]


async def test_the_filter_outside_requests(logs: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("sagaz.fastapi.tests")
    logger.info("no scope")
    logger.info("explicit", extra={"correlation_id": "given"})

    async def step(ctx: dict[str, Any]) -> None:
        logger.info("in a step")

    saga = Saga(name="fastapi-test-logging").add_step("one", step)
    await saga.run({}, correlation_id="run-1")
    by_message = {r.getMessage(): r.correlation_id for r in logs.records}  # type: ignore[attr-defined]
    assert by_message["no scope"] == "-"
    assert by_message["explicit"] == "given"
    assert by_message["in a step"] == "run-1"


def test_nested_middleware_keeps_the_outer_id() -> None:
    app, _ = make_app()
    app.add_middleware(SagaContextMiddleware)  # an outer one
    with TestClient(app) as client:
        response = client.get("/id", headers={"X-Correlation-ID": "outer-1"})
    assert response.headers.get_list("X-Correlation-ID") == ["outer-1"]
    assert response.json()["context"] == "outer-1"
