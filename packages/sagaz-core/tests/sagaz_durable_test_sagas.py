"""Sagas and helpers of the durable-execution tests (test_durable_*.py).

``sagaz worker --module sagaz_durable_test_sagas`` subprocesses run these sagas. Every
step and compensation appends lines to the file named by the environment variable
:data:`LOG_ENV` (one ``write`` on an ``O_APPEND`` file each: lines of concurrent
processes never mix, and their order in the file is the order they were written)::

    <saga_id> <step> action|compensate <pid> start|end <epoch seconds>

``start`` is written when the step (or compensation) begins, ``end`` when it returns;
a step that fails on purpose writes ``fail`` instead of ``end``. The context drives
the sagas: ``sleep`` (seconds each step takes), ``comp_sleep`` (each compensation),
``fail_last`` (the last step raises, so the saga compensates) and, for
:class:`SuicideSaga`, ``crash_file`` (while that file exists, step ``boom`` ends its
own process with ``os._exit``).

Run as a script it is the child of the cross-process idempotency test::

    python sagaz_durable_test_sagas.py idem STORAGE_URL KEY COUNT GO_FILE

which creates ``GO_FILE.ready.<pid>`` once its storage is open, waits for ``GO_FILE``,
then starts ``COUNT`` runs of :class:`DurableLinearSaga` at once with the idempotency
key ``KEY`` and prints one JSON line per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sagaz.core import (
    RetryPolicy,
    Saga,
    SagaConfig,
    action,
    compensate,
    current_step,
    emit_event,
)
from sagaz.core.records import SagaRecord, TransitionKind

TESTS_DIR = Path(__file__).resolve().parent
MODULE = "sagaz_durable_test_sagas"
#: The environment variable naming the run log.
LOG_ENV = "SAGAZ_TEST_LOG"

ADMIN_URL = os.environ.get("SAGAZ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SAGAZ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("SAGAZ_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")

# --------------------------------------------------------------------------- the log


def _log(kind: str, phase: str) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    info = current_step()
    line = f"{info.saga_id} {info.step} {kind} {os.getpid()} {phase} {time.time():.6f}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class StepFailedError(Exception):
    """A step of a durable test saga failed on purpose."""


async def _step(ctx: dict[str, Any], *, last: bool = False) -> dict[str, Any]:
    _log("action", "start")
    delay = float(ctx.get("sleep", 0.0))
    if delay:
        await asyncio.sleep(delay)
    if last and ctx.get("fail_last"):
        _log("action", "fail")
        raise StepFailedError(f"step {current_step().step} fails on purpose")
    _log("action", "end")
    return {f"done_{current_step().step}": True}


async def _undo(ctx: dict[str, Any]) -> None:
    _log("compensate", "start")
    delay = float(ctx.get("comp_sleep", 0.0))
    if delay:
        await asyncio.sleep(delay)
    _log("compensate", "end")


class DurableLinearSaga(Saga):
    """a -> b -> c; a and b have compensations; c fails when ``ctx["fail_last"]``."""

    saga_name = "durable-linear"

    @action("a")
    async def a(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return await _step(ctx)

    @action("b")
    async def b(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return await _step(ctx)

    @action("c", retry=RetryPolicy(max_attempts=1))
    async def c(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return await _step(ctx, last=True)

    @compensate("a", retry=RetryPolicy(max_attempts=1))
    async def undo_a(self, ctx: dict[str, Any]) -> None:
        await _undo(ctx)

    @compensate("b", retry=RetryPolicy(max_attempts=1))
    async def undo_b(self, ctx: dict[str, Any]) -> None:
        await _undo(ctx)


class SuicideSaga(Saga):
    """prepare -> boom; boom ends its own process while ``ctx["crash_file"]`` exists."""

    saga_name = "durable-suicide"

    @action("prepare")
    async def prepare(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return await _step(ctx)

    @action("boom")
    async def boom(self, ctx: dict[str, Any]) -> dict[str, Any]:
        _log("action", "start")
        if os.path.exists(ctx["crash_file"]):
            os._exit(3)
        _log("action", "end")
        return {"survived": True}


class EmittingSaga(Saga):
    """reserve -> charge -> notify, for the outbox tests.

    ``charge`` emits ``test.charged`` (and ``test.poison`` when ``ctx["poison"]``);
    with ``ctx["bad_result"]`` it returns a value that is not JSON.
    """

    saga_name = "durable-emitting"

    @action("reserve")
    async def reserve(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {"reserved": ctx["n"]}

    @action("charge")
    async def charge(self, ctx: dict[str, Any]) -> dict[str, Any]:
        emit_event("test.charged", {"n": ctx["n"]})
        if ctx.get("poison"):
            emit_event("test.poison", {"n": ctx["n"]})
        if ctx.get("bad_result"):
            return {"receipt": object()}
        return {"charged": True}

    @compensate("reserve", retry=RetryPolicy(max_attempts=1))
    async def release(self, ctx: dict[str, Any]) -> None:
        return None

    @action("notify")
    async def notify(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {"notified": True}


#: The outbox events one completed EmittingSaga writes, in order.
EMITTING_EVENTS = (
    "saga.started",
    "saga.step_completed",
    "saga.step_completed",
    "test.charged",
    "saga.step_completed",
    "saga.completed",
)


# --------------------------------------------------------------------------- reading the log


@dataclass(frozen=True, slots=True)
class LogLine:
    saga_id: str
    step: str
    kind: str  # action | compensate
    pid: int
    phase: str  # start | end | fail
    at: float


def read_log(path: str | os.PathLike[str]) -> list[LogLine]:
    """The complete lines of a run log (a line cut short by a kill is ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = []
    for raw in text.splitlines():
        parts = raw.split()
        if len(parts) != 6:
            continue
        saga_id, step, kind, pid, phase, at = parts
        lines.append(LogLine(saga_id, step, kind, int(pid), phase, float(at)))
    return lines


def count(lines: Sequence[LogLine], *, kind: str, phase: str, step: str | None = None) -> int:
    return sum(
        1
        for line in lines
        if line.kind == kind and line.phase == phase and (step is None or line.step == step)
    )


def runs(lines: Sequence[LogLine], kind: str) -> dict[tuple[str, str], list[LogLine]]:
    """The ``start`` lines of each (saga, step) of ``kind``."""
    found: dict[tuple[str, str], list[LogLine]] = defaultdict(list)
    for line in lines:
        if line.kind == kind and line.phase == "start":
            found[line.saga_id, line.step].append(line)
    return found


_DONE_KIND = {
    "action": (TransitionKind.STEP_STARTED, TransitionKind.STEP_COMPLETED),
    "compensate": (TransitionKind.COMPENSATION_STARTED, TransitionKind.COMPENSATION_COMPLETED),
}


def rerun_problems(
    lines: Sequence[LogLine], records: dict[str, SagaRecord], kind: str
) -> tuple[list[str], int]:
    """Check that only steps in flight at a crash ran again.

    A (saga, step) of ``kind`` that ran n > 1 times needs n - 1 SAGA_RESUMED entries in
    its history before which the step's start is recorded and its completion is not.
    Returns the problems found and how many re-runs there were.
    """
    started_kind, completed_kind = _DONE_KIND[kind]
    problems: list[str] = []
    reruns = 0
    for (saga_id, step), starts in runs(lines, kind).items():
        if len(starts) == 1:
            continue
        reruns += len(starts) - 1
        record = records.get(saga_id)
        if record is None:
            problems.append(f"saga {saga_id}: ran {kind} {step} but is not recorded")
            continue
        history = record.history
        resumes = [i for i, h in enumerate(history) if h.kind is TransitionKind.SAGA_RESUMED]
        # Each extra run needs its own recovery that found the step started and not
        # completed (in flight when its process died).
        in_flight_resumes = 0
        for r in resumes:
            before = history[:r]
            started = any(h.kind is started_kind and h.step == step for h in before)
            completed = any(h.kind is completed_kind and h.step == step for h in before)
            if started and not completed:
                in_flight_resumes += 1
        if len(starts) - 1 > in_flight_resumes:
            kinds = ", ".join(f"{h.kind.value}:{h.step or ''}" for h in history)
            problems.append(
                f"saga {saga_id}: {kind} {step!r} ran {len(starts)} times (pids "
                f"{[s.pid for s in starts]}) but only {in_flight_resumes} recovery found it "
                f"in flight; history: {kinds}"
            )
    return problems, reruns


def interleaving_problems(lines: Sequence[LogLine], kind: str = "action") -> list[str]:
    """Per saga, every step of ``kind`` must be start, then end, by one pid, before the
    next starts: any overlap means the saga ran twice at once."""
    problems = []
    by_saga: dict[str, list[LogLine]] = defaultdict(list)
    for line in lines:
        if line.kind == kind:
            by_saga[line.saga_id].append(line)
    for saga_id, seq in by_saga.items():
        open_run: LogLine | None = None
        for line in seq:
            if line.phase == "start":
                if open_run is not None:
                    problems.append(
                        f"saga {saga_id}: {kind} {line.step} started by pid {line.pid} while "
                        f"{open_run.step} of pid {open_run.pid} was still running"
                    )
                open_run = line
            else:
                if open_run is None or open_run.step != line.step or open_run.pid != line.pid:
                    problems.append(f"saga {saga_id}: unmatched {line.phase} line {line}")
                open_run = None
    return problems


# --------------------------------------------------------------------------- processes


def sagaz_command() -> list[str]:
    """How to run the ``sagaz`` CLI: the console script next to this interpreter.

    (``python -m sagaz.core.cli`` would be the other way, but see
    test_python_dash_m_runs_the_cli.)
    """
    script = Path(sys.executable).with_name("sagaz")
    if script.exists():
        return [str(script)]
    found = shutil.which("sagaz")
    if found:
        return [found]
    return [sys.executable, "-c", "from sagaz.core.cli import main; main()"]


def child_env(log_path: str | os.PathLike[str] | None = None, **extra: str) -> dict[str, str]:
    """The environment of a child process: this module importable, no stray SAGAZ_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAZ_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS_DIR), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    env["PYTHONUNBUFFERED"] = "1"
    if log_path is not None:
        env[LOG_ENV] = str(log_path)
    env.update(extra)
    return env


class Worker:
    """One ``sagaz worker`` subprocess, its output in files under ``workdir``."""

    def __init__(
        self,
        storage_url: str,
        workdir: Path,
        log_path: Path,
        *,
        name: str,
        lease_seconds: float = 30.0,
        concurrency: int = 10,
        poll_interval: float = 0.05,
        grace_period: float = 5.0,
        env: dict[str, str] | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.out_path = workdir / f"{name}.out"
        self.err_path = workdir / f"{name}.err"
        command = [
            *sagaz_command(),
            "--storage-url",
            storage_url,
            "worker",
            "--module",
            MODULE,
            "--concurrency",
            str(concurrency),
            "--lease-seconds",
            str(lease_seconds),
            "--poll-interval",
            str(poll_interval),
            "--grace-period",
            str(grace_period),
            *extra,
        ]
        self._out = open(self.out_path, "wb")  # noqa: SIM115 - closed in stop/kill
        self._err = open(self.err_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            command,
            cwd=workdir,
            env=child_env(log_path, **(env or {})),
            stdout=self._out,
            stderr=self._err,
            start_new_session=True,
        )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        out = self.out_path.read_text(errors="replace") if self.out_path.exists() else ""
        err = self.err_path.read_text(errors="replace") if self.err_path.exists() else ""
        return f"--- {self.name} stdout\n{out[-3000:]}\n--- {self.name} stderr\n{err[-6000:]}"

    def kill(self) -> None:
        """SIGKILL, and reap."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._close_files()

    def terminate(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code."""
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_files()
        return self.proc.returncode

    def _close_files(self) -> None:
        for f in (self._out, self._err):
            with contextlib.suppress(Exception):
                f.close()


@contextlib.contextmanager
def workers_cleanup() -> Iterator[list[Worker]]:
    """A list to register workers in; every one still alive is killed on exit."""
    started: list[Worker] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.kill()


def closed_port() -> int:
    """A loopback TCP port nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- PostgreSQL


def pg_url_for(dbname: str, **query: str) -> str:
    parts = urlsplit(ADMIN_URL)
    q = "&".join(f"{k}={v}" for k, v in query.items())
    return urlunsplit(parts._replace(path=f"/{dbname}", query=q))


def pg_admin_connect() -> Any:
    import psycopg

    return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)


def pg_reachable() -> str | None:
    """None when the server answers; otherwise why not."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        return f"psycopg / psycopg_pool are not installed ({exc})"
    try:
        with pg_admin_connect() as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return (
            f"PostgreSQL is not reachable at {ADMIN_URL} ({str(exc).strip()}); start it "
            "(see 'Services the tests use' in README.md) or set SAGAZ_TEST_POSTGRES_URL"
        )
    return None


def pg_create_database(prefix: str) -> str:
    from psycopg import sql

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with pg_admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def pg_drop_database(name: str) -> None:
    from psycopg import sql

    with pg_admin_connect() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


PG_TABLES = (
    "sagaz_sagas",
    "sagaz_steps",
    "sagaz_history",
    "sagaz_trigger_events",
    "sagaz_outbox",
    "sagaz_inbox",
)


def pg_truncate(url: str) -> None:
    import psycopg

    conninfo = url.split("?", 1)[0]
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f"TRUNCATE {', '.join(PG_TABLES)} RESTART IDENTITY")


def skip_or_fail(reason: str) -> None:
    import pytest

    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


# --------------------------------------------------------------------------- the idempotency child


async def _idem_child(url: str, key: str, n: int, go_file: str) -> None:
    config = SagaConfig(storage_url=url)
    try:
        await config.storage.ensure_open()
        Path(f"{go_file}.ready.{os.getpid()}").touch()
        deadline = time.monotonic() + 30
        while not os.path.exists(go_file):
            if time.monotonic() > deadline:
                raise SystemExit("no go file")
            await asyncio.sleep(0.005)
        saga = DurableLinearSaga(config=config)
        results = await asyncio.gather(
            *(saga.run({"sleep": 0.05}, idempotency_key=key) for _ in range(n))
        )
        for result in results:
            print(json.dumps({"saga_id": result.saga_id, "created": result.created}))
    finally:
        await config.storage.close()


if __name__ == "__main__":
    if sys.argv[1] == "idem":
        asyncio.run(_idem_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
    else:  # pragma: no cover
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
