"""Helpers of the repository checks: the nox matrix as nox lists it, and the pyprojects.

The matrix is read from `nox --list --json` (run here, as the GitHub workflow runs it), never
copied into these tests: each check compares what a pyproject declares with what nox runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = sorted(p.parent.name for p in (ROOT / "packages").glob("*/pyproject.toml"))


def nox_list(*, full: bool) -> list[dict[str, Any]]:
    """`nox --list --json` with every Python declared; `full` sets SAGAZ_FULL_MATRIX=1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAZ_")}
    env["SAGAZ_ALL_PYTHONS"] = "1"
    if full:
        env["SAGAZ_FULL_MATRIX"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "nox", "--list", "--json", "-f", str(ROOT / "noxfile.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"nox --list --json failed:\n{done.stdout}\n{done.stderr}"
    return list(json.loads(done.stdout))


def pyproject(distribution: str) -> dict[str, Any]:
    return tomllib.loads((ROOT / "packages" / distribution / "pyproject.toml").read_text())
