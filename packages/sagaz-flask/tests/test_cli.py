"""``flask sagaz list|show|diagram``: the sagaz CLI on the app's configured storage."""

from __future__ import annotations

import json
from typing import Any

from flask import Flask
from sagaz_flask_example import create_app
from sagaz_flask_helpers import sagaz_of, wait_terminal

from sagaz.core import InMemorySagaStorage
from sagaz.integrations.flask import SagaFlask


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
