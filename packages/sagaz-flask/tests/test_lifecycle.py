"""Start/stop cycles leave nothing behind: threads, open storage, database handles."""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path

from sagaz_flask_example import OrderSaga, create_app
from sagaz_flask_helpers import open_fds, sagaz_of, wait_terminal

from sagaz.core import SagaStatus


def _threads() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.ident is not None}


def _settled(baseline: set[int]) -> bool:
    """True once only the baseline threads are alive (a closed thread may take a moment)."""
    deadline = time.monotonic() + 10
    while _threads() != baseline and time.monotonic() < deadline:
        time.sleep(0.01)
    return _threads() == baseline


def test_ten_start_stop_cycles_leave_nothing_behind(sqlite_url: str, tmp_path: Path) -> None:
    db_name = Path(sqlite_url.removeprefix("sqlite:///")).name
    gc.collect()
    baseline_threads = _threads()
    baseline_fds = len(os.listdir("/proc/self/fd"))
    saga_ids: list[str] = []
    for cycle in range(10):
        app = create_app(sqlite_url)
        sagaz = sagaz_of(app)
        client = app.test_client()
        for i in range(5):
            body = client.post(
                "/webhooks/order_created",
                json={"order_id": f"CYCLE-{cycle}-{i}", "amount": 5000 if i == 4 else 5},
            ).get_json()
            saga_ids.append(body["saga_ids"][0])
        assert client.get("/health").status_code == 200
        with app.app_context():
            saga = sagaz.create_saga(OrderSaga)
            result = sagaz.run_sync(saga, {"order_id": f"SYNC-{cycle}", "amount": 1})
            assert result.status is SagaStatus.COMPLETED
        storage = sagaz.state(app).config.storage
        assert storage.is_open
        assert open_fds(os.getpid(), db_name)
        sagaz.close(app)
        # Nothing left: storage closed, no handle on the database, no extra thread.
        assert not storage.is_open
        assert open_fds(os.getpid(), db_name) == []
        assert _settled(baseline_threads), threading.enumerate()
        del app, sagaz, client, storage, saga
        gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= baseline_fds + 2
    # Every saga of every cycle finished before its app stopped (read back by a new app).
    app = create_app(sqlite_url)
    client = app.test_client()
    for saga_id in saga_ids:
        assert wait_terminal(client, saga_id, timeout=0.5)["state"] in {
            "COMPLETED",
            "COMPENSATED",
        }
    sagaz_of(app).close(app)
    assert _settled(baseline_threads), threading.enumerate()
