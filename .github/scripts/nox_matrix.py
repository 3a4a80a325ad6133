"""Turn `nox --list --json` into a GitHub Actions job matrix: one job per session.

    nox --list --json | python .github/scripts/nox_matrix.py --tag tests

prints `matrix={"include": [{"session": ..., "python": ..., "artifact": ...}, ...]}` (append it
to $GITHUB_OUTPUT). `session` is what `nox -s` takes, `python` the interpreter the job installs,
`artifact` a name for the job's uploads (GitHub refuses some characters in artifact names).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any


def job_matrix(sessions: list[dict[str, Any]], tag: str) -> dict[str, list[dict[str, str]]]:
    """The jobs of every session carrying `tag`, in nox's order."""
    include = []
    for entry in sessions:
        if tag not in entry.get("tags", []):
            continue
        python = entry.get("python")
        if not isinstance(python, str):
            raise SystemExit(f"session {entry['session']} has no single Python: {python!r}")
        artifact = re.sub(r"[^A-Za-z0-9._-]+", "-", entry["session"]).strip("-")
        include.append({"session": entry["session"], "python": python, "artifact": artifact})
    if not include:
        raise SystemExit(f"no nox session is tagged {tag!r}: nothing to run")
    return {"include": include}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", required=True, help="select the sessions with this nox tag")
    args = parser.parse_args(argv)
    matrix = job_matrix(json.load(sys.stdin), args.tag)
    print("matrix=" + json.dumps(matrix, separators=(",", ":")))


if __name__ == "__main__":
    main()
