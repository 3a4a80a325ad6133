"""Management commands: sagaz_worker (as a subprocess and in-process), sagaz_list,
sagaz_retry, sagaz_cancel."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction
from django.test import override_settings
from sagaz_django_helpers import TESTS, saga_status, stop, subprocess_env, wait_finished
from sagaz_django_testproject.settings import SAGAZ
from sagaz_django_testproject.shop import sagas
from sagaz_django_testproject.shop.sagas import OrderSaga

from sagaz.integrations.django import atomic_saga_start

pytestmark = pytest.mark.django_db(transaction=True)

NOT_IN_PROCESS = {**SAGAZ, "RUN_IN_PROCESS": False}


def _start_pending(*amounts: int, broken: bool = False) -> list[str]:
    with override_settings(SAGAZ=NOT_IN_PROCESS), transaction.atomic():
        return [
            atomic_saga_start(OrderSaga, {"order_id": f"o{i}", "amount": a, "break_refund": broken})
            for i, a in enumerate(amounts)
        ]


def _out(*args: str) -> str:
    buffer = io.StringIO()
    call_command(*args, stdout=buffer, stderr=io.StringIO())
    return buffer.getvalue()


def test_worker_subprocess_completes_sagas_and_stops_on_sigterm() -> None:
    ids = _start_pending(10, 20, 5000)
    assert {saga_status(i) for i in ids} == {"PENDING"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sagaz_django_testproject.manage",
            "sagaz_worker",
            "--poll-interval",
            "0.1",
        ],
        env=subprocess_env(),
        cwd=TESTS,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        statuses = wait_finished(*ids, timeout=60)
    finally:
        output = stop(proc)
    assert statuses == {ids[0]: "COMPLETED", ids[1]: "COMPLETED", ids[2]: "COMPENSATED"}, output
    assert proc.returncode == 0, output
    assert "sagaz worker stopped" in output
    assert "claimed=3" in output

    listing = _out("sagaz_list")
    for saga_id in ids:
        assert saga_id in listing
    assert "COMPENSATED" in listing
    assert "COMPLETED" in listing
    only = _out("sagaz_list", "--status", "compensated", "--name", "order")
    assert ids[2] in only
    assert ids[0] not in only
    history = _out("sagaz_list", "--id", ids[2])
    assert "saga_compensated" in history
    assert "step_failed charge" in history
    assert ids[0] in _out("sagaz_list", "--json", "--limit", "5")
    assert '"history"' in _out("sagaz_list", "--id", ids[0], "--json")
    assert "no sagas recorded" in _out("sagaz_list", "--name", "nothing")
    assert ids[0] in _out("sagaz_list", "--since", "2000-01-01T00:00:00", "--until", "2999-01-01")


def test_worker_in_process_until_sigterm() -> None:
    ids = _start_pending(1, 2)

    def terminate_when_done() -> None:
        try:
            wait_finished(*ids, timeout=30)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    watcher = threading.Thread(target=terminate_when_done)
    watcher.start()
    err = io.StringIO()
    call_command(
        "sagaz_worker",
        "--poll-interval",
        "0.05",
        "--concurrency",
        "2",
        "--lease-seconds",
        "3",
        "--broker-url",
        "memory://",
        stderr=err,
    )
    watcher.join()
    assert "stopped" in err.getvalue()
    assert {saga_status(i) for i in ids} == {"COMPLETED"}
    from sagaz.integrations.django.models import OutboxMessage

    events = OutboxMessage.objects.filter(saga_id__in=ids)
    assert events.filter(event_type="saga.started").count() == 2
    assert events.filter(event_type="saga.completed").count() == 2


@pytest.mark.parametrize(
    "args",
    [
        ("--concurrency", "0"),
        ("--poll-interval", "0"),
        ("--grace-period", "-1"),
        ("--lease-seconds", "-1"),
        ("--module", "no_such_module_here"),
        ("--broker-url", "nope://x"),
    ],
)
def test_worker_bad_options(args: tuple[str, ...]) -> None:
    with pytest.raises(CommandError):
        call_command("sagaz_worker", *args, stderr=io.StringIO())


def test_retry_and_cancel(monkeypatch: pytest.MonkeyPatch) -> None:
    with transaction.atomic():
        failed = atomic_saga_start(
            OrderSaga, {"order_id": "f", "amount": 800, "break_refund": True}
        )
    assert wait_finished(failed)[failed] == "FAILED"
    assert "retry" in _out("sagaz_retry", "--dry-run", "--status", "FAILED")
    still = _out("sagaz_retry", "--name", "order")  # the refund still fails
    assert f"{failed}: FAILED" in still
    assert "1 matched, 0 errors" in still
    with pytest.raises(CommandError, match="dry-run"):
        _out("sagaz_retry", failed, "--dry-run")
    monkeypatch.setattr(sagas.OrderSaga, "refund", lambda self, ctx: None)
    assert f"saga {failed}: COMPENSATED" in _out("sagaz_retry", failed)
    with pytest.raises(CommandError, match="only FAILED"):
        _out("sagaz_retry", failed)

    pending = _start_pending(10)[0]
    assert "would cancel" in _out("sagaz_cancel", "--status", "PENDING", "--dry-run")
    assert f"saga {pending}: COMPENSATED" in _out("sagaz_cancel", pending)
    other = _start_pending(10)[0]
    assert "1 matched, 0 errors" in _out("sagaz_cancel", "--name", "order", "--status", "PENDING")
    assert saga_status(other) == "COMPENSATED"
    with pytest.raises(CommandError, match="at least one filter"):
        _out("sagaz_cancel")
    # --correlation-id is a filter too.
    nobody = _out("sagaz_cancel", "--correlation-id", "nobody", "--dry-run")
    assert nobody.splitlines() == ["0 sagas would cancel (dry run)"]
    with pytest.raises(CommandError, match="dry-run"):
        _out("sagaz_cancel", other, "--dry-run")
    with pytest.raises(CommandError, match="no saga"):
        _out("sagaz_cancel", "missing-id")
    with pytest.raises(CommandError, match="no saga"):
        _out("sagaz_list", "--id", "missing-id")
    with pytest.raises(CommandError, match="ISO-8601"):
        _out("sagaz_list", "--since", "yesterday")
    with pytest.raises(CommandError, match="--limit"):
        _out("sagaz_list", "--limit", "0")
