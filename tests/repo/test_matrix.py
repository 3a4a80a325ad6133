"""Each distribution's declared ranges and classifiers agree with the nox matrix."""

from __future__ import annotations

import re
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version
from sagaz_repo_support import DISTRIBUTIONS, pyproject
from trove_classifiers import classifiers as KNOWN_CLASSIFIERS

PLUGINS = ["fastapi", "flask", "django"]
FRAMEWORK_CLASSIFIER = {"fastapi": "FastAPI", "flask": "Flask", "django": "Django"}


def sessions_of(matrix: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in matrix if s["name"] == name]


def declared(distribution: str, name: str) -> Requirement:
    for dependency in pyproject(distribution)["project"]["dependencies"]:
        requirement = Requirement(dependency)
        if canonicalize_name(requirement.name) == name:
            return requirement
    raise AssertionError(f"{distribution} does not declare {name}")


def lower_bound(requirement: Requirement) -> Version:
    lows = [Version(s.version) for s in requirement.specifier if s.operator in {">=", "~=", "=="}]
    assert lows, f"{requirement} has no lower bound"
    return max(lows)


def highest_minor(requirement: Requirement) -> str | None:
    """The highest X.Y the range allows when capped below a minor (`<6.2` -> 6.1)."""
    caps = [Version(s.version) for s in requirement.specifier if s.operator == "<"]
    if not caps:
        return None
    cap = min(caps)
    if cap.minor == 0 or len(cap.release) < 2:
        return None  # capped below a major: the newest minor is whatever is released
    return f"{cap.major}.{cap.minor - 1}"


def minor(version: Version) -> str:
    return f"{version.major}.{version.minor}"


def pinned(session: dict[str, Any], name: str) -> list[Requirement]:
    pins = [Requirement(p) for p in session["call_spec"].get("pins", [])]
    return [p for p in pins if canonicalize_name(p.name) == name]


@pytest.mark.parametrize("key", PLUGINS)
def test_lowest_session_installs_every_declared_lower_bound(
    key: str, full_matrix: list[dict[str, Any]], noxfile: ModuleType
) -> None:
    plugin = noxfile.PLUGINS[key]
    distribution = f"sagaz-{key}"
    framework = declared(distribution, plugin["framework"])
    low = lower_bound(framework)
    lowest = [
        s
        for s in sessions_of(full_matrix, f"tests_{key}")
        if s["call_spec"]["version"] == minor(low)
    ]
    assert lowest, (
        f"no tests_{key} session tests {framework.name} {minor(low)}, the declared lowest"
    )
    companions = {canonicalize_name(Requirement(c).name) for c in plugin.get("companions", [])}
    for session in lowest:
        for dependency in pyproject(distribution)["project"]["dependencies"]:
            requirement = Requirement(dependency)
            name = canonicalize_name(requirement.name)
            if name.startswith("sagaz-") or name in companions:
                continue
            pins = pinned(session, name)
            assert [str(p.specifier) for p in pins] == [f"=={lower_bound(requirement)}"], (
                f"{session['session']} must pin {requirement.name}=={lower_bound(requirement)}"
                f" (the lower bound of {requirement} in {distribution}/pyproject.toml): {pins}"
            )


@pytest.mark.parametrize("key", PLUGINS)
def test_every_tested_version_is_inside_the_declared_range(
    key: str, full_matrix: list[dict[str, Any]], noxfile: ModuleType
) -> None:
    plugin = noxfile.PLUGINS[key]
    framework = declared(f"sagaz-{key}", plugin["framework"])
    for session in sessions_of(full_matrix, f"tests_{key}"):
        for pin in pinned(session, plugin["framework"]):
            version = next(iter(pin.specifier)).version
            assert framework.specifier.contains(version), (
                f"{session['session']} installs {pin}, outside {framework}"
            )


