"""The Sagaz build and test matrix.

`nox` runs the default sessions: lint, typecheck, every test session, coverage, build.
`nox -l` lists them; `nox -s NAME` runs one; `nox -t tests -p 3.12` runs the tests on one Python.

Pythons: the sessions use those of 3.11/3.12/3.13 whose `pythonX.Y` runs from PATH (with pyenv,
list them in PYENV_VERSION, e.g. `PYENV_VERSION=3.11.7:3.12.1:3.13.0`). SAGAZ_ALL_PYTHONS=1
declares all three whether present or not (the GitHub workflow does; nox then fetches or
fails on a missing one).

Framework versions: the default run tests each framework version of a plugin once, with the
Pythons spread over the plugins; SAGAZ_FULL_MATRIX=1 (the GitHub workflow) runs every pair (see
PLUGINS).
`nox -s compat` (not a default session) tests against the lowest versions each pyproject allows
and against the newest; see docs/compatibility.md.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
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
#   package    folder of the distribution
#   module     what it owns under the `sagaz` namespace
#   framework  the requirement name whose range the plugin declares in its pyproject
#   versions   the framework versions the test matrix runs, label -> {"python": Pythons of the
#              full matrix (default: all), "default": Pythons of the default run}:
#                "lowest"  the lower bound of every requirement the plugin's pyproject
#                          declares, pinned `==` (read from the pyproject, never written here);
#                          its session label is the framework's lowest minor, e.g. "4.2"
#                "X.Y"     a minor tested in between (`framework~=X.Y.0`), inside the range
#                "latest"  no pin: the newest release inside the plugin's declared range
#              The default run (CI on 2 cores, a time budget) keeps each version once, the
#              Pythons spread over the plugins so that every Python runs some plugin's tests;
#              SAGAZ_FULL_MATRIX=1 (the GitHub workflow) runs every Python listed in "python".
#              tests/repo checks the classifiers of each pyproject against this matrix.
#              "default_test_envs" (optional) replaces "test_envs" in the default run only.
#   companions requirements added to the "lowest" pins (same name: they replace the pin) so that
#              an old framework release imports and its test client works; a PEP 508 marker
#              limits one to some Pythons
#   deps       extra test-only requirements;  typing  extra requirements mypy needs
PLUGINS: dict[str, dict[str, Any]] = {
    "fastapi": {
        "package": "packages/sagaz-fastapi",
        "module": "sagaz.integrations.fastapi",
        "framework": "fastapi",
        "versions": {
            "lowest": {"default": ["3.11"]},
            "latest": {"default": ["3.13"]},
        },
        "companions": [
            # Starlette 0.27's TestClient passes `app=` to httpx, removed in httpx 0.28.
            "httpx==0.24.1",
            "uvicorn==0.22.0",
            # pydantic-core has wheels for Python 3.13 from pydantic 2.8 on.
            'pydantic==2.8.2; python_version >= "3.13"',
        ],
        "deps": ["httpx", "uvicorn"],
    },
    "flask": {
        "package": "packages/sagaz-flask",
        "module": "sagaz.integrations.flask",
        "framework": "flask",
        "versions": {
            "lowest": {"default": ["3.11"]},
            "latest": {"default": ["3.12"]},
        },
        # Flask 2.0 does not cap Werkzeug and fails to import with Werkzeug 3.
        "companions": ["werkzeug~=2.0.0"],
        "deps": ["gunicorn"],
    },
    "django": {
        "package": "packages/sagaz-django",
        "module": "sagaz.integrations.django",
        "framework": "django",
        # Django 6.x needs Python >= 3.12.
        "versions": {
            "lowest": {"python": ["3.11", "3.12"], "default": ["3.11"]},
            # The default run tests PostgreSQL with the lowest and the newest Django; the
            # versions in between on SQLite only (the full matrix runs both everywhere).
            "5.2": {
                "python": ["3.11", "3.12", "3.13"],
                "default": ["3.11"],
                "default_test_envs": [{"SAGAZ_TEST_DB": "sqlite"}],
            },
            "6.0": {
                "python": ["3.12", "3.13"],
                "default": ["3.12"],
                "default_test_envs": [{"SAGAZ_TEST_DB": "sqlite"}],
            },
            "latest": {"python": ["3.12", "3.13"], "default": ["3.13"]},
        },
        "deps": ["pytest-django", "gunicorn", "uvicorn", "httpx"],
        "typing": ["django-stubs"],
        # The suite runs once per database backend.
        "test_envs": [{"SAGAZ_TEST_DB": "sqlite"}, {"SAGAZ_TEST_DB": "postgres"}],
    },
}

ALL_PYTHONS = ["3.11", "3.12", "3.13"]
# Every (framework version, Python) pair of PLUGINS, and the core's slow tests on every Python.
FULL_MATRIX = os.environ.get("SAGAZ_FULL_MATRIX") == "1"


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
    pytest_args: list[str] | None = None,
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
            *(pytest_args or []),
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
    """sagaz-core's tests, with all its extras.

    The slow multi-process tests (`-m slow`: workers killed and restarted, 1,000-saga splits) run
    on the first Python only, unless SAGAZ_FULL_MATRIX=1 (the GitHub workflow sets it): they
    exercise processes and databases, not the interpreter, and CI on 2 cores has a time budget.
    """
    full = session.python == DEFAULT_PYTHON or os.environ.get("SAGAZ_FULL_MATRIX") == "1"
    select = [] if full else ["-m", "not slow"]
    _run_tests(session, f"core-{session.python}", f"{CORE}/tests", _editable(), pytest_args=select)


class MatrixError(Exception):
    """A pyproject and the PLUGINS matrix disagree; the message names the fix."""


def _pyproject(package: str) -> dict[str, Any]:
    return tomllib.loads((ROOT / package / "pyproject.toml").read_text())


def _applies(requirement: Requirement, python: str) -> bool:
    """Whether the requirement's PEP 508 marker (if any) holds on Python `python` (X.Y)."""
    if requirement.marker is None:
        return True
    env = {"python_version": python, "python_full_version": f"{python}.0", "extra": ""}
    return requirement.marker.evaluate(env)


def _lowest(requirement: Requirement, package: str) -> str:
    """The lowest version `requirement` allows (its `>=`, `~=` or `==` bound)."""
    lows = [s.version for s in requirement.specifier if s.operator in {">=", "~=", "=="}]
    if not lows:
        raise MatrixError(
            f"{package}/pyproject.toml declares {requirement} without a lower bound: add the"
            " lowest version that works (`>=X.Y`); the compat session tests it"
        )
    return max(lows, key=Version)


def lowest_pins(package: str, python: str, extras: tuple[str, ...] = ()) -> list[str]:
    """`name==lowest` for each requirement `package`'s pyproject declares (and those of its
    `extras`) that applies on `python`. sagaz-* requirements are skipped: the checkout is
    installed instead."""
    project = _pyproject(package)["project"]
    declared = list(project.get("dependencies", []))
    for extra in extras:
        declared += project.get("optional-dependencies", {})[extra]
    pins = []
    for dependency in declared:
        requirement = Requirement(dependency)
        if canonicalize_name(requirement.name).startswith("sagaz-"):
            continue
        if _applies(requirement, python):
            extra_names = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
            pins.append(f"{requirement.name}{extra_names}=={_lowest(requirement, package)}")
    return pins


def _with_companions(pins: list[str], companions: list[str], python: str) -> list[str]:
    """`pins` plus the companions that apply on `python`; a companion replaces a pin of the
    same name."""
    merged = {canonicalize_name(Requirement(pin).name): pin for pin in pins}
    for companion in companions:
        requirement = Requirement(companion)
        if _applies(requirement, python):
            requirement.marker = None
            merged[canonicalize_name(requirement.name)] = str(requirement)
    return list(merged.values())


def framework_requirement(plugin: dict[str, Any]) -> Requirement:
    """The plugin's declared framework range, from its pyproject."""
    for dependency in _pyproject(plugin["package"])["project"].get("dependencies", []):
        requirement = Requirement(dependency)
        if canonicalize_name(requirement.name) == plugin["framework"]:
            return requirement
    raise MatrixError(
        f"{plugin['package']}/pyproject.toml does not depend on {plugin['framework']}"
    )


