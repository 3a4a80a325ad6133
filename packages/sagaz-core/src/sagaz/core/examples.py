"""Find and run the example applications (``sagaz examples list`` / ``sagaz examples run``).

The examples live in the ``examples/`` folder of a Sagaz checkout, one folder each, and
each folder describes itself in an ``example.toml``::

    description = "Flask: SagaFlask, the webhook blueprint, run_sync"
    framework = "Flask"
    port = 5000                       # default port, passed as PORT (and {port})
    run = [["{python}", "main.py"]]   # the commands, in order; the last one serves

    [requires]                        # module to import -> what to pip install
    flask = "flask"
    "sagaz.integrations.flask" = "sagaz-flask"

The examples folder is ``--path``, else ``SAGAZ_EXAMPLES_PATH``, else the first
``examples/`` folder holding an ``example.toml`` found from the current directory
upwards. An example is named by its folder (``flask_app``); ``integrations/flask_app``
(the plan's layout) names the same one.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sagaz.core.errors import ConfigurationError

__all__ = [
    "EXAMPLES_PATH_ENV",
    "MANIFEST",
    "Example",
    "ExampleError",
    "check_requirements",
    "discover_examples",
    "find_example",
    "find_examples_dir",
    "missing_requirements",
    "run_example",
]

#: The environment variable naming the examples folder.
EXAMPLES_PATH_ENV = "SAGAZ_EXAMPLES_PATH"
#: The file that makes a folder an example.
MANIFEST = "example.toml"
_ALIAS_PREFIXES = ("integrations/", "examples/", "examples/integrations/")
_DEFAULT_HOST = "127.0.0.1"


class ExampleError(ConfigurationError):
    """An example cannot be found, read or run; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class Example:
    """One example application, as its ``example.toml`` describes it."""

    name: str
    path: Path
    description: str
    framework: str
    port: int
    run: tuple[tuple[str, ...], ...]
    requires: Mapping[str, str] = field(default_factory=dict)

    def commands(
        self, *, host: str = _DEFAULT_HOST, port: int | None = None, python: str | None = None
    ) -> list[list[str]]:
        """The commands that start the example, with ``{python}``, ``{host}``, ``{port}``
        filled in."""
        values = {
            "python": python or sys.executable,
            "host": host,
            "port": str(self.port if port is None else port),
        }
        return [[arg.format(**values) for arg in command] for command in self.run]

    def shown_commands(self, *, host: str = _DEFAULT_HOST, port: int | None = None) -> str:
        """The commands as a shell line (``python`` for the interpreter)."""
        return " && ".join(
            shlex.join(c) for c in self.commands(host=host, port=port, python="python")
        )


def find_examples_dir(
    path: str | os.PathLike[str] | None = None, *, start: Path | None = None
) -> Path:
    """The examples folder: ``path``, else ``$SAGAZ_EXAMPLES_PATH``, else the first
    ``examples/`` with an example in it from ``start`` (the current directory) upwards.

    Raises :class:`ExampleError` naming the fix when there is none.
    """
    given = path if path is not None else os.environ.get(EXAMPLES_PATH_ENV) or None
    if given is not None:
        folder = Path(given).expanduser().resolve()
        source = "--path" if path is not None else EXAMPLES_PATH_ENV
        if not folder.is_dir():
            raise ExampleError(
                f"the examples folder {folder} ({source}) does not exist: point {source} at the "
                "examples/ folder of a Sagaz checkout"
            )
        if not _examples_in(folder):
            raise ExampleError(
                f"{folder} ({source}) holds no example (no */{MANIFEST}): point {source} at the "
                "examples/ folder of a Sagaz checkout"
            )
        return folder
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidates = [folder / "examples"]
        if folder.name == "examples":  # inside the examples folder itself
            candidates.append(folder)
        for candidate in candidates:
            if candidate.is_dir() and _examples_in(candidate):
                return candidate
    raise ExampleError(
        f"no examples/ folder with examples found in {here} or above it. Run this command "
        "inside a clone of the Sagaz repository (git clone https://github.com/sagaz-dev/sagaz), "
        f"or pass --path /path/to/sagaz/examples (or set {EXAMPLES_PATH_ENV})"
    )


def _examples_in(folder: Path) -> list[Path]:
    return sorted(p.parent for p in folder.glob(f"*/{MANIFEST}") if p.is_file())


