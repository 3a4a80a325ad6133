"""The README's quickstart is real: under 25 lines, and it serves what it promises."""

from __future__ import annotations

import re
from pathlib import Path

from sagaz_fastapi_support import TERMINAL, ServerFactory, wait_until

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart() -> str:
    text = README.read_text()
    section = text.split("## Quickstart", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the Quickstart section has no python code block"
    return match.group(1)


def test_the_quickstart_is_under_25_lines() -> None:
    lines = quickstart().splitlines()
    assert len(lines) < 25, f"the quickstart has {len(lines)} lines"


def test_the_quickstart_runs(start_server: ServerFactory, tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text(quickstart())
    # As the README says: `uvicorn main:app`, from the folder of main.py.
    server = start_server(app="main:app", factory=False, app_dir=tmp_path, cwd=tmp_path)
    with server.client() as client:

        def state(saga_id: str) -> str | None:
            value: str = client.get(f"/webhooks/status/{saga_id}").json()["state"]
            return value if value in TERMINAL else None

        ok = client.post(
            "/webhooks/order_created",
            json={"order_id": "A1", "amount": 40},
            headers={"X-Correlation-ID": "demo-1"},
        )
        assert ok.status_code == 202, ok.text
        assert ok.json()["correlation_id"] == "demo-1"
        assert ok.headers["X-Correlation-ID"] == "demo-1"
        saga_id = ok.json()["saga_ids"][0]
        assert wait_until(lambda: state(saga_id)) == "COMPLETED"
        event = client.get("/webhooks/order_created/status/demo-1").json()
        assert event["status"] == "completed"

        declined = client.post("/orders", json={"order_id": "B2", "amount": 500})
        assert declined.status_code == 202
        saga_id = declined.json()["saga_id"]
        assert wait_until(lambda: state(saga_id)) == "COMPENSATED"
    assert (tmp_path / "orders.db").exists()
    wait_until(lambda: "released R-B2" in server.output(), timeout=5)
