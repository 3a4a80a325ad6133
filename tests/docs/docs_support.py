"""Helpers of the documentation tests (run by `nox -s docs`): code blocks of the pages.

Code blocks are extracted from the Markdown pages under docs/. A block preceded by
``<!-- file: PATH -->`` is a file the reader saves (the tests write it into a temporary
project folder); every python block must be one. Other blocks are classified by their
language: those in :data:`SKIPPED` (shell commands, their output) are reported as skipped,
each with its reason. A block in any other language fails the test
that lists the page's blocks, so nothing is left out silently.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

#: Languages whose blocks are shown, not run, and why.
SKIPPED = {
    "sh": "a shell command for the reader to type",
    "console": "a shell session",
    "json": "output shown for reference (the page test checks the real answers)",
    "text": "output shown for reference",
}
EXECUTED = {"python"}

_FENCE = re.compile(
    r"^(?:<!-- file: (?P<file>\S+) -->\n)?```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


@dataclass(frozen=True)
class Block:
    """One fenced code block of a documentation page."""

    page: str
    line: int
    lang: str
    body: str
    file: str | None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}:{self.file or self.lang or 'plain'}"


def blocks(page: str) -> list[Block]:
    """The fenced code blocks of docs/``page``, in order."""
    text = (DOCS / page).read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start("lang")) + 1
        found.append(Block(page, line, match["lang"], match["body"], match["file"]))
    return found


def write_files(page: str, folder: Path) -> list[Path]:
    """Save the page's ``<!-- file: -->`` blocks under ``folder`` as a reader would.

    A folder of a saved file becomes a package (``__init__.py``), as
    ``manage.py startapp`` or the reader's editor would make it.
    """
    written = []
    for block in blocks(page):
        if block.file is None:
            continue
        path = folder / block.file
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent != folder:
            (path.parent / "__init__.py").touch()
        path.write_text(block.body, encoding="utf-8")
        written.append(path)
    assert written, f"docs/{page} has no <!-- file: --> blocks"
    return written


def run_python(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run this interpreter in ``cwd`` (a fresh process: the saga registry is global);
    fail the test with the output when it fails."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGAZ_", "DJANGO_"))}
    full_env["PYTHONPATH"] = str(cwd)
    # The reader's pytest has only the plugins it needs; the docs venv may hold more.
    full_env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    full_env.update(env or {})
    proc = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"`python {' '.join(args)}` in {cwd} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc
