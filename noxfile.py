"""The Sagaz build and test matrix.

`nox` runs the default sessions: lint, typecheck, every test session, coverage, build.
`nox -l` lists them; `nox -s NAME` runs one; `nox -t tests -p 3.12` runs the tests on one Python.

Pythons: the sessions use those of 3.11/3.12/3.13 whose `pythonX.Y` runs from PATH (with pyenv,
list them in PYENV_VERSION, e.g. `PYENV_VERSION=3.11.7:3.12.1:3.13.0`). SAGAZ_ALL_PYTHONS=1
declares all three whether present or not (the GitHub workflow does; nox then fetches or
fails on a missing one).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import nox
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv|virtualenv"

ROOT = Path(__file__).resolve().parent
PACKAGES = ROOT / "packages"
DIST = ROOT / "dist"

CORE = "packages/sagaz-core"
CORE_EXTRAS = "sqlite,postgres,redis,rabbitmq,otel,prometheus"
TEST_DEPS = [
    "pytest>=8",
    "pytest-asyncio>=0.24",
    "coverage[toml]>=7.6",
    "hypothesis>=6.100",
    "opentelemetry-sdk>=1.20",
]
RUFF = "ruff~=0.17.0"
MYPY = "mypy~=2.4.0"
FAIL_UNDER = 90  # branch coverage, per distribution (DESIGN section 5)

# Framework plugins: one entry each. An entry whose folder does not exist yet is ignored.
#   package   folder of the distribution
#   module    what it owns under the `sagaz` namespace
#   framework the requirement name whose range the plugin declares in its pyproject
#   versions  label -> {"pins": requirements installed with it (companions too),
#                       "python": Pythons it runs on (default: all present)}.
#             Test the lowest minor the plugin declares and the highest it allows ("latest",
#             no pin: the newest release inside the plugin's own range). A pin outside the
#             declared range makes the install fail, so keep both in step.
#   deps      extra test-only requirements;  typing  extra requirements mypy needs
PLUGINS: dict[str, dict[str, Any]] = {
    "fastapi": {
        "package": "packages/sagaz-fastapi",
        "module": "sagaz.integrations.fastapi",
        "framework": "fastapi",
        "versions": {
            # The plan's lowest: FastAPI 0.100 / Starlette 0.27 (pydantic 2.8 on 3.13 for wheels).
            "0.100": {
                "pins": [
                    "fastapi==0.100.0",
                    "starlette==0.27.0",
                    "pydantic==2.0.3",
                    "httpx==0.24.1",
                    "uvicorn==0.22.0",
                ],
                "python": ["3.11", "3.12"],
            },
            "0.100-py313": {
                "pins": [
                    "fastapi==0.100.0",
                    "starlette==0.27.0",
                    "pydantic==2.8.2",
                    "httpx==0.24.1",
                    "uvicorn==0.22.0",
                ],
                "python": ["3.13"],
            },
            "latest": {"pins": []},
        },
        "deps": ["httpx", "uvicorn"],
    },
    "flask": {
        "package": "packages/sagaz-flask",
        "module": "sagaz.integrations.flask",
        "framework": "flask",
        "versions": {
            # Flask 2.0 imports only with Werkzeug 2.x: pin the companion too.
            "2.0": {"pins": ["flask~=2.0.0", "werkzeug~=2.0.0"]},
            "latest": {"pins": []},
        },
        "deps": ["gunicorn"],
    },
    "django": {
        "package": "packages/sagaz-django",
        "module": "sagaz.integrations.django",
        "framework": "django",
        # Every supported Django once, each on a Python it supports (6.x needs >= 3.12),
        # all three Pythons covered: the default run stays under CI's budget on 2 cores.
        "versions": {
            "4.2": {"pins": ["django~=4.2.0"], "python": ["3.11"]},
            "5.2": {"pins": ["django~=5.2.0"], "python": ["3.11"]},
            "6.0": {"pins": ["django~=6.0.0"], "python": ["3.12"]},
            "latest": {"pins": [], "python": ["3.13"]},
        },
        "deps": ["pytest-django", "gunicorn", "uvicorn", "httpx"],
        "typing": ["django-stubs"],
        # The suite runs once per database backend.
        "test_envs": [{"SAGAZ_TEST_DB": "sqlite"}, {"SAGAZ_TEST_DB": "postgres"}],
    },
}

ALL_PYTHONS = ["3.11", "3.12", "3.13"]


def _python_runs(version: str) -> bool:
    """True when `pythonX.Y` on PATH starts (a pyenv shim exists even for inactive versions)."""
    exe = shutil.which(f"python{version}")
    if exe is None:
        return False
    try:
        out = subprocess.run(  # noqa: S603 - an interpreter found on PATH, fixed code
            [exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and out.stdout.strip() == version


def _detect_pythons() -> list[str]:
    if os.environ.get("SAGAZ_ALL_PYTHONS", "").lower() in {"1", "true", "yes"}:
        return list(ALL_PYTHONS)
    # None found: declare all, so nox reports them missing instead of running nothing.
    return [v for v in ALL_PYTHONS if _python_runs(v)] or list(ALL_PYTHONS)


PYTHONS = _detect_pythons()
DEFAULT_PYTHON = PYTHONS[0]
ACTIVE_PLUGINS = {k: p for k, p in PLUGINS.items() if (ROOT / p["package"]).is_dir()}


def _existing(*paths: str) -> list[str]:
    return [p for p in paths if (ROOT / p).exists()]


def _run_tests(
    session: nox.Session,
    label: str,
    tests: str,
    install: list[str],
    test_envs: list[dict[str, str]] | None = None,
) -> None:
    """Install (one command), then run one distribution's tests under coverage into its own
    data file. pytest's "no tests collected" (exit code 5) fails the session like any error."""
    if not (ROOT / tests).is_dir():
        session.error(f"{tests} does not exist: this distribution has no tests yet")
    session.install(*install, *TEST_DEPS)
    data = ROOT / f".coverage.{label}"
    # Drop this session's data from an earlier run; with parallel=true coverage writes
    # `.coverage.<label>.<host>.<pid>.<random>`.
    for old in [data, *ROOT.glob(f"{data.name}.*")]:
        old.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k == "CI" or k.startswith("SAGAZ_")}
    env["COVERAGE_FILE"] = str(data)
    for extra in test_envs or [{}]:
        session.run(
            "coverage",
            "run",
            "-m",
            "pytest",
            tests,
            "--import-mode=importlib",
            *session.posargs,
            env={**env, **extra},
        )