def version_pins(plugin: dict[str, Any], label: str, python: str) -> tuple[str, list[str]]:
    """(session label, requirements to install) of one framework version of the matrix."""
    requirement = framework_requirement(plugin)
    if label == "lowest":
        lowest = _lowest(requirement, plugin["package"])
        pins = lowest_pins(plugin["package"], python)
        return ".".join(lowest.split(".")[:2]), _with_companions(
            pins, plugin.get("companions", []), python
        )
    if label == "latest":
        return label, []
    if not requirement.specifier.contains(f"{label}.0"):
        raise MatrixError(
            f"PLUGINS in noxfile.py tests {plugin['framework']} {label}, outside the range"
            f" {plugin['package']}/pyproject.toml declares ({requirement}): widen the range"
            " or drop that version"
        )
    return label, [f"{requirement.name}~={label}.0"]


def matrix_pythons(spec: dict[str, Any], full: bool = FULL_MATRIX) -> list[str]:
    """The Pythons one framework version runs on: all listed in the full matrix, else the
    default run's."""
    pythons = spec.get("python", ALL_PYTHONS)
    return list(pythons if full else spec.get("default", pythons))


def _plugin_session(key: str, plugin: dict[str, Any]) -> str | None:
    """Register `tests_<key>` parametrised over (Python, framework version); return its name."""
    params = []
    problem = ""
    try:
        for label, spec in plugin["versions"].items():
            for python in matrix_pythons(spec):
                if python in PYTHONS:
                    version, pins = version_pins(plugin, label, python)
                    envs = plugin.get("test_envs")
                    if not FULL_MATRIX:
                        envs = spec.get("default_test_envs", envs)
                    params.append(
                        nox.param(python, version, pins, envs, id=f"{python}-{key}-{version}")
                    )
    except MatrixError as error:
        # Keep `nox -l` working; the session says what to fix.
        problem = str(error)
        params = [
            nox.param(DEFAULT_PYTHON, "invalid", [], None, id=f"{DEFAULT_PYTHON}-{key}-invalid")
        ]
    if not params:
        return None  # none of its Pythons is here

    def session_func(
        session: nox.Session,
        version: str,
        pins: list[str],
        envs: list[dict[str, str]] | None,
    ) -> None:
        if problem:
            session.error(problem)
        # Core and plugin in ONE install (a plugin alone sends pip to the index for sagaz-core).
        install = [*_editable(plugin["package"]), *pins, *plugin.get("deps", [])]
        _run_tests(
            session,
            f"{key}-{session.python}-{version}",
            f"{plugin['package']}/tests",
            install,
            envs,
        )

    session_func.__doc__ = f"{plugin['module']} against the core, per framework version."
    name = f"tests_{key}"
    nox.session(name=name, tags=["tests", key])(
        nox.parametrize("python,version,pins,envs", params)(session_func)
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
    """ruff check and ruff format --check; bandit over packages/*/src; pip-audit of the
    dependencies (see _pip_audit for when its vulnerability service is unreachable)."""
    session.install(RUFF, BANDIT, PIP_AUDIT)
    paths = _existing("packages", "bench", "examples", "scripts", "tests", ".github", "noxfile.py")
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)
    sources = [str(p.relative_to(ROOT)) for p in sorted(PACKAGES.glob("*/src"))]
    session.run("bandit", "-q", "-c", "pyproject.toml", "-r", *sources)
    _pip_audit(session)


BANDIT = "bandit~=1.9"
PIP_AUDIT = "pip-audit~=2.9"
#: pip-audit's default vulnerability service: the PyPI JSON API, per release.
AUDIT_PROBE = "https://pypi.org/pypi/pip/24.0/json"


def _audit_service_problem() -> str | None:
    """Why pip-audit cannot reach its vulnerability service from here, or None."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(AUDIT_PROBE, timeout=15) as answer:
            if "vulnerabilities" in json.load(answer):
                return None
            return f"{AUDIT_PROBE} answered without vulnerability data"
    except Exception as exc:
        return f"{AUDIT_PROBE} is unreachable ({exc})"


def _pip_audit(session: nox.Session) -> None:
    """Audit every third-party dependency of the four distributions (all extras).

    Without the vulnerability service (an offline machine, a proxy that serves only the
    package index) the session says so; under CI=true that is a failure, unless
    SAGAZ_AUDIT_OFFLINE_OK=1 acknowledges it (the warning is still printed).
    """
    problem = _audit_service_problem()
    if problem is not None:
        message = f"pip-audit cannot check for known vulnerabilities: {problem}"
        if (
            os.environ.get("CI", "").lower() == "true"
            and os.environ.get("SAGAZ_AUDIT_OFFLINE_OK") != "1"
        ):
            session.error(f"{message}. Set SAGAZ_AUDIT_OFFLINE_OK=1 to accept that on this runner")
        session.warn(f"{message}; the dependency audit is SKIPPED on this machine")
        return
    typing = [dep for p in ACTIVE_PLUGINS.values() for dep in p.get("typing", [])]
    session.install(*_editable(*[p["package"] for p in ACTIVE_PLUGINS.values()]), *typing)
    frozen = (
        session.run("python", "-m", "pip", "freeze", "--exclude-editable", silent=True)
        if (session.venv_backend != "uv")
        else session.run("uv", "pip", "freeze", "--exclude-editable", silent=True)
    )
    requirements = Path(session.create_tmp()) / "audit-requirements.txt"
    requirements.write_text(str(frozen))
    session.run(
        "pip-audit",
        "--requirement",
        str(requirements),
        "--no-deps",
        "--disable-pip",
        "--strict",  # a dependency the service does not know fails the audit
        "--progress-spinner",
        "off",
    )


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


RELATIVE_LINK = re.compile(r"\]\((?!https?://|#|mailto:)[^)\s]+\)")


def dist_version(dist: Path) -> str:
    """The version in the distribution's `_version.py` (what `hatch version` reads and bumps)."""
    path = _pyproject(str(dist.relative_to(ROOT)))["tool"]["hatch"]["version"]["path"]
    match = re.search(r"^__version__ = \"([^\"]+)\"$", (dist / path).read_text(), re.MULTILINE)
    if match is None:
        raise MatrixError(f'{dist.name}: {path} has no `__version__ = "X.Y.Z"` line')
    return match.group(1)


def _metadata_problems() -> list[str]:
    """What PyPI users would miss in dist/: one wheel and one sdist per distribution at the
    version of its _version.py, with summary, README long description (no relative links),
    license file, Requires-Python, a Changelog URL, and plugins accepting this core."""
    problems = []
    core_version = dist_version(PACKAGES / "sagaz-core")
    for dist in _distributions():
        stem = f"{dist.name.replace('-', '_')}-{dist_version(dist)}"
        wheels = sorted(DIST.glob(f"{stem}-*.whl"))
        sdist = DIST / f"{stem}.tar.gz"
        if len(wheels) != 1 or not sdist.is_file():
            problems.append(f"{dist.name}: expected one {stem}-*.whl and {stem}.tar.gz in dist/")
            continue
        with zipfile.ZipFile(wheels[0]) as whl:
            names = whl.namelist()
            meta = email.message_from_bytes(whl.read(f"{stem}.dist-info/METADATA"))
        for field in ("Summary", "Requires-Python", "License-Expression", "License-File"):
            if not meta.get(field):
                problems.append(f"{wheels[0].name}: no {field} in METADATA")
        if not any(n.startswith(f"{stem}.dist-info/licenses/") for n in names):
            problems.append(f"{wheels[0].name}: ships no license file")
        body = meta.get_payload()
        if meta.get("Description-Content-Type") != "text/markdown" or "# " not in str(body):
            problems.append(f"{wheels[0].name}: the long description is not the Markdown README")
        problems += [
            f"{wheels[0].name}: relative link {link} in the long description (broken on PyPI)"
            for link in RELATIVE_LINK.findall(str(body))
        ]
        urls = {u.split(",", 1)[0].strip() for u in meta.get_all("Project-URL") or []}
        problems += [
            f"{wheels[0].name}: no {u} project URL"
            for u in ("Changelog", "Source")
            if u not in urls
        ]
        for requirement in map(Requirement, meta.get_all("Requires-Dist") or []):
            if requirement.name == "sagaz-core" and not requirement.specifier.contains(
                core_version
            ):
                problems.append(
                    f"{wheels[0].name}: requires {requirement}, which excludes the sagaz-core"
                    f" {core_version} built beside it: widen the range (see RELEASING.md)"
                )
        with tarfile.open(sdist) as tar:
            members = {n.split("/", 1)[-1] for n in tar.getnames()}
        problems += [
            f"{sdist.name}: does not ship {need}"
            for need in ("README.md", "CHANGELOG.md", "LICENSE", "pyproject.toml")
            if need not in members
        ]
    return problems


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
    if problems := _metadata_problems():
        session.error("dist/ is not ready for PyPI:\n  " + "\n  ".join(problems))

    # The wheels alone, installed together, must resolve every package through the namespace.
    session.install(*map(str, sorted(DIST.glob("*.whl"))))
    smoke = Path(session.create_tmp()) / "namespace_smoke.py"
    smoke.write_text(WHEEL_SMOKE)
    session.run("python", str(smoke), *[p["module"] for p in ACTIVE_PLUGINS.values()])


