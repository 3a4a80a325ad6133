"""Helpers of the example tests: README parsing, JSON matching, servers, databases.

A README request is a ```bash block holding one ``curl`` command; its documented answer
is the next ```json block, and the text between them names the status (``HTTP 202``).
Responses are compared as JSON with two allowances for values that differ per run:

- a UUID in the README stands for the id of that run: the first time it appears it is
  bound to the live value, and later requests (URLs, bodies) use the live value;
- an ISO-8601 timestamp matches any timestamp.

A ``"...": "..."`` member of a README object allows members that the README leaves out.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(\+00:00|Z)")
ELLIPSIS = "..."
PG_URL = os.environ.get("SAGAZ_EXAMPLES_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_STATUS = re.compile(r"HTTP (\d{3})")


def unavailable(reason: str) -> None:
    """Skip a test whose service is unreachable; under CI=true fail it instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: required)")
    pytest.skip(reason)


# -- the README ---------------------------------------------------------------------


@dataclass
class Request:
    """One documented request and its documented answer."""

    method: str
    url: str
    headers: dict[str, str]
    body: str | None
    status: int
    expected: Any
    line: int

    def __str__(self) -> str:
        return f"README line {self.line}: {self.method} {self.url}"


def parse_curl(command: str) -> tuple[str, str, dict[str, str], str | None]:
    """(method, url, headers, body) of a curl command line (continuations allowed)."""
    words = shlex.split(command.replace("\\\n", " "), comments=True)
    assert words, f"an empty command: {command!r}"
    assert words[0] == "curl", f"not a curl command: {command!r}"
    method, url, headers, body = "", "", {}, None
    it = iter(words[1:])
    for word in it:
        if word in {"-X", "--request"}:
            method = next(it)
        elif word in {"-H", "--header"}:
            name, _, value = next(it).partition(":")
            headers[name.strip()] = value.strip()
        elif word in {"-d", "--data", "--data-raw"}:
            body = next(it)
        elif word in {"-s", "--silent", "-S", "--show-error"}:
            continue
        elif word.startswith("http"):
            url = word
        else:
            raise AssertionError(f"curl option {word!r} is not understood by the test")
    assert url, f"no URL in {command!r}"
    return method or ("POST" if body is not None else "GET"), url, headers, body


def readme_requests(readme: Path) -> list[Request]:
    """Every documented curl request of ``readme`` with its answer, in order."""
    text = readme.read_text(encoding="utf-8")
    blocks = [(m.group(1), m.group(2), m.start(), m.end()) for m in _FENCE.finditer(text)]
    requests: list[Request] = []
    for i, (lang, code, start, end) in enumerate(blocks):
        if lang not in {"bash", "sh", "shell"} or not code.lstrip().startswith("curl "):
            continue
        line = text.count("\n", 0, start) + 1
        problem = f"{readme.name} line {line}: a curl block must be followed by its ```json answer"
        assert i + 1 < len(blocks), problem
        assert blocks[i + 1][0] == "json", problem
        between = text[end : blocks[i + 1][2]]
        status = _STATUS.search(between)
        assert status, f"{readme.name} line {line}: say the answer's status (e.g. 'HTTP 202')"
        method, url, headers, body = parse_curl(code.strip())
        requests.append(
            Request(
                method, url, headers, body, int(status.group(1)), json.loads(blocks[i + 1][1]), line
            )
        )
    return requests


# -- matching -----------------------------------------------------------------------


@dataclass
class Bindings:
    """README ids -> the ids of this run."""

    ids: dict[str, str] = field(default_factory=dict)

    def apply(self, text: str) -> str:
        return UUID.sub(lambda m: self.ids.get(m.group(0), m.group(0)), text)


