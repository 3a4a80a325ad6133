"""Database faults: a PRIVATE PostgreSQL (initdb in a temp folder, its own port) is
restarted in the middle of a load, and its connections are killed with
pg_terminate_backend, while a FastAPI app behind uvicorn (sagas run in process) and two
``sagaz worker`` processes use it.

Requests during the outage get a 503 with a JSON body within a bounded time (never a hang
or a 500); the app and the workers reconnect on their own; every order the clients sent
ends as exactly one COMPLETED saga (a client re-sends an order that got a 503, with the same
idempotency key), none stuck. The shared server on 5432 is never touched.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sagaz_reliability_support import (
    PrivatePostgres,
    Server,
    Worker,
    child_env,
    free_port,
    pg_database,
    postgres_bindir,
    record,
    scaled,
    skip_or_fail,
    wait_until,
)

from sagaz.core import SagaConfig, SagaQuery, SagaStatus

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

UNFINISHED = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)
#: A request still unanswered after this long counts as a hang.
HANG_SECONDS = 20.0


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of this module's own, stopped and removed at the end."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        skip_or_fail("psycopg is not installed: pip install sagaz-core[postgres]")
    if postgres_bindir() is None:
        skip_or_fail("initdb/pg_ctl not found (install postgresql) for a private server")
    server = None
    try:
        server = PrivatePostgres()
        server.start()
    except Exception as exc:
        if server is not None:
            server.teardown()
        skip_or_fail(f"cannot start a private PostgreSQL server: {exc}")
    assert server is not None
    try:
        yield server
    finally:
        server.teardown()


class Clients:
    """Threads posting new orders to the webhook until stopped; every answer recorded."""

    def __init__(self, port: int, threads: int) -> None:
        self.port = port
        self.answers: list[tuple[str, int, float, float, Any]] = []  # order, status, sent, took
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._n = 0
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(HANG_SECONDS + 10)

    def _next(self) -> str:
        with self._lock:
            self._n += 1
            return f"db-{self._n}"

    def _run(self) -> None:
        while not self._stop.is_set():
            order = self._next()
            sent = time.monotonic()
            status, body, took = post_order(self.port, order)
            with self._lock:
                if status == 0:
                    self.errors.append(f"{order}: {body}")
                self.answers.append((order, status, sent, took, body))
            if status != 202:
                time.sleep(0.05)


def post_order(port: int, order: str) -> tuple[int, Any, float]:
    """POST one order; (status, parsed JSON body or error text, seconds). 0: no answer."""
    began = time.monotonic()
    body = json.dumps({"order_id": order, "sleep": 0.02}).encode()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HANG_SECONDS)
        conn.request("POST", "/webhooks/rel_order", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        raw = response.read()
        conn.close()
    except OSError as exc:
        return 0, f"{type(exc).__name__}: {exc}", time.monotonic() - began
    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        parsed = f"not JSON: {raw[:200]!r}"
    return response.status, parsed, time.monotonic() - began


async def _unfinished(url: str) -> int:
    config = SagaConfig(storage_url=url)
    try:
        await config.storage.ensure_open()
        return len(await config.storage.list_sagas(SagaQuery(status=UNFINISHED, limit=100_000)))
    finally:
        await config.storage.close()


async def _stuck(url: str) -> str:
    """The unfinished sagas: id, status, lease owner and seconds left on the lease."""
    config = SagaConfig(storage_url=url)
    try:
        await config.storage.ensure_open()
        left = await config.storage.list_sagas(SagaQuery(status=UNFINISHED, limit=20))
    finally:
        await config.storage.close()
    now = time.time()
    return "\n".join(
        f"{r.saga_id} {r.status.value} steps={r.completed_steps} owner={r.lease_owner} "
        f"lease_left={None if r.lease_expires_at is None else round(r.lease_expires_at - now, 1)}"
        f" recoveries={r.recoveries} history={[h.kind.value for h in r.history][-4:]}"
        for r in left
    )


async def _final(url: str) -> dict[str, list[tuple[str, SagaStatus]]]:
    """order_id -> [(saga_id, status)] of every rel-order saga stored."""
    config = SagaConfig(storage_url=url)
    try:
        await config.storage.ensure_open()
        records = await config.storage.list_sagas(SagaQuery(saga_name="rel-order", limit=1_000_000))
    finally:
        await config.storage.close()
    by_order: dict[str, list[tuple[str, SagaStatus]]] = {}
    for rec in records:
        by_order.setdefault(rec.context["order_id"], []).append((rec.saga_id, rec.status))
    return by_order


def test_restart_and_killed_connections_lose_nothing_and_answer_503_json(
    private_pg: PrivatePostgres, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    with pg_database("sagaz_rel_dbfault", private_pg.admin_url) as (dbname, url):
        asyncio.run(_unfinished(url))  # migrate
        # A request waits at most pool_timeout for a connection: the outage outlasts it.
        storage_url = f"{url}?pool_max=6&pool_timeout=2"
        port = free_port()
        server = Server(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "sagaz_reliability_fastapi_app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            port=port,
            cwd=tmp_path,
            env=child_env(log, SAGAZ_STORAGE_URL=storage_url, SAGAZ_LEASE_SECONDS="2"),
            log=tmp_path / "uvicorn.log",
            health="/webhooks/health",
        )
        workers: list[Worker] = []
        clients = Clients(port, threads=8)
        terminated = 0
        try:
            server.wait_ready()
            workers = [
                Worker(storage_url, tmp_path, log, name=f"w{i}", lease_seconds=2, concurrency=10)
                for i in range(2)
            ]
            clients.start()
            time.sleep(scaled(3, 1))
            for _ in range(3):  # killed connections: app's, workers', all of them
                terminated += private_pg.terminate_backends(dbname)
                time.sleep(1.0)
            private_pg.stop("fast")
            outage_began = time.monotonic()
            time.sleep(5.0)
            private_pg.start()
            outage_ended = time.monotonic()
            time.sleep(scaled(4, 2))
            clients.stop()
            for w in workers:
                assert w.alive(), f"a worker died on the database faults\n{w.output()}"
            assert server.proc.poll() is None, f"uvicorn died\n{server.output()}"

            answers = clients.answers
            statuses = Counter(status for _, status, _, _, _ in answers)
            in_outage = [a for a in answers if a[2] <= outage_ended and a[2] + a[3] >= outage_began]
            unavailable = [a for a in answers if a[1] == 503]
            after = [a for a in answers if a[2] > outage_ended + 2]
            # Every order that got no 202 is sent again now: same idempotency key.
            retried = 0
            for order, status, _, _, _ in answers:
                if status != 202:
                    retried += 1
                    again = wait_until(
                        lambda o=order: (r := post_order(port, o))[0] == 202 and r,
                        timeout=30,
                        what=f"order {order} to be accepted after the outage",
                        interval=0.2,
                    )
                    assert again[0] == 202
            waited = 0.0
            began = time.monotonic()
            while asyncio.run(_unfinished(url)):
                if time.monotonic() - began > 60:
                    pytest.fail(
                        "sagas stuck 60 s after the faults:\n"
                        + asyncio.run(_stuck(url))
                        + "\n"
                        + server.output()
                        + "\n".join(w.output() for w in workers)
                    )
                time.sleep(0.5)
            waited = time.monotonic() - began
            by_order = asyncio.run(_final(url))
        finally:
            clients.stop()
            for w in workers:
                w.kill()
            server.stop()
        worker_logs = "\n".join(w.output() for w in workers)

    orders = {a[0] for a in answers}
    missing = sorted(orders - set(by_order))
    doubled = {o: s for o, s in by_order.items() if len(s) != 1}
    not_done = {o: s for o, s in by_order.items() if s[0][1] is not SagaStatus.COMPLETED}
    bad_503 = [
        a
        for a in unavailable
        if not isinstance(a[4], dict) or a[4].get("error") != "storage_unavailable"
    ]
    longest = max((a[3] for a in answers), default=0.0)
    record(
        "db faults: uvicorn+FastAPI, 2 workers, private PG",
        requests=len(answers),
        statuses=dict(statuses),
        http_503_during_outage=len(unavailable),
        terminated_connections=terminated,
        restarts=1,
        longest_answer_s=round(longest, 2),
        resent_orders=retried,
        sagas=len(by_order),
        finished_after_s=round(waited, 1),
        lost=len(missing) + len(not_done),
    )
    assert not clients.errors, f"requests with no answer: {clients.errors[:5]}\n{server.output()}"
    assert set(statuses) <= {202, 503}, f"{statuses}: only 202 or 503 expected\n{server.output()}"
    assert not bad_503, f"503 answers without the JSON error body: {bad_503[:3]}"
    assert in_outage, "no request was sent during the outage"
    assert 503 in {a[1] for a in in_outage}, "no request during the outage got a 503"
    assert longest < HANG_SECONDS
    assert any(a[1] == 202 for a in after), "the app did not reconnect after the restart"
    assert not missing, f"orders with no saga: {missing[:10]}"
    assert not doubled, f"orders with more than one saga: {list(doubled.items())[:5]}"
    assert not not_done, f"sagas not COMPLETED: {list(not_done.items())[:5]}\n{worker_logs}"