# install_wheels: what each smoke script needs beside the plugin (its framework's test client).
SMOKE_DEPS = {"fastapi": ["httpx"], "flask": [], "django": []}
SMOKE_DIR = ROOT / "tests" / "repo" / "smoke"


def _wheels_by_name() -> dict[str, Path]:
    """dist/'s wheels, by distribution name; errors when dist/ is missing or stale."""
    wheels = {}
    for dist in _distributions():
        stem = f"{dist.name.replace('-', '_')}-{dist_version(dist)}"
        found = sorted(DIST.glob(f"{stem}-*.whl"))
        if len(found) != 1:
            raise MatrixError(
                f"dist/ has no wheel {stem}-*.whl (found: {[p.name for p in DIST.glob('*.whl')]}):"
                " run `nox -s build` first; install_wheels installs what build made"
            )
        wheels[dist.name] = found[0]
    return wheels


class _Venv:
    """A fresh virtual environment outside the source tree, filled from dist/'s wheels."""

    def __init__(self, session: nox.Session, path: Path) -> None:
        self.session, self.path, self.python = session, path, path / "bin" / "python"
        self.uv = session.venv_backend == "uv"
        base = str(Path(session.bin) / "python")
        if self.uv:
            session.run("uv", "venv", "--quiet", "--python", base, str(path), silent=True)
        else:
            session.run("python", "-m", "venv", str(path), silent=True)

    def pip(self, *args: str) -> None:
        if self.uv:
            self.session.run("uv", "pip", *args[:1], "--python", str(self.python), *args[1:])
        else:
            self.session.run(str(self.python), "-m", "pip", *args, external=True)

    def smoke(self, workdir: Path, *plugins: str) -> None:
        """Run each plugin's smoke script in `workdir`, with no variable from this process
        (no PYTHONPATH, no virtualenv of nox's)."""
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "LANG": "C.UTF-8"}
        with self.session.chdir(workdir):
            for plugin in plugins:
                self.session.log(f"smoke test of sagaz-{plugin} in {self.path.name}")
                self.session.run(
                    str(self.python),
                    f"smoke_{plugin}.py",
                    env=env,
                    include_outer_env=False,
                    external=True,
                )