def mismatch(expected: Any, actual: Any, bindings: Bindings, where: str = "$") -> str | None:
    """Why ``actual`` is not the documented ``expected`` (None when it is); binds new ids."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"{where}: expected an object, got {actual!r}"
        open_ended = expected.get(ELLIPSIS) == ELLIPSIS
        keys = [k for k in expected if k != ELLIPSIS]
        missing = [k for k in keys if k not in actual]
        extra = [] if open_ended else [k for k in actual if k not in expected]
        if missing or extra:
            return f"{where}: members missing {missing}, not documented {extra}"
        for key in keys:
            problem = mismatch(expected[key], actual[key], bindings, f"{where}.{key}")
            if problem:
                return problem
        return None
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return f"{where}: expected {expected!r}, got {actual!r}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            problem = mismatch(e, a, bindings, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(expected, str) and UUID.search(expected):
        return _match_ids(expected, actual, bindings, where)
    if isinstance(expected, str) and TIMESTAMP.fullmatch(expected):
        ok = isinstance(actual, str) and TIMESTAMP.fullmatch(actual)
        return None if ok else f"{where}: expected a timestamp, got {actual!r}"
    if expected != actual or type(expected) is not type(actual):
        return f"{where}: expected {expected!r}, got {actual!r}"
    return None


def _match_ids(expected: str, actual: Any, bindings: Bindings, where: str) -> str | None:
    """Match a string holding README ids: each id matches a live id, bound consistently."""
    readme_ids = UUID.findall(expected)
    pattern = UUID.sub(lambda _: f"({UUID.pattern})", re.escape(expected).replace(r"\-", "-"))
    found = re.fullmatch(pattern, actual) if isinstance(actual, str) else None
    if found is None:
        return f"{where}: expected {expected!r} (any ids), got {actual!r}"
    for readme_id, live_id in zip(readme_ids, found.groups(), strict=True):
        bound = bindings.ids.get(readme_id)
        if bound is None:
            if live_id in bindings.ids.values():
                return f"{where}: {live_id} is already the live value of another README id"
            bindings.ids[readme_id] = live_id
        elif bound != live_id:
            return f"{where}: expected {bound} (README {readme_id}), got {live_id}"
    return None


def call(
    port: int, method: str, path: str, body: str | None, headers: dict[str, str]
) -> tuple[int, Any]:
    """One HTTP request to 127.0.0.1:``port``: (status, JSON body or text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = body.encode() if body is not None else None
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw.decode("utf-8", "replace")


def _replaced(value: Any, replacements: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _replaced(v, replacements) for k, v in value.items()}
    if isinstance(value, list):
        return [_replaced(v, replacements) for v in value]
    if isinstance(value, str):
        return replacements.get(value, value)
    return value


def replay(
    requests: list[Request],
    port: int,
    timeout: float = 30.0,
    replacements: dict[str, str] | None = None,
) -> Bindings:
    """Send every request to the live server and check its documented answer.

    A GET is repeated until it matches (a saga may still be running) or ``timeout``.
    ``replacements`` maps documented string values to those expected instead (another
    storage backend names itself differently in the health answer).
    """
    bindings = Bindings()
    for request in requests:
        expected = _replaced(request.expected, replacements or {})
        path = urlsplit(bindings.apply(request.url))
        target = path.path + (f"?{path.query}" if path.query else "")
        body = bindings.apply(request.body) if request.body is not None else None
        deadline = time.monotonic() + timeout
        while True:
            trial = Bindings(dict(bindings.ids))
            status, got = call(port, request.method, target, body, request.headers)
            problem = (
                f"HTTP {status}, documented {request.status}"
                if status != request.status
                else mismatch(expected, got, trial)
            )
            if problem is None:
                bindings = trial
                break
            if request.method != "GET" or time.monotonic() > deadline:
                pytest.fail(f"{request}: {problem}\nlive answer: {json.dumps(got, indent=2)}")
            time.sleep(0.1)
    return bindings


# -- servers and databases ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def copy_example(name: str, dest: Path) -> Path:
    """A fresh copy of ``examples/<name>`` (no databases, no caches) in ``dest/examples``."""
    target = dest / "examples" / name
    shutil.copytree(
        EXAMPLES / name,
        target,
        ignore=shutil.ignore_patterns("__pycache__", "*.db", "*.db-*", "*.sqlite3*"),
    )
    return target


def sagaz_command() -> list[str]:
    """The ``sagaz`` console script of this Python (``python -m sagaz.core`` if absent)."""
    script = Path(sys.executable).parent / "sagaz"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "sagaz.core"]


@contextmanager
def serving(
    command: list[str], cwd: Path, env: dict[str, str], port: int, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` (a server on ``port``) until the block ends; wait for /health first."""
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - the documented command
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{shlex.join(command)} exited ({proc.returncode}):\n{log.read_text()}")
            try:
                if call(port, "GET", "/health", None, {})[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{shlex.join(command)} did not serve /health:\n{log.read_text()}")
            time.sleep(0.1)
        time.sleep(0.2)
        if proc.poll() is not None:  # /health answered, but from another server
            pytest.fail(f"{shlex.join(command)} exited ({proc.returncode}):\n{log.read_text()}")
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@contextmanager
def private_postgres_database(label: str) -> Iterator[str]:
    """A new PostgreSQL database for one test (dropped afterwards): its URL."""
    try:
        import psycopg
    except ImportError as exc:
        unavailable(f"psycopg is not installed ({exc}): pip install 'sagaz-core[postgres]'")
    name = f"sagaz_example_{label}_{os.getpid()}"
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL at {PG_URL} is unreachable: {exc}")
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield urlsplit(PG_URL)._replace(path=f"/{name}").geturl()
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
