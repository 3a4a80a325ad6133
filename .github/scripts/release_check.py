"""Check a release tag against the distribution it names, before anything is built.

    python .github/scripts/release_check.py sagaz-flask-v0.2.0

A tag is `<distribution>-v<version>`: `packages/<distribution>/` must exist, its `_version.py`
(the file `hatch version` bumps) must hold exactly that version, and its CHANGELOG.md must have a
`## [<version>] - YYYY-MM-DD` section. Prints `distribution=`, `package=` and `version=` lines
(append them to $GITHUB_OUTPUT); exits non-zero with the reason otherwise.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TAG = re.compile(r"^(?P<distribution>sagaz-[a-z0-9-]+?)-v(?P<version>\d+\.\d+\.\d+(?:\S*))$")


class ReleaseError(Exception):
    """The tag does not match the tree; the message says which file to fix."""


def package_version(package: Path) -> str:
    """The version hatch reads from the distribution's `[tool.hatch.version] path`."""
    project = tomllib.loads((package / "pyproject.toml").read_text())
    path = package / project["tool"]["hatch"]["version"]["path"]
    match = re.search(r"^__version__ = \"([^\"]+)\"$", path.read_text(), re.MULTILINE)
    if match is None:
        raise ReleaseError(f'{path} has no `__version__ = "X.Y.Z"` line')
    return match.group(1)


def check(tag: str, root: Path = ROOT) -> dict[str, str]:
    """The distribution, its folder and version named by `tag`, once they agree with `root`."""
    match = TAG.match(tag)
    if match is None:
        raise ReleaseError(f"tag {tag!r} is not <distribution>-v<X.Y.Z>, e.g. sagaz-flask-v0.2.0")
    distribution, version = match["distribution"], match["version"]
    package = root / "packages" / distribution
    if not (package / "pyproject.toml").is_file():
        known = sorted(p.parent.name for p in (root / "packages").glob("*/pyproject.toml"))
        raise ReleaseError(f"tag {tag!r} names {distribution}, not one of {', '.join(known)}")
    declared = package_version(package)
    if declared != version:
        raise ReleaseError(
            f"tag {tag!r} says {version} but packages/{distribution} is at {declared}: bump it"
            f" with `hatch version {version}` in packages/{distribution} (see RELEASING.md)"
        )
    changelog = (package / "CHANGELOG.md").read_text()
    heading = re.compile(rf"^## \[{re.escape(version)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", re.MULTILINE)
    if not heading.search(changelog):
        raise ReleaseError(
            f"packages/{distribution}/CHANGELOG.md has no `## [{version}] - YYYY-MM-DD` section:"
            " move the Unreleased entries under it (see RELEASING.md)"
        )
    return {
        "distribution": distribution,
        "package": f"packages/{distribution}",
        "version": version,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tag", help="the pushed tag, e.g. sagaz-flask-v0.2.0")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args(argv)
    try:
        found = check(args.tag, args.root)
    except ReleaseError as error:
        sys.exit(f"release check failed: {error}")
    for key, value in found.items():
        print(f"{key}={value}")


if __name__ == "__main__":
    main()