@pytest.mark.parametrize("key", PLUGINS)
def test_framework_classifiers_are_the_tested_versions(
    key: str, full_matrix: list[dict[str, Any]], noxfile: ModuleType
) -> None:
    """Versioned framework classifiers = the minors the matrix tests, "latest" being the
    highest minor under the declared cap. A framework without versioned classifiers on PyPI
    gets its plain `Framework :: X` classifier."""
    plugin = noxfile.PLUGINS[key]
    distribution = f"sagaz-{key}"
    name = FRAMEWORK_CLASSIFIER[key]
    framework = declared(distribution, plugin["framework"])
    ours = pyproject(distribution)["project"]["classifiers"]
    assert f"Framework :: {name}" in ours
    versioned = {c.rsplit(" :: ", 1)[1] for c in ours if c.startswith(f"Framework :: {name} :: ")}
    pypi_has_versions = any(c.startswith(f"Framework :: {name} :: ") for c in KNOWN_CLASSIFIERS)
    if not pypi_has_versions:
        assert not versioned
        return
    labels = {s["call_spec"]["version"] for s in sessions_of(full_matrix, f"tests_{key}")}
    tested = labels - {"latest"}
    if "latest" in labels:
        newest = highest_minor(framework)
        assert newest, f"{framework}: cap the range below a minor (`<X.Y`) to name the newest"
        tested.add(newest)
    assert versioned == tested, (
        f"{distribution}/pyproject.toml classifiers name {name} {sorted(versioned)}, the matrix"
        f" tests {sorted(tested)} (PLUGINS in noxfile.py, range {framework})"
    )


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_python_classifiers_and_requires_python_match_the_matrix(
    distribution: str, full_matrix: list[dict[str, Any]]
) -> None:
    project = pyproject(distribution)["project"]
    name = "tests_core" if distribution == "sagaz-core" else f"tests_{distribution[6:]}"
    pythons = {s["python"] for s in sessions_of(full_matrix, name)}
    classified = {
        m.group(1)
        for c in project["classifiers"]
        if (m := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c))
    }
    assert classified == pythons, f"{distribution}: classifiers {classified}, matrix {pythons}"
    requires = SpecifierSet(project["requires-python"])
    lowest = min(pythons, key=Version)
    assert requires.contains(f"{lowest}.0")
    assert not requires.contains(f"{Version(lowest).major}.{Version(lowest).minor - 1}.99"), (
        f"{distribution}: requires-python {requires} allows Pythons below {lowest}, untested"
    )


@pytest.mark.parametrize("key", PLUGINS)
def test_default_run_has_each_version_once(
    key: str, full_matrix: list[dict[str, Any]], default_matrix: list[dict[str, Any]]
) -> None:
    full = sessions_of(full_matrix, f"tests_{key}")
    default = sessions_of(default_matrix, f"tests_{key}")
    versions = [s["call_spec"]["version"] for s in default]
    assert sorted(versions) == sorted({s["call_spec"]["version"] for s in full}), (
        f"the default run of tests_{key} should test each framework version once: {versions}"
    )
    assert {s["session"] for s in default} <= {s["session"] for s in full}


def test_default_run_covers_every_python_with_some_plugin(
    full_matrix: list[dict[str, Any]], default_matrix: list[dict[str, Any]]
) -> None:
    plugin_sessions = [f"tests_{key}" for key in PLUGINS]
    full = {s["python"] for name in plugin_sessions for s in sessions_of(full_matrix, name)}
    default = {s["python"] for name in plugin_sessions for s in sessions_of(default_matrix, name)}
    assert default == full, f"no plugin's tests run on {sorted(full - default)} by default"


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_classifiers_are_known_to_pypi(distribution: str) -> None:
    unknown = set(pyproject(distribution)["project"]["classifiers"]) - set(KNOWN_CLASSIFIERS)
    assert not unknown, f"{distribution}: PyPI rejects the upload with classifiers {unknown}"
