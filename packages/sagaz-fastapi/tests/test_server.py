"""Against a real uvicorn server on 127.0.0.1 with SQLite file storage: the webhook flow,
bad input, crash and shutdown recovery, and bounded stress (concurrency, leaks). The webhook
flow and the leak test run on PostgreSQL too (a schema of their own in the test database)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sagaz_fastapi_support import STARTED, TERMINAL, Backend, Server, ServerFactory, wait_until
from sagaz_fastapi_testapp import LIMIT, SECRET, SIGNED_SOURCE, SOURCE

from sagaz.core.web import SIGNATURE_HEADER, signature_headers

JSON = {"Content-Type": "application/json"}
GRACEFUL = {0, -signal.SIGTERM}
#: Run a test once per storage backend (the ``backend`` fixture of conftest.py).
ON_EACH_BACKEND = pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


def state_of(client: httpx.Client, saga_id: str) -> str:
    response = client.get(f"/webhooks/status/{saga_id}")
    assert response.status_code == 200, response.text
    value: str = response.json()["state"]
    return value


def wait_terminal(client: httpx.Client, saga_id: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = state_of(client, saga_id)
        if state in TERMINAL:
            return state
        time.sleep(0.02)
    record = client.get(f"/webhooks/status/{saga_id}").json()
    logs = STARTED[-1].output()[-4000:] if STARTED else ""
    pytest.fail(f"saga {saga_id} did not finish in {timeout}s: {record}\nserver log:\n{logs}")


@pytest.fixture
def server(backend: Backend, start_server: ServerFactory) -> Server:
    # ``backend`` first: it is torn down (its schema dropped) after the server has stopped.
    return start_server(storage_url=backend.url)


@ON_EACH_BACKEND
def test_webhook_to_completed_and_compensated(server: Server) -> None:
    with server.client() as client:
        response = client.post(
            f"/webhooks/{SOURCE}",
            json={"order_id": "srv-1", "amount": 10},
            headers={"X-Correlation-ID": "srv-cid-1"},
        )
        assert response.status_code == 202, response.text
        assert response.headers["X-Correlation-ID"] == "srv-cid-1"
        body = response.json()
        assert body["correlation_id"] == "srv-cid-1"
        saga_id = body["saga_ids"][0]
        assert wait_terminal(client, saga_id) == "COMPLETED"
        status = client.get(f"/webhooks/status/{saga_id}").json()
        assert status["correlation_id"] == "srv-cid-1"  # stored on the saga
        assert status["context"]["seen_correlation_id"] == "srv-cid-1"  # seen by its steps
        assert status["completed_steps"] == ["reserve", "charge", "ship"]
        by_event = client.get(f"/webhooks/{SOURCE}/status/srv-cid-1").json()
        assert by_event["status"] == "completed"

        declined = client.post(
            f"/webhooks/{SOURCE}", json={"order_id": "srv-2", "amount": LIMIT * 2}
        )
        saga_id = declined.json()["saga_ids"][0]
        assert wait_terminal(client, saga_id) == "COMPENSATED"
        status = client.get(f"/webhooks/status/{saga_id}").json()
        assert status["failed_step"] == "charge"
        assert status["compensated_steps"] == ["reserve"]
        diagram = client.get(f"/webhooks/status/{saga_id}/diagram").json()
        assert "classDef compensated" in diagram["mermaid"]


def test_duplicates_and_run_saga_background(server: Server) -> None:
    with server.client() as client:
        first = client.post(f"/webhooks/{SOURCE}", json={"order_id": "dup-1", "amount": 1})
        second = client.post(f"/webhooks/{SOURCE}", json={"order_id": "dup-1", "amount": 1})
        assert second.status_code == 202
        assert second.json()["saga_ids"] == first.json()["saga_ids"]
        assert second.json()["duplicate"] is True

        order = client.post(
            "/orders", json={"order_id": "bg-1", "amount": 5}, headers={"X-Correlation-ID": "bg"}
        )
        assert order.status_code == 202
        saga_id = order.json()["saga_id"]
        assert wait_terminal(client, saga_id) == "COMPLETED"
        status = client.get(f"/webhooks/status/{saga_id}").json()
        assert status["correlation_id"] == "bg"
        assert status["context"]["seen_correlation_id"] == "bg"  # the background task's scope
        again = client.post("/orders", json={"order_id": "bg-1", "amount": 5})
        assert again.json()["saga_id"] == saga_id


def test_bad_input_is_answered_with_json_4xx(server: Server) -> None:
    big = json.dumps({"order_id": "big", "pad": "x" * 70_000}).encode()
    body = json.dumps({"order_id": "sig-1", "amount": 1}).encode()
    cases: list[tuple[str, bytes, dict[str, str], int, str]] = [
        (SOURCE, b"{oops", JSON, 400, "invalid_json"),
        (SOURCE, b'{"amount": 1}', JSON, 400, "missing_field"),
        (SOURCE, b"[]", JSON, 400, "invalid_payload"),
        ("no_such_source", b"{}", JSON, 404, "unknown_source"),
        (SOURCE, big, JSON, 413, "payload_too_large"),
        (
            SOURCE,
            b'{"order_id": "t"}',
            {"Content-Type": "text/plain"},
            415,
            "unsupported_media_type",
        ),
        (SIGNED_SOURCE, body, JSON, 401, "missing_signature"),
        (SIGNED_SOURCE, body, {**JSON, SIGNATURE_HEADER: "sha256=00"}, 401, "missing_timestamp"),
        (SIGNED_SOURCE, body, {**JSON, **signature_headers(body, "?")}, 401, "invalid_signature"),
    ]
    with server.client() as client:
        for source, content, headers, status, code in cases:
            response = client.post(
                f"/webhooks/{source}",
                content=content,
                headers={**headers, "X-Correlation-ID": code},
            )
            assert response.status_code == status, (code, response.text)
            assert response.headers["content-type"] == "application/json"
            assert response.json()["error"] == code
            assert response.json()["correlation_id"] == code
            assert response.headers["X-Correlation-ID"] == code
        assert (
            "order_id"
            in client.post(f"/webhooks/{SOURCE}", content=b"{}", headers=JSON).json()["detail"]
        )
        signed = client.post(
            f"/webhooks/{SIGNED_SOURCE}",
            content=body,
            headers={**JSON, **signature_headers(body, SECRET)},
        )
        assert signed.status_code == 202
        wrong_method = client.get(f"/webhooks/{SOURCE}")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["error"] == "method_not_allowed"
        assert client.get("/webhooks/status/nope").json()["error"] == "not_found"
        assert client.get("/boom").json()["error"] == "internal_error"
    # The server logged the real error.
    wait_until(lambda: "RuntimeError: boom" in server.output(), timeout=5)


def test_a_crash_after_the_response_loses_nothing(
    start_server: ServerFactory, sqlite_url: str, tmp_path: Path
) -> None:
    env = {"SAGAZ_LEASE_SECONDS": "1"}
    first = start_server(storage_url=sqlite_url, env=env)
    gate_one, gate_two = tmp_path / "gate-1", tmp_path / "gate-2"
    gate_one.touch()
    gate_two.touch()
    with first.client() as client:
        webhook = client.post(
            f"/webhooks/{SOURCE}", json={"order_id": "crash-1", "amount": 1, "gate": str(gate_one)}
        )
        order = client.post(
            "/orders", json={"order_id": "crash-2", "amount": 1, "gate": str(gate_two)}
        )
        saga_ids = [webhook.json()["saga_ids"][0], order.json()["saga_id"]]
        wait_until(lambda: all(state_of(client, s) == "RUNNING" for s in saga_ids))
    first.kill()  # SIGKILL: no shutdown code runs
    gate_one.unlink()
    gate_two.unlink()
    time.sleep(1.2)  # the dead process's leases expire (lease_seconds=1)
    second = start_server(storage_url=sqlite_url, env=env)
    with second.client() as client:
        for saga_id in saga_ids:
            assert wait_terminal(client, saga_id) == "COMPLETED"
            status = client.get(f"/webhooks/status/{saga_id}").json()
            assert status["completed_steps"] == ["reserve", "charge", "ship"]


def test_shutdown_waits_then_cancels_and_the_next_start_up_resumes(
    start_server: ServerFactory, sqlite_url: str, tmp_path: Path
) -> None:
    env = {"SAGAZ_TEST_SHUTDOWN_GRACE": "0.5"}
    first = start_server(storage_url=sqlite_url, env=env)
    gate = tmp_path / "gate"
    gate.touch()
    with first.client() as client:
        quick = client.post(f"/webhooks/{SOURCE}", json={"order_id": "sd-0", "amount": 1})
        slow = client.post(
            f"/webhooks/{SOURCE}", json={"order_id": "sd-1", "amount": 1, "gate": str(gate)}
        )
        slow_id = slow.json()["saga_ids"][0]
        wait_until(lambda: state_of(client, slow_id) == "RUNNING")
    began = time.monotonic()
    # SIGTERM: graceful (uvicorn >= 0.29 re-raises the signal after its shutdown).
    assert first.stop() in GRACEFUL
    assert time.monotonic() - began < 5  # grace 0.5 s, then cancelled
    gate.unlink()
    # The leases were released at shutdown (lease_seconds is 30 s here): the next start-up
    # resumes the cancelled saga at once.
    second = start_server(storage_url=sqlite_url, env=env)
    with second.client() as client:
        assert wait_terminal(client, quick.json()["saga_ids"][0]) == "COMPLETED"
        assert wait_terminal(client, slow_id) == "COMPLETED"
        assert client.get(f"/webhooks/status/{slow_id}").json()["completed_steps"] == [
            "reserve",
            "charge",
            "ship",
        ]


# -- bounded stress ---------------------------------------------------------------------------


async def post_many(
    url: str, count: int, concurrency: int, prefix: str, *, retried: list[str] | None = None
) -> list[httpx.Response]:
    """POST ``count`` webhooks, ``concurrency`` at a time over as many connections.

    With ``retried`` (a list), a POST whose kept-alive connection the server closed
    meanwhile (uvicorn drops idle ones) is sent again, as a webhook sender would: the
    idempotency key makes that safe. Each retry's reason is appended to ``retried``.
    """
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as client:

        async def post(i: int) -> httpx.Response:
            async with semaphore:
                for attempt in range(3):
                    try:
                        return await client.post(
                            f"/webhooks/{SOURCE}",
                            json={
                                "order_id": f"{prefix}-{i}",
                                "amount": 1 if i % 10 else LIMIT + 1,
                            },
                            headers={"X-Correlation-ID": f"{prefix}-{i}"},
                        )
                    except (httpx.ReadError, httpx.RemoteProtocolError) as exc:
                        if retried is None or attempt == 2:
                            raise
                        retried.append(f"{prefix}-{i}: {type(exc).__name__}")
                raise AssertionError("unreachable")  # pragma: no cover

        return await asyncio.wait_for(asyncio.gather(*(post(i) for i in range(count))), 120)


async def wait_all_terminal(
    url: str, saga_ids: list[str], timeout: float = 120.0
) -> dict[str, Any]:
    states: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        pending = list(saga_ids)
        while pending and time.monotonic() < deadline:
            still = []
            for saga_id in pending:
                response = await client.get(f"/webhooks/status/{saga_id}")
                state = response.json()["state"]
                states[saga_id] = state
                if state not in TERMINAL:
                    still.append(saga_id)
            pending = still
            if pending:
                await asyncio.sleep(0.1)
    return states


@pytest.mark.slow
def test_100_concurrent_requests_all_answered_all_terminal(server: Server) -> None:
    responses = asyncio.run(post_many(server.url, 100, 100, "c100"))
    assert [r.status_code for r in responses] == [202] * 100, server.output()[-3000:]
    assert [r.headers["X-Correlation-ID"] for r in responses] == [f"c100-{i}" for i in range(100)]
    saga_ids = [r.json()["saga_ids"][0] for r in responses]
    assert len(set(saga_ids)) == 100
    states = asyncio.run(wait_all_terminal(server.url, saga_ids))
    expected = {s: "COMPLETED" if i % 10 else "COMPENSATED" for i, s in enumerate(saga_ids)}
    assert states == expected, server.output()[-3000:]


def _connections(server: Server, backend: Backend) -> int:
    """The server's database connections: SQLite file descriptors, or PostgreSQL sessions."""
    if backend.sqlite_path is not None:
        return server.fds_to(backend.sqlite_path)
    return backend.connections()


