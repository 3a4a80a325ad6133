"""``sagaz examples list`` and ``sagaz examples run``: finding the examples folder,
reading each ``example.toml``, checking requirements, and running the commands (for real,
in a subprocess, with examples written to a temporary folder)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from sagaz.core.cli import main
from sagaz.core.examples import (
    EXAMPLES_PATH_ENV,
    ExampleError,
    discover_examples,
    find_example,
    find_examples_dir,
)

REPO_EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

SERVE = """\
import os, sys
from pathlib import Path
print("serving", os.environ["HOST"], os.environ["PORT"], Path.cwd().name,
      os.environ.get("SAGAZ_STORAGE_URL", "-"), " ".join(sys.argv[1:]), flush=True)
sys.exit(int(os.environ.get("EXIT_CODE", "0")))
"""


def write_example(
    folder: Path,
    name: str,
    run: str = '[["{python}", "serve.py", "--bind", "{host}:{port}"]]',
    requires: str = 'json = "json"',
    port: int = 5000,
) -> Path:
    path = folder / name
    path.mkdir(parents=True)
    (path / "example.toml").write_text(
        textwrap.dedent(
            f"""\
            description = "the {name} example"
            framework = "Test"
            port = {port}
            run = {run}

            [requires]
            {requires}
            """
        )
    )
    (path / "serve.py").write_text(SERVE)
    return path


@pytest.fixture
def examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An examples folder with a runnable example and one whose requirement is missing."""
    monkeypatch.delenv(EXAMPLES_PATH_ENV, raising=False)
    folder = tmp_path / "checkout" / "examples"
    write_example(folder, "good_app")
    write_example(folder, "needy_app", requires='sagaz_no_such_module_h2 = "sagaz-nothing[x]"')
    return folder


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real ``sagaz`` command in a subprocess (``run`` replaces its process)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAZ_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "sagaz.core", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_list_shows_each_example_and_what_it_needs(examples: Path) -> None:
    result = invoke("examples", "list", "--path", str(examples))
    assert result.exit_code == 0, result.output
    assert f"examples in {examples}" in result.output
    assert "good_app        the good_app example  [ready]" in result.output
    assert "needy_app       the needy_app example  [needs sagaz-nothing[x]]" in result.output