def _load(manifest: Path) -> Example:
    where = f"{manifest}"
    try:
        data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ExampleError(f"cannot read {where}: {exc}") from None
    run = data.get("run")
    if (
        not isinstance(run, list)
        or not run
        or not all(isinstance(c, list) and c and all(isinstance(a, str) for a in c) for c in run)
    ):
        raise ExampleError(
            f'{where}: "run" must be a list of commands, each a list of strings, e.g. '
            'run = [["{python}", "main.py"]]'
        )
    requires = data.get("requires", {})
    if not isinstance(requires, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in requires.items()
    ):
        raise ExampleError(f"{where}: [requires] must map module names to pip requirements")
    port = data.get("port", 8000)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ExampleError(f'{where}: "port" must be a port number, not {port!r}')
    return Example(
        name=manifest.parent.name,
        path=manifest.parent,
        description=str(data.get("description", "")),
        framework=str(data.get("framework", "")),
        port=port,
        run=tuple(tuple(c) for c in run),
        requires=dict(requires),
    )


def discover_examples(folder: Path) -> list[Example]:
    """Every example in ``folder``, by name."""
    return [_load(path / MANIFEST) for path in _examples_in(folder)]


def find_example(folder: Path, name: str) -> Example:
    """The example called ``name`` (its folder name; ``integrations/NAME`` works too).

    Raises :class:`ExampleError` listing the known names when there is none.
    """
    wanted = name.strip().strip("/")
    for prefix in _ALIAS_PREFIXES:
        if wanted.startswith(prefix):
            wanted = wanted[len(prefix) :]
    examples = discover_examples(folder)
    for example in examples:
        if example.name == wanted:
            return example
    known = ", ".join(e.name for e in examples)
    raise ExampleError(f"no example {name!r} in {folder}; the examples are: {known}")


def missing_requirements(example: Example) -> list[str]:
    """The pip requirements of ``example`` whose module this Python cannot import."""
    missing: list[str] = []
    for module, requirement in example.requires.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found and requirement not in missing:
            missing.append(requirement)
    return missing


def _install_hint(example: Example, missing: Sequence[str]) -> str:
    lines = [
        f"the {example.name} example needs {', '.join(missing)}, not installed in this Python "
        f"({sys.executable}). Install its requirements:",
    ]
    if (example.path / "requirements.txt").is_file():
        lines.append(f"  cd {shlex.quote(str(example.path))} && pip install -r requirements.txt")
        lines.append(f"(outside a Sagaz checkout: pip install {shlex.join(missing)})")
    else:
        lines.append(f"  pip install {shlex.join(missing)}")
    return "\n".join(lines)


def check_requirements(example: Example) -> None:
    """Raise :class:`ExampleError` with the ``pip install`` to run when ``example``'s
    requirements are not importable in this Python."""
    missing = missing_requirements(example)
    if missing:
        raise ExampleError(_install_hint(example, missing))


def run_example(
    example: Example,
    *,
    host: str = _DEFAULT_HOST,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    replace_process: bool | None = None,
) -> int:
    """Run the example's commands in its folder; the last one serves until stopped.

    ``HOST`` and ``PORT`` are set in the environment (and fill ``{host}``/``{port}``).
    Checks first that the example's requirements are importable (:class:`ExampleError`
    with the ``pip install`` to run if not). On POSIX the last command replaces this
    process (``replace_process``), so signals reach the server directly; else its exit
    code is returned.
    """
    check_requirements(example)
    chosen_port = example.port if port is None else port
    child_env = dict(os.environ if env is None else env)
    child_env["HOST"] = host
    child_env["PORT"] = str(chosen_port)
    commands = example.commands(host=host, port=chosen_port)
    if replace_process is None:
        replace_process = os.name == "posix"
    *before, last = commands
    for command in before:
        code = subprocess.run(command, cwd=example.path, env=child_env, check=False).returncode  # noqa: S603
        if code != 0:
            raise ExampleError(
                f"`{shlex.join(command)}` failed (exit code {code}) in {example.path}; "
                "see its output above"
            )
    if replace_process:
        sys.stdout.flush()
        sys.stderr.flush()
        os.chdir(example.path)
        os.execvpe(last[0], last, child_env)  # noqa: S606 - the example's own command
    return subprocess.run(last, cwd=example.path, env=child_env, check=False).returncode  # noqa: S603
