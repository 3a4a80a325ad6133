"""Each example, started with ``sagaz examples run NAME`` (the command its README gives)
on a free port of 127.0.0.1, answers its README's requests as documented, on the
embedded SQLite default and on PostgreSQL through ``SAGAZ_STORAGE_URL``."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from sagaz_examples_support import (
    EXAMPLES,
    copy_example,
    free_port,
    private_postgres_database,
    readme_requests,
    replay,
    sagaz_command,
    serving,
)

NAMES = ["fastapi_app", "flask_app", "django_app"]
#: What the health answers name differently on PostgreSQL.
ON_POSTGRES = {"SQLiteSagaStorage": "PostgresSagaStorage", "sqlite": "postgresql"}


def _documented_commands(name: str) -> list[str]:
    manifest = tomllib.loads((EXAMPLES / name / "example.toml").read_text())
    values = {"python": "python", "host": "127.0.0.1", "port": manifest["port"]}
    return [" ".join(arg.format(**values) for arg in command) for command in manifest["run"]]


@pytest.mark.parametrize("name", NAMES)
def test_readme_documents_the_commands_and_both_outcomes(name: str) -> None:
    readme = (EXAMPLES / name / "README.md").read_text()
    assert f"sagaz examples run {name}" in readme
    for command in _documented_commands(name):
        assert command in readme, f"{name}/README.md does not show `{command}`"
    assert "SAGAZ_STORAGE_URL=postgresql://" in readme
    requests = readme_requests(EXAMPLES / name / "README.md")
    states = {
        saga.get("state")
        for r in requests
        if isinstance(r.expected, dict)
        for saga in [r.expected, *r.expected.get("sagas", [])]
        if isinstance(saga, dict)
    }
    assert {"COMPLETED", "COMPENSATED"} <= states, f"{name}: README shows states {states}"
    paths = {r.url.split("5000")[-1].split("8000")[-1] for r in requests}
    assert any(p == "/webhooks/order_created" for p in paths)
    assert any(p.startswith("/orders") for p in paths)
    assert "/health" in paths


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("name", NAMES)
def test_example_answers_its_readme(name: str, backend: str, tmp_path: Path) -> None:
    folder = copy_example(name, tmp_path)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGAZ_", "DJANGO_"))}
    command = [*sagaz_command(), "examples", "run", name, "--port", str(port)]
    requests = readme_requests(folder / "README.md")
    if backend == "sqlite":
        with serving(command, folder, env, port, tmp_path / "server.log"):
            replay(requests, port)
        assert any(folder.glob("*.db")) or (folder / "db.sqlite3").is_file()
        return
    with private_postgres_database(name) as url:
        env["SAGAZ_STORAGE_URL"] = url
        with serving(command, folder, env, port, tmp_path / "server.log"):
            replay(requests, port, replacements=ON_POSTGRES)
        assert not any(folder.glob("*.db"))
        assert not (folder / "db.sqlite3").exists()