@nox.session(python=DEFAULT_PYTHON)
def install_wheels(session: nox.Session) -> None:
    """Each plugin from dist/'s wheels alone in a fresh venv, smoke-tested through its framework;
    then all together, and uninstalling any one leaves the others working. Needs `build`."""
    try:
        wheels = _wheels_by_name()
    except MatrixError as error:
        session.error(str(error))
    plugins = [key for key, p in ACTIVE_PLUGINS.items() if Path(p["package"]).name in wheels]
    with tempfile.TemporaryDirectory(prefix="sagaz-install-wheels-") as tmp:
        work = Path(tmp) / "work"
        shutil.copytree(SMOKE_DIR, work, ignore=shutil.ignore_patterns("__pycache__"))
        core = str(wheels["sagaz-core"])
        for key in plugins:
            venv = _Venv(session, Path(tmp) / f"venv-{key}")
            venv.pip("install", core, str(wheels[f"sagaz-{key}"]), *SMOKE_DEPS[key])
            venv.smoke(work, key)

        venv = _Venv(session, Path(tmp) / "venv-all")
        smoke_deps = [dep for key in plugins for dep in SMOKE_DEPS[key]]
        venv.pip("install", core, *(str(wheels[f"sagaz-{key}"]) for key in plugins), *smoke_deps)
        for key in plugins:
            others = [k for k in plugins if k != key]
            venv.pip("uninstall", *([] if venv.uv else ["-y"]), f"sagaz-{key}")
            gone = f"assert util.find_spec('sagaz.integrations.{key}') is None, 'still there'"
            session.run(
                str(venv.python), "-c", f"from importlib import util; {gone}", external=True
            )
            venv.smoke(work, *others)
            venv.pip("install", str(wheels[f"sagaz-{key}"]))


# compat: what the tests of each distribution run against.
#   core-lowest       the core's tests, every requirement of the core (and its extras) `==` lowest
#   <plugin>-lowest   the plugin's tests, every requirement of the plugin and of the core `==`
#                     lowest (plus the plugin's companions), on the lowest Python
#   <plugin>-newest   the plugin's tests, everything at its newest release, on the newest Python
def _compat_params() -> list[Any]:
    params = [nox.param(PYTHONS[0], "core-lowest", id="core-lowest")]
    for key in ACTIVE_PLUGINS:
        params.append(nox.param(PYTHONS[0], f"{key}-lowest", id=f"{key}-lowest"))
        params.append(nox.param(PYTHONS[-1], f"{key}-newest", id=f"{key}-newest"))
    return params


@nox.session(default=False)
@nox.parametrize("python,target", _compat_params())
def compat(session: nox.Session, target: str) -> None:
    """Tests against the lowest versions each pyproject allows, and against the newest."""
    key, bound = target.rsplit("-", 1)
    extras = tuple(CORE_EXTRAS.split(","))
    python = str(session.python)
    install: list[str] = []
    try:
        if bound == "lowest":
            install += lowest_pins(CORE, python, extras)
        if key == "core":
            install += _editable()
            tests = f"{CORE}/tests"
        else:
            plugin = ACTIVE_PLUGINS[key]
            if bound == "lowest":
                _, pins = version_pins(plugin, "lowest", python)
                install += pins
            install += [*_editable(plugin["package"]), *plugin.get("deps", [])]
            tests = f"{plugin['package']}/tests"
    except MatrixError as error:
        session.error(str(error))
    session.install(*(["--upgrade"] if bound == "newest" else []), *install, *TEST_DEPS)
    if session.venv_backend == "uv":
        session.run("uv", "pip", "list", "--python", str(Path(session.bin) / "python"))
    else:
        session.run("python", "-m", "pip", "list")
    env = {k: v for k, v in os.environ.items() if k == "CI" or k.startswith("SAGAZ_")}
    for extra in ACTIVE_PLUGINS.get(key, {}).get("test_envs") or [{}]:
        session.run(
            "pytest", tests, "-p", "no:cacheprovider", *session.posargs, env={**env, **extra}
        )


@nox.session(python=DEFAULT_PYTHON)
def tests_repo(session: nox.Session) -> None:
    """tests/repo: pyprojects, nox matrix, workflows, changelogs and versions agree."""
    # pytest-asyncio only because the root pytest configuration names its options.
    session.install(
        "pytest>=8",
        "pytest-asyncio",
        "pyyaml>=6",
        "packaging>=24",
        "nox",
        "trove-classifiers",
        "hatch",
    )
    session.run("pytest", "tests/repo", "-p", "no:cacheprovider", *session.posargs)


