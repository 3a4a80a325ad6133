"""Versions, changelogs, metadata and release tags of the four distributions agree."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from sagaz_repo_support import DISTRIBUTIONS, ROOT, pyproject

sys.path.insert(0, str(ROOT / ".github" / "scripts"))
import release_check

REPO_URL = "https://github.com/sagaz-dev/sagaz"
LEAF = {"sagaz-core": "sagaz/core"} | {
    d: f"sagaz/integrations/{d.removeprefix('sagaz-')}" for d in DISTRIBUTIONS if d != "sagaz-core"
}
RELEASED = re.compile(r"^## \[(\d[^\]]*)\] - (\d{4}-\d{2}-\d{2})$", re.MULTILINE)


def version_of(distribution: str) -> str:
    return release_check.package_version(ROOT / "packages" / distribution)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_metadata_is_complete(distribution: str) -> None:
    data = pyproject(distribution)
    project = data["project"]
    assert project["name"] == distribution
    assert project["description"].strip()
    assert project["license"] == "MIT"
    assert (ROOT / "packages" / distribution / "LICENSE").is_file()
    assert project["requires-python"].startswith(">=3.")
    assert set(project["dynamic"]) == {"version", "readme"}
    readme = data["tool"]["hatch"]["metadata"]["hooks"]["fancy-pypi-readme"]
    assert readme["fragments"] == [{"path": "README.md"}]
    assert (
        project["urls"]["Changelog"] == f"{REPO_URL}/blob/main/packages/{distribution}/CHANGELOG.md"
    )
    assert project["urls"]["Source"] == f"{REPO_URL}/tree/main/packages/{distribution}"
    assert "Typing :: Typed" in project["classifiers"]
    assert (ROOT / "packages" / distribution / "src" / LEAF[distribution] / "py.typed").is_file()
    version_path = data["tool"]["hatch"]["version"]["path"]
    assert version_path == f"src/{LEAF[distribution]}/_version.py"


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_changelog_keeps_an_unreleased_section(distribution: str) -> None:
    changelog = (ROOT / "packages" / distribution / "CHANGELOG.md").read_text()
    assert "https://keepachangelog.com/" in changelog
    headings = re.findall(r"^## .*$", changelog, re.MULTILINE)
    assert headings[:1] == ["## [Unreleased]"], (
        f"{distribution}/CHANGELOG.md must start with `## [Unreleased]`: {headings[:2]}"
    )
    released = [Version(v) for v, _ in RELEASED.findall(changelog)]
    assert len(headings) == 1 + len(released), f"malformed version headings: {headings}"
    assert released == sorted(released, reverse=True), "versions must go newest first"
    current = Version(version_of(distribution))
    assert all(v <= current for v in released), f"CHANGELOG names a version above {current}"


@pytest.mark.parametrize("distribution", [d for d in DISTRIBUTIONS if d != "sagaz-core"])
def test_plugins_accept_the_core_of_this_checkout(distribution: str) -> None:
    core = version_of("sagaz-core")
    requirements = [Requirement(d) for d in pyproject(distribution)["project"]["dependencies"]]
    (core_range,) = [r for r in requirements if r.name == "sagaz-core"]
    assert core_range.specifier.contains(core), (
        f"{distribution} requires {core_range}, the checkout's core is {core}: widen the range"
        " once the plugin's tests pass against it (docs/compatibility.md)"
    )
    assert any(s.operator == "<" for s in core_range.specifier), f"{core_range} has no cap"


@pytest.fixture(scope="module")
def hatch_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """hatch's environment: its data and cache in a temporary folder, and no VIRTUAL_ENV or UV_*
    (under nox, UV_PYTHON makes hatch's installer fill the session's venv instead of its build
    environment)."""
    home = tmp_path_factory.mktemp("hatch")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"VIRTUAL_ENV", "PYTHONPATH"} and not k.startswith("UV_")
    }
    return {**env, "HATCH_DATA_DIR": str(home / "data"), "HATCH_CACHE_DIR": str(home / "cache")}


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_hatch_version_reads_and_bumps_the_version_file(
    distribution: str, tmp_path: Path, hatch_env: dict[str, str]
) -> None:
    """`hatch version minor` inside a copy of the distribution's folder (the tree is untouched)."""
    copy = tmp_path / distribution
    shutil.copytree(
        ROOT / "packages" / distribution,
        copy,
        ignore=shutil.ignore_patterns("tests", "__pycache__"),
    )
    hatch = [sys.executable, "-m", "hatch", "version"]

    def run(*args: str) -> str:
        done = subprocess.run(
            [*hatch, *args],
            cwd=copy,
            env=hatch_env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"hatch version {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout.strip()

    current = version_of(distribution)
    assert run() == current
    run("minor")
    bumped = Version(current)
    expected = f"{bumped.major}.{bumped.minor + 1}.0"
    assert release_check.package_version(copy) == expected
    assert version_of(distribution) == current


def _release_tree(tmp_path: Path, distribution: str, heading: str | None) -> Path:
    package = tmp_path / "packages" / distribution
    shutil.copytree(
        ROOT / "packages" / distribution, package, ignore=shutil.ignore_patterns("tests", "src")
    )
    version_file = pyproject(distribution)["tool"]["hatch"]["version"]["path"]
    (package / version_file).parent.mkdir(parents=True)
    shutil.copy(ROOT / "packages" / distribution / version_file, package / version_file)
    if heading:
        changelog = package / "CHANGELOG.md"
        text = changelog.read_text().replace("## [Unreleased]", f"## [Unreleased]\n\n{heading}", 1)
        changelog.write_text(text)
    return tmp_path


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_release_check_accepts_a_prepared_release(distribution: str, tmp_path: Path) -> None:
    version = version_of(distribution)
    root = _release_tree(tmp_path, distribution, f"## [{version}] - 2030-01-31")
    assert release_check.check(f"{distribution}-v{version}", root) == {
        "distribution": distribution,
        "package": f"packages/{distribution}",
        "version": version,
    }


@pytest.mark.parametrize(
    ("tag", "heading", "message"),
    [
        ("sagaz-flask-v9.9.9", "## [9.9.9] - 2030-01-31", "bump it with `hatch version 9.9.9`"),
        ("sagaz-flask-v{v}", None, "CHANGELOG.md has no `## [{v}] - YYYY-MM-DD` section"),
        ("sagaz-nope-v{v}", None, "names sagaz-nope, not one of sagaz-flask"),
        ("flask-{v}", None, "is not <distribution>-v<X.Y.Z>"),
    ],
)
def test_release_check_rejects_a_tag_that_disagrees(
    tag: str, heading: str | None, message: str, tmp_path: Path
) -> None:
    version = version_of("sagaz-flask")
    root = _release_tree(tmp_path, "sagaz-flask", heading)
    with pytest.raises(release_check.ReleaseError, match=re.escape(message.format(v=version))):
        release_check.check(tag.format(v=version), root)
