"""The example app served by a real gunicorn (2 sync workers) on 127.0.0.1 with SQLite.

The README's requests are replayed over HTTP; sagas started in one worker are read
through the status routes of both; bad input gets a JSON 4xx; bounded stress: 100
concurrent requests and 1,000 requests without leaking SQLite connections. The saga
outcomes and the leak test run on PostgreSQL too (a schema of their own in the test
database, and an ``application_name`` to count the server's sessions by).
"""

from __future__ import annotations

import functools
import json
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sagaz_flask_example import SIGNING_SECRET
from sagaz_flask_helpers import (
    GunicornServer,
    PostgresSchema,
    http_call,
    open_fds,
    require_postgres,
    require_sqlite,
    wait_for,
)

from sagaz.core import CORRELATION_ID_HEADER
from sagaz.core.web import signature_headers

CID = CORRELATION_ID_HEADER.lower()
TERMINAL = {"COMPLETED", "COMPENSATED", "FAILED"}
UNFINISHED = (
    "SELECT COUNT(*) FROM sagaz_sagas WHERE status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED')"
)


def _stopped_cleanly(srv: GunicornServer) -> None:
    code = srv.stop()
    log = srv.log()
    assert code == 0, log[-3000:]
    # The only tracebacks are those of the deliberately failing test route.
    assert log.count("Traceback") == log.count("RuntimeError: a bug in a view"), log[-5000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    require_sqlite()
    folder = tmp_path_factory.mktemp("gunicorn")
    db = folder / "sagas.db"
    srv = GunicornServer(f"sqlite:///{db}", folder / "gunicorn.log")
    srv.db = db  # type: ignore[attr-defined]
    srv.pg = None  # type: ignore[attr-defined]
    yield srv
    _stopped_cleanly(srv)


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """The same server on PostgreSQL: a schema of its own, dropped afterwards."""
    require_postgres()
    pg = PostgresSchema("sagaz_flask_test")
    try:
        srv = GunicornServer(pg.url, tmp_path_factory.mktemp("gunicorn-pg") / "gunicorn.log")
        srv.db = None  # type: ignore[attr-defined]
        srv.pg = pg  # type: ignore[attr-defined]
        yield srv
        _stopped_cleanly(srv)
        # Both workers closed their pools on the way out.
        wait_for(lambda: pg.connections() == 0, timeout=10)
    finally:
        pg.drop()


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], scope="module"
)
def any_server(request: pytest.FixtureRequest) -> GunicornServer:
    """The SQLite server, then the PostgreSQL one (each started once per module)."""
    name = "server" if request.param == "sqlite" else "pg_server"
    srv: GunicornServer = request.getfixturevalue(name)
    return srv


def unfinished(server: GunicornServer) -> int:
    """How many sagas of the server's storage are not terminal (read from the database)."""
    pg: PostgresSchema | None = server.pg  # type: ignore[attr-defined]
    if pg is not None:
        return int(pg.scalar(UNFINISHED))
    with sqlite3.connect(server.db) as db:  # type: ignore[attr-defined]
        (count,) = db.execute(UNFINISHED).fetchone()
    return int(count)


def post_order(
    server: GunicornServer, order_id: str | None = None, amount: float = 99.99, **headers: str
) -> tuple[int, dict[str, str], Any]:
    payload = {
        "order_id": order_id or f"ORD-{uuid.uuid4().hex[:10]}",
        "amount": amount,
        "user_id": "user-123",
    }
    return http_call(server.port, "POST", "/webhooks/order_created", payload, headers)