def _editable(*packages: str) -> list[str]:
    """`-e pkg` for each package, core with all its extras: one install command."""
    args = ["-e", f"{CORE}[{CORE_EXTRAS}]"]
    for package in packages:
        args += ["-e", package]
    return args


@nox.session(python=PYTHONS, tags=["tests"])
def tests_core(session: nox.Session) -> None:
    """sagaz-core's tests, with all its extras."""
    _run_tests(session, f"core-{session.python}", f"{CORE}/tests", _editable())


def _check_lowest(session: nox.Session, plugin: dict[str, Any]) -> None:
    """The lowest minor of the framework range the plugin declares must be in `versions`."""
    project = tomllib.loads((ROOT / plugin["package"] / "pyproject.toml").read_text())["project"]
    for dependency in project.get("dependencies", []):
        requirement = Requirement(dependency)
        if canonicalize_name(requirement.name) != plugin["framework"]:
            continue
        lows = [s.version for s in requirement.specifier if s.operator in {">=", "~=", "=="}]
        if not lows:
            session.error(f"{plugin['package']} declares {requirement} without a lower bound")
        lowest = ".".join(max(lows, key=Version).split(".")[:2])
        if lowest not in plugin["versions"]:
            session.error(
                f"{plugin['package']} declares {requirement}, but the matrix does not test"
                f" {plugin['framework']} {lowest}: add it to PLUGINS in noxfile.py"
            )
        return
    session.error(f"{plugin['package']} does not depend on {plugin['framework']}")


def _plugin_session(key: str, plugin: dict[str, Any]) -> str | None:
    """Register `tests_<key>` parametrised over (Python, framework version); return its name."""
    params = []
    for label, spec in plugin["versions"].items():
        for python in spec.get("python", ALL_PYTHONS):
            if python in PYTHONS:
                params.append(nox.param(python, label, spec["pins"], id=f"{python}-{key}-{label}"))
    if not params:
        return None  # none of its Pythons is here

    def session_func(session: nox.Session, version: str, pins: list[str]) -> None:
        _check_lowest(session, plugin)
        # Core and plugin in ONE install (a plugin alone sends pip to the index for sagaz-core).
        install = [*_editable(plugin["package"]), *pins, *plugin.get("deps", [])]
        _run_tests(
            session,
            f"{key}-{session.python}-{version}",
            f"{plugin['package']}/tests",
            install,
            plugin.get("test_envs"),
        )

    session_func.__doc__ = f"{plugin['module']} against the core, per framework version."
    name = f"tests_{key}"
    nox.session(name=name, tags=["tests", key])(
        nox.parametrize("python,version,pins", params)(session_func)
    )
    return name


PLUGIN_TEST_SESSIONS = [n for k, p in ACTIVE_PLUGINS.items() if (n := _plugin_session(k, p))]


def _distributions() -> list[Path]:
    return sorted(p for p in PACKAGES.glob("*") if (p / "pyproject.toml").is_file())


