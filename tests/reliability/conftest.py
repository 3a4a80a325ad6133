"""The reliability suite: real processes and real servers on 127.0.0.1, figures at the end.

``SAGAZ_RELIABILITY_SCALE`` (default 1: the issue's sizes) scales every run; the figures
each test records are printed as a table in the terminal summary (no ``-s`` needed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# The helper modules of this folder are imported by name, here and in child processes.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import sagaz_reliability_support as support  # noqa: E402


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures the suite measured (sagas, kills, recoveries, 503s, lost, ...)."""
    lines = support.summary_lines()
    if not lines:
        return
    terminalreporter.section(f"sagaz reliability figures (scale {support.SCALE:g})")
    for line in lines:
        terminalreporter.write_line(line)


@pytest.fixture
def figures() -> type[support.FigureRecorder]:
    """``figures.record(section, name=value, ...)``: figures for the summary table."""
    return support.FigureRecorder