def test_the_examples_folder_is_found_from_the_current_directory_upwards(
    examples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nested = examples.parent / "src" / "deep"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    assert find_examples_dir() == examples
    monkeypatch.chdir(examples / "good_app")  # inside an example
    assert find_examples_dir() == examples
    assert "good_app" in invoke("examples", "list").output


def test_the_environment_variable_names_the_folder(
    examples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("examples", "list", env={EXAMPLES_PATH_ENV: str(examples)})
    assert result.exit_code == 0, result.output
    assert "good_app" in result.output


def test_no_examples_folder_says_how_to_point_at_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(EXAMPLES_PATH_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    result = invoke("examples", "list")
    assert result.exit_code == 1
    assert "no examples/ folder with examples found" in result.output
    assert "--path" in result.output
    assert EXAMPLES_PATH_ENV in result.output
    missing = invoke("examples", "run", "x", "--path", str(tmp_path / "nope"))
    assert missing.exit_code == 1
    assert "does not exist" in missing.output
    empty = invoke("examples", "list", env={EXAMPLES_PATH_ENV: str(tmp_path)})
    assert empty.exit_code == 1
    assert f"holds no example (no */example.toml): point {EXAMPLES_PATH_ENV}" in empty.output


def test_run_names_the_known_examples_for_an_unknown_one(examples: Path) -> None:
    result = invoke("examples", "run", "nope_app", "--path", str(examples))
    assert result.exit_code == 1
    assert "no example 'nope_app'" in result.output
    assert "the examples are: good_app, needy_app" in result.output


def test_run_says_what_to_install_and_runs_nothing(examples: Path) -> None:
    write_example(examples, "nested_app", requires='"sagaz_no_such_pkg_h2.sub" = "sagaz-sub"')
    nested = invoke("examples", "run", "nested_app", "--path", str(examples))
    assert nested.exit_code == 1
    assert "needs sagaz-sub, not installed" in nested.output
    assert "\n  pip install sagaz-sub" in nested.output  # no requirements.txt: the package
    (examples / "needy_app" / "requirements.txt").write_text("sagaz-nothing[x]\n")
    result = invoke("examples", "run", "needy_app", "--path", str(examples))
    assert result.exit_code == 1
    assert "the needy_app example needs sagaz-nothing[x], not installed" in result.output
    assert f"cd {examples / 'needy_app'} && pip install -r requirements.txt" in result.output
    assert "pip install 'sagaz-nothing[x]'" in result.output
    assert "serving on" not in result.output  # nothing started


def test_dry_run_prints_the_command(examples: Path) -> None:
    result = invoke(
        "examples", "run", "integrations/good_app", "--path", str(examples), "--dry-run"
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        f"cd {examples / 'good_app'} && HOST=127.0.0.1 PORT=5000 "
        "python serve.py --bind 127.0.0.1:5000"
    )
    other = invoke(
        "examples", "run", "good_app", "--path", str(examples), "--dry-run", "--port", "7001"
    )
    assert "PORT=7001 python serve.py --bind 127.0.0.1:7001" in other.output


def test_run_starts_the_command_in_the_example_folder(examples: Path) -> None:
    result = run_cli(
        "--storage-url",
        "sqlite:///x.db",
        "examples",
        "run",
        "good_app",
        "--port",
        "6123",
        cwd=examples.parent,
        env={"EXIT_CODE": "3"},
    )
    # The server replaced the CLI process: its output and its exit code are the command's.
    assert result.returncode == 3, result.stderr
    assert result.stdout == "serving 127.0.0.1 6123 good_app sqlite:///x.db --bind 127.0.0.1:6123\n"
    assert "sagaz: good_app in" in result.stderr
    assert "(storage: SAGAZ_STORAGE_URL)" in result.stderr


def test_run_runs_every_command_and_stops_at_a_failing_one(examples: Path) -> None:
    marker = examples / "marker.txt"
    write_example(
        examples,
        "steps_app",
        run=(
            f'[["{{python}}", "-c", "open({str(marker)!r}, \'a\').write(\'first \')"],'
            ' ["{python}", "serve.py"]]'
        ),
    )
    ok = run_cli("examples", "run", "steps_app", cwd=examples)
    assert ok.returncode == 0, ok.stderr
    assert marker.read_text() == "first "
    assert ok.stdout.startswith("serving 127.0.0.1 5000 steps_app - ")
    write_example(
        examples,
        "broken_app",
        run='[["{python}", "-c", "raise SystemExit(4)"], ["{python}", "serve.py"]]',
    )
    failed = run_cli("examples", "run", "broken_app", cwd=examples)
    assert failed.returncode == 1
    assert "failed (exit code 4)" in failed.stderr
    assert "serving" not in failed.stdout


def test_run_without_replacing_the_process_returns_the_exit_code(examples: Path) -> None:
    from sagaz.core.examples import run_example

    example = find_example(examples, "good_app")
    env = {**os.environ, "EXIT_CODE": "5"}
    assert run_example(example, port=6124, env=env, replace_process=False) == 5


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("run = 3", '"run" must be a list of commands'),
        ('run = [["x"]]\nport = "http"', '"port" must be a port number'),
        ('run = [["x"]]\nrequires = 1', "[requires] must map module names"),
        ("run = [[", "cannot read"),
    ],
)
def test_a_bad_manifest_is_named(tmp_path: Path, manifest: str, message: str) -> None:
    (tmp_path / "bad_app").mkdir()
    (tmp_path / "bad_app" / "example.toml").write_text(manifest)
    with pytest.raises(ExampleError, match="bad_app") as info:
        discover_examples(tmp_path)
    assert message in str(info.value)
    result = invoke("examples", "list", "--path", str(tmp_path))
    assert result.exit_code == 1
    assert message in result.output


def test_the_repository_examples_are_listed() -> None:
    names = [e.name for e in discover_examples(REPO_EXAMPLES)]
    assert names == ["django_app", "fastapi_app", "flask_app"]
    for example in discover_examples(REPO_EXAMPLES):
        assert example.commands(python="python")[-1][0] == "python"
        assert (example.path / "README.md").is_file()
        assert (example.path / "requirements.txt").is_file()
