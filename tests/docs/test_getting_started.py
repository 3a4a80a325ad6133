"""The code blocks of the getting-started and testing pages run: the pages cannot drift.

Each page's ``<!-- file: -->`` blocks are saved into a temporary project; a checker script
(below) then drives the application as the page says (FastAPI's TestClient, Flask's test
client, Django's test client on a database migrated from the shown settings), and the
test files the page shows are run with pytest. Shell and output blocks are skipped
explicitly, each reported with its reason.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from docs_support import DOCS, EXECUTED, SKIPPED, Block, blocks, run_python, write_files

PAGES = [
    "getting-started/fastapi.md",
    "getting-started/django.md",
    "getting-started/flask.md",
    "testing.md",
]
ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]

_POLL = """
import time

def poll(get, saga_id, states=("COMPLETED", "COMPENSATED", "FAILED")):
    deadline = time.monotonic() + 20
    while True:
        body = get(saga_id)
        if body.get("state") in states or time.monotonic() > deadline:
            return body
        time.sleep(0.05)
"""

CHECKERS = {
    "getting-started/fastapi.md": _POLL
    + """
from fastapi.testclient import TestClient
import main

with TestClient(main.app) as client:
    get = lambda saga_id: client.get(f"/webhooks/status/{saga_id}").json()
    answer = client.post("/webhooks/order_created", json={"order_id": "A1", "amount": 40},
                         headers={"X-Correlation-ID": "demo-1"})
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["status"] == "accepted" and body["correlation_id"] == "demo-1", body
    assert body["message"] == "Event queued for processing" and not body["duplicate"], body
    assert answer.headers["X-Correlation-ID"] == "demo-1"
    assert poll(get, body["saga_ids"][0])["state"] == "COMPLETED"
    again = client.post("/webhooks/order_created", json={"order_id": "A1", "amount": 40}).json()
    assert again["duplicate"] and again["saga_ids"] == body["saga_ids"], again
    event = client.get("/webhooks/order_created/status/demo-1").json()
    assert event["status"] == "completed", event
    declined = client.post("/orders", json={"order_id": "B2", "amount": 500})
    assert declined.status_code == 202, declined.text
    assert poll(get, declined.json()["saga_id"])["state"] == "COMPENSATED"
print("fastapi page ok")
""",
    "getting-started/flask.md": _POLL
    + """
from app import app

client = app.test_client()
get = lambda saga_id: client.get(f"/webhooks/status/{saga_id}").get_json()
assert client.get("/health").status_code == 200
answer = client.post("/webhooks/order_created", json={"order_id": "A1", "amount": 40},
                     headers={"X-Correlation-ID": "demo-1"})
assert answer.status_code == 202, answer.get_data(as_text=True)
body = answer.get_json()
assert body["status"] == "accepted" and body["correlation_id"] == "demo-1", body
assert answer.headers["X-Correlation-ID"] == "demo-1"
assert poll(get, body["saga_ids"][0])["state"] == "COMPLETED"
again = client.post("/webhooks/order_created", json={"order_id": "A1", "amount": 40}).get_json()
assert again["duplicate"] and again["saga_ids"] == body["saga_ids"], again
declined = client.post("/orders", json={"order_id": "B2", "amount": 500})
assert declined.status_code == 200, declined.get_data(as_text=True)
assert declined.get_json()["state"] == "COMPENSATED", declined.get_json()
bad = client.post("/webhooks/order_created", json={"amount": 1})
assert bad.status_code == 400 and bad.get_json()["error"] == "missing_field", bad.get_json()
print("flask page ok")
""",
    "getting-started/django.md": _POLL
    + """
import django
from django.core.management import call_command

django.setup()
call_command("migrate", verbosity=0)
from django.test import Client

client = Client()
get = lambda saga_id: client.get(f"/sagaz/status/{saga_id}").json()
answer = client.post("/sagaz/order_created", {"order_id": "A1", "amount": 40},
                     content_type="application/json", headers={"X-Correlation-ID": "demo-1"})
assert answer.status_code == 202, answer.content
body = answer.json()
assert body["status"] == "accepted" and body["correlation_id"] == "demo-1", body
assert answer.headers["X-Correlation-ID"] == "demo-1"
assert poll(get, body["saga_ids"][0])["state"] == "COMPLETED"
declined = client.post("/orders/", {"order_id": "B2", "amount": 500},
                       content_type="application/json")
assert declined.status_code == 202, declined.content
assert poll(get, declined.json()["saga_id"])["state"] == "COMPENSATED"
print("django page ok")
""",
}

ENV = {"getting-started/django.md": {"DJANGO_SETTINGS_MODULE": "settings"}}


@pytest.mark.parametrize("page", PAGES)
def test_every_block_is_run_or_explicitly_skipped(page: str) -> None:
    page_blocks = blocks(page)
    assert page_blocks, f"docs/{page} has no code blocks"
    unknown = [b.id for b in page_blocks if b.lang not in EXECUTED and b.lang not in SKIPPED]
    assert not unknown, (
        f"blocks that are neither run nor marked as shell/output: {unknown}; use ```python "
        f"(run) or one of {sorted(SKIPPED)} (shown only)"
    )
    # A python block is a file the reader saves; the page test runs it.
    unsaved = [b.id for b in page_blocks if (b.lang == "python") != (b.file is not None)]
    assert not unsaved, f"mark each python block (and only those) <!-- file: NAME -->: {unsaved}"


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang in SKIPPED], ids=lambda b: b.id)
def test_shell_and_output_blocks(block: Block) -> None:
    pytest.skip(f"docs/{block.id}: {SKIPPED[block.lang]}")


@pytest.mark.parametrize("page", PAGES)
def test_the_page_application_works_as_shown(page: str, tmp_path: Path) -> None:
    files = write_files(page, tmp_path)
    tests = [f.name for f in files if f.name.startswith("test_")]
    assert tests, f"docs/{page} shows no test file"
    # One process per page: the checker drives the application, then the page's own test
    # files run with pytest (the reader's `pytest test_x.py`).
    script = textwrap.dedent(CHECKERS.get(page, "")) + textwrap.dedent(f"""
        import sys
        import pytest

        sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-p", "pytest_asyncio.plugin",
                              *{tests!r}]))
        """)
    (tmp_path / "check_page.py").write_text(script)
    proc = run_python(["check_page.py"], tmp_path, ENV.get(page))
    if page in CHECKERS:
        assert "page ok" in proc.stdout, proc.stdout
    assert " passed" in proc.stdout, proc.stdout  # and pytest exited 0 (run_python checks)


def _code_lines(page: str, file: str) -> int:
    [block] = [b for b in blocks(page) if b.file == file]
    return len([line for line in block.body.splitlines() if line.strip()])


def test_the_fastapi_quickstart_is_under_25_lines() -> None:
    page = "getting-started/fastapi.md"
    lines = _code_lines(page, "main.py")
    assert lines < 25, f"docs/{page}: main.py has {lines} lines of code"
    claimed = re.search(r"\((\d+) lines of code\)", (DOCS / page).read_text())
    assert claimed is not None, f"docs/{page} does not say how many lines main.py has"
    assert int(claimed[1]) == lines, "the heading's line count is stale"


def test_the_django_page_needs_fewer_than_10_settings() -> None:
    [block] = [b for b in blocks("getting-started/django.md") if b.file == "settings.py"]
    settings = re.findall(r"^([A-Z][A-Z0-9_]*)\s*=", block.body, re.MULTILINE)
    assert len(settings) < 10, f"settings.py sets {len(settings)} settings: {settings}"
