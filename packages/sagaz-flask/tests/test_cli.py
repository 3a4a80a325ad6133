"""``flask sagaz list|show|diagram|worker``: the sagaz CLI on the app's configured storage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sagaz_flask_example import OrderSaga, create_app
from sagaz_flask_helpers import sagaz_of, wait_for, wait_terminal

from sagaz.core import InMemorySagaStorage
from sagaz.core import cli as core_cli
from sagaz.integrations.flask import SagaFlask

TESTS = Path(__file__).resolve().parent
TERMINAL = {"COMPLETED", "COMPENSATED", "FAILED"}


def _started(app: Flask, amounts: tuple[float, ...]) -> list[str]:
    client = app.test_client()
    ids = []
    for i, amount in enumerate(amounts):
        body = client.post(
            "/webhooks/order_created", json={"order_id": f"CLI-{i}", "amount": amount}
        ).get_json()
        ids.append(body["saga_ids"][0])
    for saga_id in ids:
        wait_terminal(client, saga_id)
    return ids


def test_list_show_and_diagram_use_the_app_storage(sqlite_url: str) -> None:
    app = create_app(sqlite_url)
    try:
        ok, declined = _started(app, (10, 5000))
        runner = app.test_cli_runner()

        listed = runner.invoke(args=["sagaz", "list"])
        assert listed.exit_code == 0, listed.output
        assert ok in listed.output
        assert declined in listed.output
        assert "COMPENSATED" in listed.output

        as_json = runner.invoke(args=["sagaz", "list", "--json", "--status", "COMPLETED"])
        assert as_json.exit_code == 0, as_json.output
        rows = [json.loads(line) for line in as_json.output.splitlines()]
        assert [r["saga_id"] for r in rows] == [ok]

        shown = runner.invoke(args=["sagaz", "show", declined])
        assert shown.exit_code == 0, shown.output
        assert f"saga {declined}" in shown.output
        assert "PaymentDeclinedError" in shown.output

        missing = runner.invoke(args=["sagaz", "show", "nope"])
        assert missing.exit_code != 0
        assert "no saga 'nope'" in missing.output

        diagram = runner.invoke(
            args=["sagaz", "diagram", "sagaz_flask_example:OrderSaga", "--saga-id", ok]
        )
        assert diagram.exit_code == 0, diagram.output
        assert diagram.output.startswith("flowchart TD")
        assert "classDef completed" in diagram.output

        helped = runner.invoke(args=["sagaz", "list", "--help"])
        assert helped.exit_code == 0
        assert "Usage: flask sagaz list" in helped.output
        group = runner.invoke(args=["sagaz", "--help"])
        for name in ("list", "show", "diagram"):
            assert name in group.output
    finally:
        sagaz_of(app).close(app)


def test_memory_storage_gets_a_note() -> None:
    app = create_app("memory://")
    result = app.test_cli_runner().invoke(args=["sagaz", "list"])
    assert result.exit_code == 0, result.output
    assert "memory://" in result.output
    assert "no sagas recorded" in result.output


def test_storage_instance_cannot_be_inspected() -> None:
    app = Flask("instance")
    SagaFlask(app, storage=InMemorySagaStorage())
    result: Any = app.test_cli_runner().invoke(args=["sagaz", "list"])
    assert result.exit_code != 0
    assert "SAGAZ_STORAGE_URL" in result.output


def test_app_without_sagaz() -> None:
    from sagaz.integrations.flask.cli import sagaz_command

    app = Flask("bare")
    app.cli.add_command(sagaz_command)
    result = app.test_cli_runner().invoke(args=["sagaz", "list"])
    assert result.exit_code != 0
    assert "not initialised" in result.output


# -- flask sagaz worker ----------------------------------------------------------------------


def _flask_cli(app_spec: str) -> tuple[list[str], dict[str, str]]:
    """The command line (and environment) of ``flask --app APP`` for this Flask version
    (``--app`` is Flask >= 2.2; older ones read FLASK_APP)."""
    major, minor = (int(part) for part in version("flask").split(".")[:2])
    if (major, minor) >= (2, 2):
        return [sys.executable, "-m", "flask", "--app", app_spec], {}
    return [sys.executable, "-m", "flask"], {"FLASK_APP": app_spec}


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_worker_runs_pending_sagas_then_stops_cleanly(
    make_app: Callable[..., Flask], sqlite_url: str, tmp_path: Path, stop_signal: int
) -> None:
    # An app that leaves started sagas PENDING for a worker records three of them.
    app = make_app(sqlite_url, run_in_process=False)
    sagaz = sagaz_of(app)
    amounts = {"WRK-1": 10, "WRK-2": 5000, "WRK-3": 20}
    with app.app_context():
        ids = {
            sagaz.start_saga(OrderSaga, {"order_id": order_id, "amount": amount}): order_id
            for order_id, amount in amounts.items()
        }
    client = app.test_client()
    for saga_id in ids:
        assert client.get(f"/webhooks/status/{saga_id}").get_json()["state"] == "PENDING"

    command, env = _flask_cli("sagaz_flask_example:create_app")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("SAGAZ_", "FLASK_"))}
    environment.update(env, SAGAZ_STORAGE_URL=sqlite_url, PYTHONUNBUFFERED="1")
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [*command, "sagaz", "worker", "--poll-interval", "0.05", "--concurrency", "2"],
            cwd=TESTS,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        states = wait_for(
            lambda: (
                (worker.poll() is None or pytest.fail(f"the worker exited:\n{log.read_text()}"))
                and _all_terminal(client, ids)
            ),
            timeout=60,
        )
        assert {ids[s]: state for s, state in states.items()} == {
            "WRK-1": "COMPLETED",
            "WRK-2": "COMPENSATED",
            "WRK-3": "COMPLETED",
        }
        worker.send_signal(stop_signal)
        code = worker.wait(30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    output = log.read_text()
    assert code == 0, output
    assert "sagas flask-example-order" in output  # the app's registered saga
    assert "claimed=3, completed=2, compensated=1, failed=0" in output
    assert "Traceback" not in output, output
    # The worker ran them, not this process (its app runs nothing in process).
    status = client.get(f"/webhooks/status/{next(iter(ids))}").get_json()
    assert status["completed_steps"] == ["reserve_inventory", "charge_payment", "ship_order"]


def _all_terminal(client: Any, ids: dict[str, str]) -> dict[str, str] | None:
    states = {s: client.get(f"/webhooks/status/{s}").get_json()["state"] for s in ids}
    return states if all(state in TERMINAL for state in states.values()) else None


def test_worker_command_has_the_sagaz_worker_options() -> None:
    app = create_app("memory://")
    try:
        runner = app.test_cli_runner()
        helped = runner.invoke(args=["sagaz", "worker", "--help"])
        assert helped.exit_code == 0, helped.output
        assert "sagaz worker [OPTIONS]" in helped.output
        for option in core_cli.main.commands["worker"].params:
            assert option.opts[0] in helped.output
        assert "worker" in runner.invoke(args=["sagaz", "--help"]).output
        bad = runner.invoke(args=["sagaz", "worker", "--concurrency", "0"])
        assert bad.exit_code == 2
        assert "--concurrency" in bad.output
        missing = runner.invoke(args=["sagaz", "worker", "--module", "no_such_saga_module"])
        assert missing.exit_code == 1
        assert "cannot import saga module" in missing.output
        assert "memory://" in missing.output  # the note: a worker cannot see this app's sagas
    finally:
        sagaz_of(app).close(app)


def test_worker_needs_sagaz_on_the_app() -> None:
    from sagaz.integrations.flask.cli import sagaz_command

    app = Flask("bare")
    app.cli.add_command(sagaz_command)
    result = app.test_cli_runner().invoke(args=["sagaz", "worker"])
    assert result.exit_code != 0
    assert "not initialised" in result.output