@pytest.mark.slow
@ON_EACH_BACKEND
def test_1000_requests_leak_no_connection(server: Server, backend: Backend) -> None:
    with server.client() as client:
        assert client.get("/webhooks/health").status_code == 200
    connections_before, threads_before = _connections(server, backend), server.threads()
    assert connections_before > 0  # the lifespan opened the database
    if backend.kind == "postgres":
        assert connections_before == backend.pool  # the pool's fixed size, and no other
    retried: list[str] = []
    posts = asyncio.run(post_many(server.url, 500, 20, "k1000", retried=retried))
    assert server.proc.poll() is None, server.output()[-3000:]
    assert {r.status_code for r in posts} == {202}, server.output()[-3000:]
    assert len(retried) <= 5, retried  # a rare keep-alive race at most
    saga_ids = [r.json()["saga_ids"][0] for r in posts]
    states = asyncio.run(wait_all_terminal(server.url, saga_ids))  # 500 more requests at least
    assert set(states.values()) <= {"COMPLETED", "COMPENSATED"}, server.output()[-3000:]
    assert len(states) == 500
    assert _connections(server, backend) == connections_before
    assert server.threads() <= threads_before + 1
    assert server.stop() in GRACEFUL
    if backend.kind == "postgres":  # the shutdown closed every session
        wait_until(lambda: backend.connections() == 0, timeout=10, what="sessions to end")