# The documentation site (docs/, mkdocs.yml): Material theme, mkdocstrings for the API reference.
DOCS_DEPS = [
    "mkdocs>=1.6,<2",
    "mkdocs-material>=9.5,<10",
    "mkdocstrings[python]>=1.0,<2",
    "pytest>=8",
    "pytest-asyncio>=0.24",
    "httpx",  # FastAPI's TestClient, for the getting-started pages
]


@nox.session(python=DEFAULT_PYTHON)
def docs(session: nox.Session) -> None:
    """Build the site with `mkdocs build --strict` (a broken link or reference fails), then
    tests/docs: the getting-started pages' code runs, every `__all__` name is documented."""
    session.install(*_editable(*[p["package"] for p in ACTIVE_PLUGINS.values()]), *DOCS_DEPS)
    site = Path(session.create_tmp()) / "site"
    shutil.rmtree(site, ignore_errors=True)
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", str(site), env={"NO_MKDOCS_2_WARNING": "1"}
    )
    env = {"SAGAZ_DOCS_SITE": str(site)}
    session.run("pytest", "tests/docs", "-p", "no:cacheprovider", *session.posargs, env=env)


# tests/reliability: crashes, database and broker faults, load (real processes and servers).
RELIABILITY_DEPS = [
    "pytest>=8",
    "pytest-asyncio>=0.24",
    "hypothesis>=6.100",
    "schemathesis>=3.30",
    "httpx",
    "uvicorn",
    "gunicorn",
]


@nox.session(python=DEFAULT_PYTHON)
def reliability(session: nox.Session) -> None:
    """tests/reliability (with its hostile/ part): workers SIGKILLed, a private PostgreSQL
    restarted, private Redis/RabbitMQ stopped, webhook load on the three plugins' servers.

    Prints its figures at the end. Sizes: SAGAZ_RELIABILITY_SCALE (default 1: the issue's);
    under CI=true the load part sends 1,000 POSTs per plugin instead of 5,000
    (SAGAZ_RELIABILITY_LOAD_SCALE=0.2, unless set) to stay within CI's time budget.
    """
    packages = [p["package"] for p in ACTIVE_PLUGINS.values()]
    session.install(*_editable(*packages), *RELIABILITY_DEPS)
    env = {k: v for k, v in os.environ.items() if k == "CI" or k.startswith("SAGAZ_")}
    if os.environ.get("CI", "").lower() == "true":
        env.setdefault("SAGAZ_RELIABILITY_LOAD_SCALE", "0.2")
    session.run("pytest", "tests/reliability", "-p", "no:cacheprovider", *session.posargs, env=env)


@nox.session(python=DEFAULT_PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """The benchmark table: bench/run_all.py (never part of the default run).

    posargs go to run_all.py: `nox -s bench -- --quick`, `-- --soak`, `-- --only engine,postgres`
    (bench/README.md). Needs PostgreSQL, Redis and RabbitMQ on loopback, as the tests do.
    """
    requirements = _existing("bench/requirements.txt")
    packages = [p["package"] for p in ACTIVE_PLUGINS.values()]
    session.install(*_editable(*packages), *(["-r", *requirements] if requirements else []))
    session.run("python", "bench/run_all.py", *session.posargs)


@nox.session(python=DEFAULT_PYTHON)
def examples(session: nox.Session) -> None:
    """examples/: each example started with `sagaz examples run` on 127.0.0.1, its README's
    requests replayed (tests/examples), on SQLite and on PostgreSQL."""
    packages = [p["package"] for p in ACTIVE_PLUGINS.values()]
    session.install(*_editable(*packages), "uvicorn", "pytest>=8", "pytest-asyncio")
    env = {k: v for k, v in os.environ.items() if k == "CI" or k.startswith("SAGAZ_")}
    session.run("pytest", "tests/examples", "-p", "no:cacheprovider", *session.posargs, env=env)


nox.options.sessions = [
    "lint",
    "tests_repo",
    "typecheck",
    "tests_core",
    *PLUGIN_TEST_SESSIONS,
    "docs",
    "examples",
    "reliability",
    "coverage",
    "build",
    "install_wheels",
]