def wait_state(server: GunicornServer, saga_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = http_call(server.port, "GET", f"/webhooks/status/{saga_id}")
        assert status == 200, body
        if body["state"] in TERMINAL:
            return dict(body)
        assert time.monotonic() < deadline, f"saga {saga_id} still {body['state']}"
        time.sleep(0.05)


def both_workers_answer(server: GunicornServer, path: str, tries: int = 400) -> dict[str, Any]:
    """GET ``path`` concurrently until both workers have answered; bodies by worker pid."""
    seen: dict[str, Any] = {}

    def get(_: int) -> tuple[int, dict[str, str], Any]:
        return http_call(server.port, "GET", path)

    with ThreadPoolExecutor(8) as pool:
        for _ in range(tries // 8):
            for status, headers, body in pool.map(get, range(8)):
                assert status == 200, body
                seen[headers["x-worker-pid"]] = body
            if len(seen) >= 2:
                return seen
    pytest.fail(f"only worker(s) {sorted(seen)} answered {tries} requests")


# -- the README, over HTTP -----------------------------------------------------------------


def test_readme_requests(server: GunicornServer) -> None:
    # curl -X POST http://localhost:5000/webhooks/order_created -H "Content-Type: ..." -d ...
    status, headers, body = http_call(
        server.port,
        "POST",
        "/webhooks/order_created",
        b'{"order_id": "ORD-001", "amount": 99.99, "user_id": "user-123"}',
        {"Content-Type": "application/json"},
    )
    assert status == 202
    assert body["status"] == "accepted"
    assert body["source"] == "order_created"
    assert body["message"] == "Event queued for processing"
    correlation_id = body["correlation_id"]
    assert headers[CID] == correlation_id
    saga_id = body["saga_ids"][0]

    # curl http://localhost:5000/webhooks/order_created/status/abc123...
    status, _, s = http_call(server.port, "GET", f"/webhooks/order_created/status/{correlation_id}")
    assert status == 200
    assert s["correlation_id"] == correlation_id
    assert s["source"] == "order_created"
    assert s["status"] in {"processing", "completed"}
    assert s["message"]

    # curl http://localhost:5000/webhooks/status/<saga_id>
    final = wait_state(server, saga_id)
    assert final["saga_id"] == saga_id
    assert final["state"] == "COMPLETED"
    assert final["context"]["order_id"] == "ORD-001"
    assert final["context"]["amount"] == 99.99
    assert final["completed_steps"] == ["reserve_inventory", "charge_payment", "ship_order"]
    assert final["failed_step"] is None
    assert final["error"] is None

    status, _, health = http_call(server.port, "GET", "/health")
    assert status == 200
    assert health["status"] == "ok"
    status, _, diagram = http_call(server.port, "GET", f"/orders/ORD-001/diagram?saga_id={saga_id}")
    assert status == 200
    assert diagram["order_id"] == "ORD-001"
    assert diagram["state"] == "COMPLETED"
    assert diagram["mermaid"].startswith("flowchart TD")
    status, _, d2 = http_call(server.port, "GET", f"/webhooks/status/{saga_id}/diagram")
    assert status == 200
    assert d2["saga_name"] == "flask-example-order"


def test_sagas_finish_and_every_worker_reads_them(any_server: GunicornServer) -> None:
    server = any_server
    started = {}
    for amount in (10, 20, 5000, 30, 7000, 40):
        status, _, body = post_order(server, amount=amount)
        assert status == 202
        started[body["saga_ids"][0]] = "COMPENSATED" if amount > 1000 else "COMPLETED"
    for saga_id, expected in started.items():
        assert wait_state(server, saga_id)["state"] == expected
    for saga_id, expected in started.items():
        by_worker = both_workers_answer(server, f"/webhooks/status/{saga_id}")
        assert {body["state"] for body in by_worker.values()} == {expected}
        assert len({json.dumps(b, sort_keys=True) for b in by_worker.values()}) == 1


def test_correlation_id_is_consistent_across_request_response_and_storage(
    server: GunicornServer,
) -> None:
    cid = f"trace-{uuid.uuid4().hex}"
    status, headers, body = post_order(server, **{CORRELATION_ID_HEADER: cid})
    assert status == 202
    assert headers[CID] == cid
    assert body["correlation_id"] == cid
    saga_id = body["saga_ids"][0]
    assert wait_state(server, saga_id)["correlation_id"] == cid
    by_worker = both_workers_answer(server, f"/webhooks/order_created/status/{cid}")
    for answer in by_worker.values():
        assert answer["correlation_id"] == cid
        assert answer["saga_ids"] == [saga_id]
        assert answer["status"] == "completed"
    # Stored: read the SQLite file directly.
    with sqlite3.connect(server.db) as db:  # type: ignore[attr-defined]
        row = db.execute(
            "SELECT correlation_id, status FROM sagaz_sagas WHERE saga_id = ?", (saga_id,)
        ).fetchone()
    assert row == (cid, "COMPLETED")
    # Without a header a new id is generated, echoed and stored the same way.
    status, headers, body = post_order(server)
    assert headers[CID] == body["correlation_id"]
    assert wait_state(server, body["saga_ids"][0])["correlation_id"] == headers[CID]


def test_duplicate_post_returns_the_existing_saga(server: GunicornServer) -> None:
    order_id = f"DUP-{uuid.uuid4().hex[:8]}"
    _, _, first = post_order(server, order_id)
    results = [post_order(server, order_id) for _ in range(6)]  # reaches both workers
    for status, _, body in results:
        assert status == 202
        assert body["saga_ids"] == first["saga_ids"]
        assert body["duplicate"] is True


# -- bad input: a JSON 4xx, never a 500 ----------------------------------------------------


def assert_json_error(result: tuple[int, dict[str, str], Any], status: int, code: str) -> None:
    got_status, headers, body = result
    assert got_status == status, body
    assert headers["content-type"].startswith("application/json")
    assert body["error"] == code
    assert body["correlation_id"] == headers[CID]


def test_bad_input_over_http(server: GunicornServer) -> None:
    port = server.port
    json_type = {"Content-Type": "application/json"}
    assert_json_error(
        http_call(port, "POST", "/webhooks/order_created", b"{oops", json_type), 400, "invalid_json"
    )
    missing = http_call(port, "POST", "/webhooks/order_created", {"amount": 1})
    assert_json_error(missing, 400, "missing_field")
    assert "order_id" in missing[2]["detail"]
    assert_json_error(http_call(port, "POST", "/webhooks/nope", {}), 404, "unknown_source")
    assert_json_error(
        http_call(port, "POST", "/webhooks/order_created", b"a=1", {"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    big = b'{"order_id": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    assert_json_error(
        http_call(port, "POST", "/webhooks/order_created", big, json_type), 413, "payload_too_large"
    )
    assert_json_error(http_call(port, "GET", "/webhooks/order_created"), 405, "method_not_allowed")
    assert_json_error(http_call(port, "GET", "/webhooks/x/y/z/w"), 404, "not_found")
    assert_json_error(http_call(port, "GET", "/webhooks/status/unknown-id"), 404, "not_found")
    status, _, body = http_call(port, "GET", "/webhooks/order_created/status/never")
    assert status == 404
    assert body["error"] == "not_found"
    assert body["correlation_id"] == "never"  # the id asked about


def test_oversized_chunked_body_is_413(server: GunicornServer) -> None:
    import http.client

    def chunks() -> Iterator[bytes]:
        # 1 MiB + 64 KiB: over the limit, yet small enough to be sent whole before the
        # server answers 413 (a client that stops reading on an error is another story).
        yield b'{"order_id": "'
        for _ in range(17):
            yield b"y" * 65536
        yield b'"}'

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(
            "POST",
            "/webhooks/order_created",
            body=chunks(),
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 413
    assert body["error"] == "payload_too_large"


def test_signed_source_over_http(server: GunicornServer) -> None:
    payload = json.dumps({"order_id": f"SIG-{uuid.uuid4().hex[:8]}", "amount": 5}).encode()
    headers = {"Content-Type": "application/json"}
    assert_json_error(
        http_call(server.port, "POST", "/webhooks/order_signed", payload, headers),
        401,
        "missing_signature",
    )
    bad = {**headers, **signature_headers(payload, "wrong")}
    assert_json_error(
        http_call(server.port, "POST", "/webhooks/order_signed", payload, bad),
        401,
        "invalid_signature",
    )
    good = {**headers, **signature_headers(payload, SIGNING_SECRET)}
    status, _, body = http_call(server.port, "POST", "/webhooks/order_signed", payload, good)
    assert status == 202
    assert wait_state(server, body["saga_ids"][0])["state"] == "COMPLETED"


def test_a_failing_app_route_still_echoes_the_correlation_id(server: GunicornServer) -> None:
    status, headers, _ = http_call(
        server.port, "GET", "/_test/boom", headers={CORRELATION_ID_HEADER: "boom-1"}
    )
    assert status == 500
    assert headers[CID] == "boom-1"


# -- bounded stress ------------------------------------------------------------------------


def test_100_concurrent_requests(server: GunicornServer) -> None:
    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(lambda i: post_order(server, amount=1 + i % 7), range(100)))
    assert [status for status, _, _ in results] == [202] * 100
    pids = {headers["x-worker-pid"] for _, headers, _ in results}
    assert len(pids) == 2
    ids = [body["saga_ids"][0] for _, _, body in results]
    assert len(set(ids)) == 100
    for saga_id in ids:
        assert wait_state(server, saga_id)["state"] == "COMPLETED"


def _db_fds(server: GunicornServer) -> dict[int, list[str]]:
    name = Path(server.db).name  # type: ignore[attr-defined]
    return {pid: open_fds(pid, name) for pid in server.worker_pids()}


def _connections(server: GunicornServer) -> Any:
    """SQLite: each worker's descriptors of the database files; PostgreSQL: the number
    of the server's sessions (each worker's pool has a fixed size)."""
    pg: PostgresSchema | None = server.pg  # type: ignore[attr-defined]
    if pg is not None:
        return pg.connections()
    return _db_fds(server)


def _fd_count(pid: int) -> int:
    import os

    return len(os.listdir(f"/proc/{pid}/fd"))


def test_1000_requests_leak_no_connection(any_server: GunicornServer) -> None:
    server = any_server
    both_workers_answer(server, "/webhooks/health")  # both have opened the database
    before = _connections(server)
    if server.pg is None:  # type: ignore[attr-defined]
        assert len(before) == 2
        assert all(before.values()), before
    else:
        assert before == 2 * server.pg.pool  # type: ignore[attr-defined]
    totals = {pid: _fd_count(pid) for pid in server.worker_pids()}

    def one(i: int) -> int:
        if i % 2:
            status, _, _ = http_call(server.port, "GET", "/webhooks/health")
        else:
            status, _, _ = post_order(server, amount=1 + i % 5)
        return status

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(1000)))
    assert statuses.count(202) == 500
    assert statuses.count(200) == 500
    # Let the started sagas finish before counting again.
    wait_for(lambda: unfinished(server) == 0, timeout=60, interval=0.1)
    after = _connections(server)
    assert after == before
    for pid, total in totals.items():
        assert _fd_count(pid) <= total + 2, (pid, total)


def test_graceful_stop_finishes_started_sagas(tmp_path: Path) -> None:
    require_sqlite()
    db = tmp_path / "stop.db"
    srv = GunicornServer(f"sqlite:///{db}", tmp_path / "gunicorn.log")
    try:
        ids = []
        for i in range(40):
            # Slow sagas (1 s in the shipping step) are still running when the stop begins.
            status, _, body = http_call(
                srv.port,
                "POST",
                "/webhooks/order_created",
                {"order_id": f"STOP-{i}", "amount": 5 if i % 3 else 5000, "ship_delay": 1},
            )
            assert status == 202
            ids.append(body["saga_ids"][0])
        with sqlite3.connect(db) as conn:
            (running,) = conn.execute(
                "SELECT COUNT(*) FROM sagaz_sagas WHERE status IN ('PENDING', 'RUNNING')"
            ).fetchone()
        assert running > 0
    finally:
        code = srv.stop()
    assert code == 0, srv.log()[-3000:]
    assert "Traceback" not in srv.log(), srv.log()[-6000:]
    with sqlite3.connect(db) as conn:
        states = dict(
            conn.execute(
                f"SELECT saga_id, status FROM sagaz_sagas WHERE saga_id IN ({','.join('?' * 40)})",
                ids,
            ).fetchall()
        )
    assert len(states) == 40
    # Each saga ended as its order says: none was cut short by the stop.
    expected = {saga_id: "COMPLETED" if i % 3 else "COMPENSATED" for i, saga_id in enumerate(ids)}
    assert states == expected


def test_cold_workers_under_load(tmp_path: Path) -> None:
    """Both workers open the database while the other writes; slow steps span the stop."""
    require_sqlite()
    for round_ in range(2):
        db = tmp_path / f"cold-{round_}.db"
        srv = GunicornServer(f"sqlite:///{db}", tmp_path / f"cold-{round_}.log", warm=False)
        post = functools.partial(http_call, srv.port, "POST", "/webhooks/order_created")
        try:
            with ThreadPoolExecutor(8) as pool:
                orders = [
                    {"order_id": f"COLD-{i}", "amount": 5, "ship_delay": 0.5} for i in range(40)
                ]
                results = list(pool.map(post, orders))
            assert [status for status, _, _ in results] == [202] * 40
        finally:
            code = srv.stop()
        assert code == 0
        assert "Traceback" not in srv.log(), srv.log()[-4000:]
        with sqlite3.connect(db) as conn:
            states = {s for (s,) in conn.execute("SELECT status FROM sagaz_sagas")}
        assert states == {"COMPLETED"}


def test_stop_without_the_worker_exit_hook_never_compensates_for_nothing(tmp_path: Path) -> None:
    """Without the hook the extension's own exit hook finishes sagas (Python 3.11, 3.13)
    or, where the exiting interpreter can start no thread (3.12), cancels them: they
    stay RUNNING for recovery instead of failing their thread-run step."""
    require_sqlite()
    db = tmp_path / "nohook.db"
    srv = GunicornServer(f"sqlite:///{db}", tmp_path / "nohook.log", exit_hook=False)
    try:
        for i in range(10):
            status, _, _ = http_call(
                srv.port,
                "POST",
                "/webhooks/order_created",
                {"order_id": f"NOHOOK-{i}", "amount": 5, "ship_delay": 0.5},
            )
            assert status == 202
    finally:
        code = srv.stop()
    assert code == 0, srv.log()[-3000:]
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT status, error FROM sagaz_sagas").fetchall()
    assert len(rows) == 10
    assert {status for status, _ in rows} <= {"COMPLETED", "RUNNING"}, rows
    if sys.version_info[:2] != (3, 12):
        assert {status for status, _ in rows} == {"COMPLETED"}, rows
