"""Helpers of the reliability suite: figures, private servers, worker processes, HTTP load.

The module has a unique name (tests import it by name, with ``--import-mode=importlib``).

- :func:`record` collects the figures each test measured; ``conftest.py`` prints them as a
  table at the end of the run (visible in CI logs without ``-s``).
- :data:`SCALE` (env ``SAGAZ_RELIABILITY_SCALE``, default 1) multiplies the sizes of the
  runs: 1 keeps the issue's numbers, 0.2 is a quick local run.
- :class:`PrivatePostgres`, :class:`PrivateRedis`, :class:`PrivateRabbitMQ` start servers of
  this suite's own in a temporary folder, on free ports, so that they can be stopped and
  restarted without touching the shared services on 5432/6379/5672.
- :class:`Worker` is one ``sagaz worker`` subprocess; :class:`Server` any HTTP server
  subprocess; :func:`hammer` sends many requests over many keep-alive connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

HERE = Path(__file__).resolve().parent

ADMIN_URL = os.environ.get("SAGAZ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
#: The run log every step of the suite's sagas appends to (see sagaz_reliability_sagas).
LOG_ENV = "SAGAZ_RELIABILITY_LOG"


def _scale() -> float:
    raw = os.environ.get("SAGAZ_RELIABILITY_SCALE", "1")
    try:
        value = float(raw)
    except ValueError:
        raise pytest.UsageError(
            f"SAGAZ_RELIABILITY_SCALE={raw!r} is not a number; use e.g. 1 (the issue's sizes)"
            " or 0.2 (a quick run)"
        ) from None
    if not 0 < value <= 10:
        raise pytest.UsageError(f"SAGAZ_RELIABILITY_SCALE={raw!r} must be in (0, 10]")
    return value


SCALE = _scale()


def scaled(n: int, minimum: int = 1) -> int:
    """``n`` times :data:`SCALE`, at least ``minimum``."""
    return max(minimum, round(n * SCALE))


# --------------------------------------------------------------------------- figures

#: section -> figure -> value, in the order recorded (printed by conftest at the end).
FIGURES: dict[str, dict[str, Any]] = {}


def record(section: str, **figures: Any) -> None:
    """Record figures of one scenario (shown in the summary table at the end of the run)."""
    FIGURES.setdefault(section, {}).update(figures)


def summary_lines() -> list[str]:
    """The summary table: one line per scenario, then the totals the issue asks for."""
    if not FIGURES:
        return []
    lines = []
    width = max(len(s) for s in FIGURES)
    for section, figures in FIGURES.items():
        shown = ", ".join(f"{k}={v}" for k, v in figures.items())
        lines.append(f"{section.ljust(width)}  {shown}")
    totals: Counter[str] = Counter()
    for figures in FIGURES.values():
        for key, value in figures.items():
            if isinstance(value, int) and not isinstance(value, bool):
                totals[key] += value
    keys = [
        "sagas",
        "kills",
        "recoveries",
        "rerun_in_flight_steps",
        "requests",
        "http_503_during_outage",
        "rejections",
        "events",
        "duplicates_dropped",
        "lost",
    ]
    lines.append("TOTAL".ljust(width) + "  " + ", ".join(f"{k}={totals.get(k, 0)}" for k in keys))
    return lines


# --------------------------------------------------------------------------- skipping


def in_ci() -> bool:
    """True under CI=true: a missing service fails instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``; under CI=true fail instead (CI must run everything)."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: this must work in CI)")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_answers(port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1
) -> Any:
    """Call ``check`` until truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def _as_user(command: list[str], user: str) -> list[str]:
    """Run ``command`` as ``user`` when we are root (PostgreSQL refuses to run as root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", user, "--", *command]
    return command


# --------------------------------------------------------------------------- PostgreSQL


def pg_problem() -> str | None:
    """Why the shared PostgreSQL server cannot be used, or None."""
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        return f"psycopg / psycopg_pool are not installed ({exc}): pip install sagaz-core[postgres]"
    try:
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return (
            f"PostgreSQL is not reachable at {ADMIN_URL} ({str(exc).strip()}); start it or set "
            "SAGAZ_TEST_POSTGRES_URL"
        )
    return None


def url_with_db(admin_url: str, dbname: str) -> str:
    """``admin_url`` pointing at database ``dbname`` (no query)."""
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{dbname}", query=""))


@contextlib.contextmanager
def pg_database(prefix: str, admin_url: str = ADMIN_URL) -> Iterator[tuple[str, str]]:
    """A fresh database (name, url) on the server of ``admin_url``, dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name, url_with_db(admin_url, name)
    finally:
        with (
            contextlib.suppress(Exception),
            psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn,
        ):
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def pg_connections(admin_url: str, dbname: str) -> int:
    """Client connections to ``dbname`` (pg_stat_activity), this query's own excluded."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchone()
    return int(row[0]) if row else 0


def postgres_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin with initdb and pg_ctl, if any."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name.split(".")[0] or 0),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivatePostgres:
    """A PostgreSQL server of our own (initdb in a temp folder, pg_ctl on a free port).

    Runs as the ``postgres`` OS user when we are root. :meth:`stop`/:meth:`start`/
    :meth:`restart` are what the database-fault tests do to it.
    """

    def __init__(self) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("no initdb/pg_ctl found (install postgresql)")
        self.bindir = bindir
        # Not under pytest's tmp_path: that is private to root, and the server runs as postgres.
        folder = Path(tempfile.mkdtemp(prefix="sagaz-rel-pg-"))
        self.folder = folder
        self.data = folder / "data"
        self.log = folder / "postgres.log"
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres")
        self._run(
            [
                str(bindir / "initdb"),
                "-D",
                str(self.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, command: list[str], timeout: float = 60) -> None:
        done = subprocess.run(
            _as_user(command, "postgres"),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.folder,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                + (self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "")
            )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-o",
                options,
                "-l",
                str(self.log),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )

    def stop(self, mode: str = "fast") -> None:
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def terminate_backends(self, dbname: str) -> int:
        """pg_terminate_backend on every connection to ``dbname``; how many."""
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            ).fetchall()
        return sum(1 for (ok,) in rows if ok)

    def teardown(self) -> None:
        if self.running():
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


# --------------------------------------------------------------------------- Redis


class PrivateRedis:
    """A redis-server of our own on a free port, data (append-only file) in ``folder``.

    The append-only file (fsync always) keeps the stream across a stop/start, as a
    production broker would; the shared server on 6379 is never touched.
    """

    def __init__(self, folder: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        self.exe = exe
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    self.exe,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--dir",
                    str(self.folder),
                    "--daemonize",
                    "no",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while not port_answers(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def teardown(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self.proc = None
        shutil.rmtree(self.folder, ignore_errors=True)


# --------------------------------------------------------------------------- RabbitMQ


def rabbitmq_server() -> str | None:
    """The rabbitmq-server script that runs as the calling user (not the su wrapper)."""
    for candidate in ("/usr/lib/rabbitmq/bin/rabbitmq-server",):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("rabbitmq-server")


class PrivateRabbitMQ:
    """A RabbitMQ node of our own (``sagaz-rel-<id>@localhost``) on free ports.

    Its Mnesia database, logs and Erlang cookie live in ``folder``, so a stop and a start
    keep its durable queues and persistent messages; no plugin is enabled.
    """

    def __init__(self, folder: Path) -> None:
        exe = rabbitmq_server()
        if exe is None:
            raise RuntimeError("rabbitmq-server is not installed")
        self.exe = exe
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "enabled_plugins").write_text("[].\n")
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"sagaz-rel-{uuid.uuid4().hex[:6]}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "rabbitmq.out"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        f = self.folder
        return {
            **os.environ,
            "HOME": str(f),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(f / "mnesia"),
            "RABBITMQ_LOG_BASE": str(f / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(f / "enabled_plugins"),
            "RABBITMQ_ENABLED_PLUGINS": "",
            "RABBITMQ_CONFIG_FILE": str(f / "rabbitmq"),
            "RABBITMQ_PID_FILE": str(f / "rabbitmq.pid"),
        }

    def start(self, timeout: float = 90) -> float:
        """Start the node; the seconds until it accepted AMQP connections."""
        began = time.monotonic()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [self.exe],
                env=self._env(),
                cwd=self.folder,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        while not port_answers(self.port):
            if self.proc.poll() is not None or time.monotonic() - began > timeout:
                self.teardown(keep_files=True)
                raise RuntimeError(
                    f"the private RabbitMQ node did not start in {timeout}s:\n"
                    + self.log.read_text(errors="replace")[-3000:]
                )
            time.sleep(0.2)
        return time.monotonic() - began

    def stop(self) -> None:
        """SIGTERM the node's process group (a clean shutdown) and wait for it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        deadline = time.monotonic() + 30
        while port_answers(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def teardown(self, keep_files: bool = False) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        if not keep_files:
            shutil.rmtree(self.folder, ignore_errors=True)


# --------------------------------------------------------------------------- processes


def sagaz_command() -> list[str]:
    """The ``sagaz`` console script next to this interpreter."""
    script = Path(sys.executable).with_name("sagaz")
    if script.exists():
        return [str(script)]
    found = shutil.which("sagaz")
    return [found] if found else [sys.executable, "-m", "sagaz.core.cli"]


def child_env(log_path: Path | None = None, **extra: str) -> dict[str, str]:
    """A child's environment: this folder importable, no stray SAGAZ_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAZ_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    if log_path is not None:
        env[LOG_ENV] = str(log_path)
    env.update(extra)
    return env


class Worker:
    """One ``sagaz worker --module sagaz_reliability_sagas`` subprocess."""

    def __init__(
        self,
        storage_url: str,
        workdir: Path,
        log_path: Path,
        *,
        name: str,
        lease_seconds: float = 1.0,
        concurrency: int = 20,
        poll_interval: float = 0.05,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.err_path = workdir / f"{name}.err"
        self._err = open(self.err_path, "ab")  # noqa: SIM115 - closed in kill/stop
        self.proc = subprocess.Popen(
            [
                *sagaz_command(),
                "--storage-url",
                storage_url,
                "worker",
                "--module",
                "sagaz_reliability_sagas",
                "--concurrency",
                str(concurrency),
                "--lease-seconds",
                str(lease_seconds),
                "--poll-interval",
                str(poll_interval),
                "--grace-period",
                "5",
            ],
            cwd=workdir,
            env=child_env(log_path, **(extra_env or {})),
            stdout=self._err,
            stderr=self._err,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        text = self.err_path.read_text(errors="replace") if self.err_path.exists() else ""
        return f"--- {self.name} (pid {self.pid}) output\n{text[-4000:]}"

    def kill(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._err.close()

    def stop(self, timeout: float = 20) -> int | None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._err.close()
        return self.proc.returncode


class Server:
    """An HTTP server subprocess (uvicorn or gunicorn), its output in ``log``."""

    def __init__(
        self,
        command: list[str],
        *,
        port: int,
        cwd: Path,
        env: dict[str, str],
        log: Path,
        health: str,
    ) -> None:
        self.port = port
        self.log = log
        self.health = health
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""

    def wait_ready(self, timeout: float = 60) -> None:
        import http.client

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited ({self.proc.returncode}):\n{self.output()}")
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", self.health)
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return
            time.sleep(0.2)
        pytest.fail(f"the server did not answer {self.health} in {timeout}s:\n{self.output()}")

    def pids(self) -> list[int]:
        """The server process and its children (gunicorn workers)."""
        found = [self.pid]
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{self.pid}/task").iterdir():
                children = (task / "children").read_text().split()
                found += [int(c) for c in children]
        return found

    def rss_mib(self) -> float:
        """Resident memory of the server and its workers, MiB."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total / 1024

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):  # stray workers of the group
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._out.close()
        return self.proc.returncode


# --------------------------------------------------------------------------- the run log


@dataclass(frozen=True, slots=True)
class LogLine:
    saga_id: str
    step: str
    kind: str  # action | compensate
    pid: int
    phase: str  # start | end | fail


def read_log(path: Path) -> list[LogLine]:
    """The complete lines of a run log (a line cut short by a kill is ignored)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = []
    for raw in text.splitlines():
        parts = raw.split()
        if len(parts) == 5 and parts[3].isdigit():
            lines.append(LogLine(parts[0], parts[1], parts[2], int(parts[3]), parts[4]))
    return lines


def starts_by_step(lines: Sequence[LogLine], kind: str) -> dict[tuple[str, str], list[LogLine]]:
    found: dict[tuple[str, str], list[LogLine]] = defaultdict(list)
    for line in lines:
        if line.kind == kind and line.phase == "start":
            found[line.saga_id, line.step].append(line)
    return found


# --------------------------------------------------------------------------- HTTP load


@dataclass
class LoadResult:
    """What :func:`hammer` saw: status counts, bodies of non-2xx answers, timings."""

    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    bodies: list[tuple[int, bytes]] = field(default_factory=list)
    saga_ids: dict[str, list[str]] = field(default_factory=dict)
    longest: float = 0.0
    seconds: float = 0.0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(chunks)
    else:
        body = await reader.read()
    return status, headers, body


async def _hammer(
    port: int,
    path: str,
    bodies: Sequence[tuple[str, bytes]],
    concurrency: int,
    timeout: float,
    headers: dict[str, str],
) -> LoadResult:
    result = LoadResult()
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for item in bodies:
        queue.put_nowait(item)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())

    async def connection() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while True:
            try:
                key, body = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            request = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            ).encode() + body
            began = time.monotonic()
            for attempt in range(2):  # a keep-alive connection the server closed: once more
                try:
                    if writer is None:
                        reader, writer = await asyncio.wait_for(
                            asyncio.open_connection("127.0.0.1", port), timeout
                        )
                    assert reader is not None
                    writer.write(request)
                    status, answer_headers, answer = await asyncio.wait_for(
                        _read_response(reader), timeout
                    )
                except (OSError, asyncio.IncompleteReadError, ConnectionError) as exc:
                    if writer is not None:
                        writer.close()
                    reader = writer = None
                    if attempt == 0 and time.monotonic() - began < 1:
                        continue
                    result.errors.append(f"{key}: {type(exc).__name__}: {exc}")
                    break
                except TimeoutError:
                    if writer is not None:
                        writer.close()
                    reader = writer = None
                    result.errors.append(f"{key}: no answer within {timeout}s (a hang)")
                    break
                result.statuses[status] += 1
                result.longest = max(result.longest, time.monotonic() - began)
                if status == 202:
                    result.saga_ids[key] = json.loads(answer)["saga_ids"]
                else:
                    result.bodies.append((status, answer))
                if answer_headers.get("connection", "").lower() == "close":
                    assert writer is not None
                    writer.close()
                    reader = writer = None
                break
        if writer is not None:
            writer.close()

    began = time.monotonic()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    result.seconds = time.monotonic() - began
    return result


def hammer(
    port: int,
    path: str,
    bodies: Sequence[tuple[str, bytes]],
    *,
    concurrency: int = 100,
    timeout: float = 60.0,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """POST each (key, JSON body) to ``path`` over ``concurrency`` keep-alive connections.

    Answers are counted by status; a connection error or no answer within ``timeout``
    is an error (listed in ``errors``). 202 answers record their ``saga_ids`` by key.
    """
    return asyncio.run(_hammer(port, path, bodies, concurrency, timeout, headers or {}))


class FigureRecorder:
    """What the ``figures`` fixture returns (also for tests in sub-folders)."""

    record = staticmethod(record)
