"""The ``sagaz`` command line: through click's CliRunner, and once as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sagaz_core_test_sagas import (
    CrashForwardSaga,
    FragileUndoSaga,
    fast_config,
    read_log,
)

from sagaz.core import SagaStatus, __version__, start_saga, storage_from_url
from sagaz.core.cli import main

pytestmark = pytest.mark.usefixtures("isolated_config")

SAGA_ID = re.compile(r"saga ([0-9a-f-]{36}) (COMPLETED|COMPENSATED)")


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def demo_db(sqlite_url: str) -> tuple[str, dict[str, str]]:
    """A database holding the two demo sagas: (url, {status: saga_id})."""
    result = invoke("--storage-url", sqlite_url, "demo")
    assert result.exit_code == 0, result.output
    ids = {status: saga_id for saga_id, status in SAGA_ID.findall(result.output)}
    assert set(ids) == {"COMPLETED", "COMPENSATED"}
    return sqlite_url, ids


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"sagaz, version {__version__}"


def test_help_lists_the_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("list", "show", "diagram", "demo"):
        assert re.search(rf"^\s+{command}\b", result.output, re.M), command
    assert "SAGAZ_STORAGE_URL" in result.output


def test_demo_runs_one_completed_and_one_compensated_order(
    demo_db: tuple[str, dict[str, str]],
) -> None:
    url, ids = demo_db
    result = invoke("--storage-url", url, "list")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].split()[:3] == ["SAGA", "ID", "NAME"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == set(ids.values())
    completed, compensated = rows[ids["COMPLETED"]], rows[ids["COMPENSATED"]]
    assert completed[1:3] == ["demo-order", "COMPLETED"]
    assert completed[-1] == "3/3"
    assert compensated[1:3] == ["demo-order", "COMPENSATED"]


def test_list_filters_and_json(demo_db: tuple[str, dict[str, str]]) -> None:
    url, ids = demo_db
    result = invoke("--storage-url", url, "list", "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert {r["saga_id"]: r["state"] for r in rows} == {v: k for k, v in ids.items()}
    assert all("history" not in r for r in rows)

    only = invoke("--storage-url", url, "list", "--status", "compensated", "--json")
    assert [json.loads(line)["saga_id"] for line in only.output.splitlines()] == [
        ids["COMPENSATED"]
    ]
    named = invoke("--storage-url", url, "list", "--name", "no-such-saga")
    assert named.exit_code == 0
    assert named.output.strip() == "no sagas recorded"
    limited = invoke("--storage-url", url, "list", "--limit", "1", "--json")
    assert len(limited.output.splitlines()) == 1
    bad = CliRunner().invoke(main, ["--storage-url", url, "list", "--status", "DONE"])
    assert bad.exit_code == 2
    assert "DONE" in bad.output


def test_show_prints_the_history(demo_db: tuple[str, dict[str, str]]) -> None:
    url, ids = demo_db
    saga_id = ids["COMPENSATED"]
    result = invoke("--storage-url", url, "show", saga_id)
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.splitlines()[0] == f"saga {saga_id}  demo-order  COMPENSATED"
    assert "error: PaymentDeclinedError" in out
    assert "(failed step: charge_payment)" in out
    history = [line.split()[2:] for line in out.splitlines() if re.match(r"\s+\d+\s+\d{4}-", line)]
    kinds = [
        h[0] + (" " + h[1] if len(h) > 1 and not h[1].startswith("(") else "") for h in history
    ]
    assert kinds == [
        "saga_started",
        "step_started reserve_inventory",
        "step_completed reserve_inventory",
        "step_started charge_payment",
        "step_failed charge_payment",
        "step_started charge_payment",
        "step_failed charge_payment",
        "saga_compensating charge_payment",
        "compensation_started reserve_inventory",
        "compensation_completed reserve_inventory",
        "saga_compensated charge_payment",
    ]
    assert "step_failed charge_payment attempt 2  (PaymentDeclinedError" in out

    as_json = invoke("--storage-url", url, "show", saga_id, "--json")
    data = json.loads(as_json.output)
    assert data["saga_id"] == saga_id
    assert data["state"] == "COMPENSATED"
    assert data["compensated_steps"] == ["reserve_inventory"]
    assert len(data["history"]) == 11


def test_show_an_unknown_saga(sqlite_url: str) -> None:
    result = CliRunner().invoke(main, ["--storage-url", sqlite_url, "show", "nope"])
    assert result.exit_code == 1
    assert "no saga 'nope'" in result.output


def test_diagram_of_a_class() -> None:
    result = invoke("diagram", "sagaz_core_test_sagas:DiamondSaga")
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("flowchart TD\n")
    for step in "abcd":
        assert f'["{step}"]' in out
        assert f"undo: undo_{step}" in out
    assert out.count(" --> ") == 4
    imperative = invoke("diagram", "sagaz_core_test_sagas:SHIPPING")
    assert imperative.exit_code == 0, imperative.output
    assert '["pack"]' in imperative.output
    assert "undo: _noop" in imperative.output
    lr = invoke("diagram", "sagaz.core.demo:DemoOrderSaga", "--direction", "LR")
    assert lr.output.startswith("flowchart LR\n")
    assert '["charge_payment"]' in lr.output


def test_diagram_of_a_recorded_execution(demo_db: tuple[str, dict[str, str]]) -> None:
    url, ids = demo_db
    result = invoke(
        "--storage-url", url, "diagram", "sagaz.core.demo:DemoOrderSaga",
        "--saga-id", ids["COMPENSATED"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "%% saga: demo-order (COMPENSATED)" in result.output
    assert re.search(r"^\s+class \w*charge_payment failed$", result.output, re.M)
    assert re.search(r"^\s+class \w*ship_order pending$", result.output, re.M)
    missing = CliRunner().invoke(
        main, ["--storage-url", url, "diagram", "sagaz.core.demo:DemoOrderSaga", "--saga-id", "x"]
    )
    assert missing.exit_code == 1
    assert "no saga 'x'" in missing.output


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon", "expected MODULE:SagaClass"),
        ("no_such_module_xyz:Saga", "cannot load"),
        ("sagaz.core.demo:Missing", "cannot load"),
        ("sagaz.core.demo:PaymentDeclinedError", "is not a Saga class or instance"),
    ],
)
def test_diagram_bad_targets(target: str, message: str) -> None:
    result = CliRunner().invoke(main, ["diagram", target])
    assert result.exit_code == 2
    assert message in result.output


def test_storage_url_from_the_environment(demo_db: tuple[str, dict[str, str]]) -> None:
    url, ids = demo_db
    result = invoke("list", "--json", env={"SAGAZ_STORAGE_URL": url})
    assert result.exit_code == 0, result.output
    assert {json.loads(line)["saga_id"] for line in result.output.splitlines()} == set(ids.values())
    # --storage-url wins over the environment.
    other = invoke("--storage-url", "memory://", "list", env={"SAGAZ_STORAGE_URL": url})
    assert other.output.strip() == "no sagas recorded"


def test_default_storage_is_sagaz_db_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("list")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "no sagas recorded"
    assert (tmp_path / "sagaz.db").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nowhere", "storage URL 'nowhere' has no scheme"),
        ("mysql://db/sagas", "unknown storage URL scheme 'mysql'"),
    ],
)
@pytest.mark.parametrize("command", [["list"], ["show", "x"], ["demo"]])
def test_a_bad_storage_url_is_a_clear_error(url: str, message: str, command: list[str]) -> None:
    result = CliRunner().invoke(main, ["--storage-url", url, *command])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"Error: {message}" in result.output
    assert "Traceback" not in result.output
    env_result = CliRunner().invoke(main, command, env={"SAGAZ_STORAGE_URL": url})
    assert env_result.exit_code == 1
    assert message in env_result.output


def test_the_installed_console_script_runs_the_demo(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("sagaz")
    assert script.exists(), f"console script not installed next to {sys.executable}"
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAZ_")}
    demo = subprocess.run(
        [str(script), "--storage-url", url, "demo"],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    ids = {status: saga_id for saga_id, status in SAGA_ID.findall(demo.stdout)}
    assert set(ids) == {"COMPLETED", "COMPENSATED"}

    env["SAGAZ_STORAGE_URL"] = url
    listed = subprocess.run(
        [str(script), "list", "--json"],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    states = {
        json.loads(line)["saga_id"]: json.loads(line)["state"]
        for line in listed.stdout.splitlines()
    }
    assert states == {v: k for k, v in ids.items()}

    bad = subprocess.run(
        [str(script), "--storage-url", "nowhere", "list"],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 1
    assert "Error: storage URL 'nowhere' has no scheme" in bad.stderr
    assert "Traceback" not in bad.stderr


# -- operations: migrate, retry, cancel, outbox, worker -----------------------------------

TESTS_DIR = Path(__file__).resolve().parent


def load_status(url: str, saga_id: str) -> tuple[SagaStatus, Any]:
    async def load() -> tuple[SagaStatus, Any]:
        storage = storage_from_url(url)
        try:
            record = await storage.load(saga_id)
            assert record is not None
            return record.status, record
        finally:
            await storage.close()

    return asyncio.run(load())


def failed_saga(url: str, tmp_path: Path) -> tuple[str, Path, Path]:
    """A FragileUndoSaga recorded FAILED in ``url``: (saga_id, log, broken-flag file)."""
    log, broken = tmp_path / "fragile.log", tmp_path / "broken"
    broken.write_text("x")

    async def run() -> str:
        config = fast_config(storage_from_url(url))
        try:
            result = await FragileUndoSaga(config=config).run(
                {"log": str(log), "broken": str(broken)}
            )
        finally:
            await config.storage.close()
        assert result.status is SagaStatus.FAILED
        return result.saga_id

    return asyncio.run(run()), log, broken


def pending_saga(url: str, tmp_path: Path) -> str:
    async def start() -> str:
        config = fast_config(storage_from_url(url))
        try:
            saga_id, _ = await start_saga(
                CrashForwardSaga(config=config),
                {"log": str(tmp_path / "pending.log"), "block": str(tmp_path / "no-block")},
                run=False,
            )
        finally:
            await config.storage.close()
        return saga_id

    return asyncio.run(start())


def test_migrate(sqlite_url: str) -> None:
    first = invoke("--storage-url", sqlite_url, "migrate")
    assert first.exit_code == 0, first.output
    again = invoke("--storage-url", sqlite_url, "migrate")
    assert again.exit_code == 0, again.output
    assert again.output.strip() == f"schema of {sqlite_url} is up to date"
    memory = invoke("--storage-url", "memory://", "migrate")
    assert memory.output.strip() == "schema of memory:// is up to date"


@pytest.mark.postgres
def test_migrate_never_prints_the_database_password() -> None:
    from sagaz_durable_test_sagas import pg_reachable, pg_url_for, skip_or_fail

    if reason := pg_reachable():
        skip_or_fail(reason)
    # The server trusts loopback, so any password connects: the output must not show it.
    url = pg_url_for("test").replace("://postgres@", "://postgres:s3cret-pw@")
    result = invoke("--storage-url", url, "migrate")
    assert result.exit_code == 0, result.output
    assert "s3cret-pw" not in result.output
    assert "postgres:***@" in result.output


def test_retry_a_failed_saga(sqlite_url: str, tmp_path: Path) -> None:
    saga_id, log, broken = failed_saga(sqlite_url, tmp_path)
    assert read_log(log) == ["reserve", "charge", "release"]
    broken.unlink()  # the warehouse is back

    dry = invoke("--storage-url", sqlite_url, "retry", "--dry-run", "-m", "sagaz_core_test_sagas")
    assert dry.exit_code == 0, dry.output
    assert dry.output.splitlines() == ["1 sagas would retry (dry run)", f"  {saga_id}"]
    assert load_status(sqlite_url, saga_id)[0] is SagaStatus.FAILED

    result = invoke("--storage-url", sqlite_url, "retry", saga_id, "-m", "sagaz_core_test_sagas")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"saga {saga_id}: COMPENSATED"
    status, record = load_status(sqlite_url, saga_id)
    assert status is SagaStatus.COMPENSATED
    assert record.compensated_steps == ["reserve"]
    assert read_log(log) == ["reserve", "charge", "release", "release"]  # only the undo re-ran

    again = CliRunner().invoke(main, ["--storage-url", sqlite_url, "retry", saga_id])
    assert again.exit_code == 1
    assert "only FAILED sagas can be retried" in again.output


def test_bulk_retry_by_filter(sqlite_url: str, tmp_path: Path) -> None:
    saga_id, _, broken = failed_saga(sqlite_url, tmp_path)
    broken.unlink()
    result = invoke(
        "--storage-url", sqlite_url, "retry", "--name", "test-fragile-undo",
        "-m", "sagaz_core_test_sagas",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"  {saga_id}: COMPENSATED", "1 matched, 0 errors"]
    none = invoke("--storage-url", sqlite_url, "retry", "--since", "2999-01-01T00:00:00")
    assert none.output.splitlines() == ["0 matched, 0 errors"]
    bad = CliRunner().invoke(main, ["--storage-url", sqlite_url, "retry", "--since", "yesterday"])
    assert bad.exit_code == 2
    assert "not an ISO-8601 time" in bad.output
    both = CliRunner().invoke(main, ["--storage-url", sqlite_url, "retry", saga_id, "--dry-run"])
    assert both.exit_code == 2


def test_cancel_a_pending_saga(sqlite_url: str, tmp_path: Path) -> None:
    saga_id = pending_saga(sqlite_url, tmp_path)
    needs_filter = CliRunner().invoke(main, ["--storage-url", sqlite_url, "cancel"])
    assert needs_filter.exit_code == 2
    assert "give a SAGA_ID or at least one filter" in needs_filter.output

    dry = invoke("--storage-url", sqlite_url, "cancel", "--status", "PENDING", "--dry-run")
    assert dry.output.splitlines() == ["1 sagas would cancel (dry run)", f"  {saga_id}"]

    result = invoke("--storage-url", sqlite_url, "cancel", saga_id, "-m", "sagaz_core_test_sagas")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"saga {saga_id}: COMPENSATED"
    status, record = load_status(sqlite_url, saga_id)
    assert status is SagaStatus.COMPENSATED
    assert "SagaCancelledError" in (record.error or "")
    assert read_log(tmp_path / "pending.log") == []  # no step ran
    # Cancelling a finished saga changes nothing.
    again = invoke("--storage-url", sqlite_url, "cancel", saga_id)
    assert again.output.strip() == f"saga {saga_id}: COMPENSATED"


def test_outbox_listing(sqlite_url: str) -> None:
    result = invoke("--storage-url", sqlite_url, "outbox")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "PENDING: 0  SENT: 0  DEAD: 0"
    as_json = invoke("--storage-url", sqlite_url, "outbox", "--status", "dead", "--json")
    assert as_json.exit_code == 0
    assert as_json.output == ""


def test_a_worker_process_runs_pending_sagas_and_stops_on_sigterm(
    sqlite_url: str, tmp_path: Path
) -> None:
    saga_id = pending_saga(sqlite_url, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAZ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    script = Path(sys.executable).with_name("sagaz")
    worker = subprocess.Popen(
        [
            str(script), "--storage-url", sqlite_url, "worker", "-m", "sagaz_core_test_sagas",
            "--poll-interval", "0.05", "--lease-seconds", "2", "--grace-period", "5",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while load_status(sqlite_url, saga_id)[0] is not SagaStatus.COMPLETED:
            assert worker.poll() is None, worker.communicate()[1]
            assert time.monotonic() < deadline, "the worker never finished the saga"
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=20)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, err
    assert "sagaz worker stopped" in err
    assert read_log(tmp_path / "pending.log") == ["step1", "step2", "step3"]