@nox.session(python=DEFAULT_PYTHON)
def coverage(session: nox.Session) -> None:
    """Combine the test sessions' data; each distribution needs 90% branch coverage."""
    session.install("coverage[toml]>=7.6")
    env = {"COVERAGE_FILE": str(ROOT / ".coverage")}
    parts = [p for p in ROOT.glob(".coverage.*") if p.is_file()]
    if parts:
        session.run("coverage", "combine", *map(str, parts), env=env)
    elif not (ROOT / ".coverage").is_file():
        session.error("no coverage data: run the test sessions first")
    failed = []
    for dist in _distributions():
        session.log(f"coverage of {dist.name} (at least {FAIL_UNDER}% branch coverage)")
        try:
            session.run(
                "coverage",
                "report",
                f"--include={dist.relative_to(ROOT)}/src/*",
                f"--fail-under={FAIL_UNDER}",
                env=env,
            )
        except nox.command.CommandFailed:
            failed.append(dist.name)
    if failed:
        session.error(f"under {FAIL_UNDER}% coverage (or no data): {', '.join(failed)}")


@nox.session(python=DEFAULT_PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(RUFF)
    paths = _existing("packages", "bench", "examples", "scripts", "noxfile.py")
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session(python=DEFAULT_PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over every packages/*/src, with the root configuration."""
    typing = [dep for p in ACTIVE_PLUGINS.values() for dep in p.get("typing", [])]
    packages = [p["package"] for p in ACTIVE_PLUGINS.values()]
    session.install(*_editable(*packages), *typing, MYPY)
    session.run("mypy", "--strict", *session.posargs)


NAMESPACE_INITS = ("sagaz/__init__.py", "sagaz/integrations/__init__.py")
SKIP_DIRS = {"dist", "build", "node_modules", "__pycache__"}  # and every .dir (.git, .nox, .venv)


WHEEL_SMOKE = """\
import importlib.util, sys
import sagaz, sagaz.core
assert getattr(sagaz, "__file__", None) is None, f"sagaz is not a namespace: {sagaz.__file__}"
missing = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]
assert not missing, f"not importable from the wheels: {missing}"
print("namespace ok:", ", ".join(["sagaz.core", *sys.argv[1:]]))
"""


def _artifacts() -> list[Path]:
    return sorted([*DIST.glob("*.whl"), *DIST.glob("*.tar.gz")])


def _namespace_violations() -> list[str]:
    """Every file that would own the shared `sagaz` or `sagaz.integrations` namespace."""
    found = []
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        rel = Path(top).relative_to(ROOT).as_posix()
        for name in files:
            if f"{rel}/{name}".endswith(NAMESPACE_INITS):
                found.append(f"source tree: {rel}/{name} (delete it)")
    for artifact in _artifacts():
        if artifact.suffix == ".whl":
            with zipfile.ZipFile(artifact) as whl:
                names = whl.namelist()
            found += [f"{artifact.name}: ships {n}" for n in names if n in NAMESPACE_INITS]
            if not any(n.startswith("sagaz/") and n.endswith("/py.typed") for n in names):
                found.append(f"{artifact.name}: ships no py.typed in its sagaz/... package")
        elif artifact.name.endswith(".tar.gz"):
            with tarfile.open(artifact) as sdist:
                names = sdist.getnames()
            found += [f"{artifact.name}: ships {n}" for n in names if n.endswith(NAMESPACE_INITS)]
    return found


@nox.session(python=DEFAULT_PYTHON)
def build(session: nox.Session) -> None:
    """Wheel and sdist of every packages/*/ into dist/; namespace check; twine check."""
    shutil.rmtree(DIST, ignore_errors=True)
    DIST.mkdir()
    session.install("twine", *([] if session.venv_backend == "uv" else ["build"]))
    for dist in _distributions():
        if session.venv_backend == "uv":
            session.run("uv", "build", "--out-dir", str(DIST), str(dist))
        else:
            session.run("python", "-m", "build", "--outdir", str(DIST), str(dist))

    if violations := _namespace_violations():
        session.error(
            "`sagaz` and `sagaz.integrations` are PEP 420 namespaces that no distribution owns,"
            " and each wheel ships its py.typed (DESIGN section 1):\n  " + "\n  ".join(violations)
        )
    session.run("twine", "check", "--strict", *map(str, _artifacts()))

    # The wheels alone, installed together, must resolve every package through the namespace.
    session.install(*map(str, sorted(DIST.glob("*.whl"))))
    smoke = Path(session.create_tmp()) / "namespace_smoke.py"
    smoke.write_text(WHEEL_SMOKE)
    session.run("python", str(smoke), *[p["module"] for p in ACTIVE_PLUGINS.values()])


@nox.session(python=DEFAULT_PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Run every bench/*.py (never part of the default run); posargs go to each script."""
    scripts = sorted((ROOT / "bench").glob("*.py"))
    if not scripts:
        session.skip("no bench/*.py yet")
    requirements = _existing("bench/requirements.txt")
    session.install(*_editable(), *(["-r", *requirements] if requirements else []))
    for script in scripts:
        session.run("python", str(script.relative_to(ROOT)), *session.posargs)


nox.options.sessions = [
    "lint",
    "typecheck",
    "tests_core",
    *PLUGIN_TEST_SESSIONS,
    "coverage",
    "build",
]
