"""Rows of benchmark results and the one table they print as.

Every ``bench_*.py`` script returns ``list[Row]`` from its ``rows(args)`` function; run
alone it prints them with :func:`print_table`, and ``bench/run_all.py`` prints the rows of
every script in one table. A row's ``floor`` is the rate of the same work written by hand
with no library, measured in the same run; ``ratio`` is ``rate / floor`` (higher is
better, 1.0 = as fast as the hand-written code).
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

__all__ = ["Row", "median", "percentile", "print_table", "write_json"]


@dataclass
class Row:
    """One measured case."""

    group: str
    case: str
    rate: float | None
    unit: str = "sagas/s"
    floor: float | None = None
    cpu_us: float | None = None  # CPU microseconds per saga (or per request), this process
    commits: float | None = None  # commits per saga, when counted
    p50_ms: float | None = None
    p99_ms: float | None = None
    terminal_s: float | None = None  # seconds from the first request until all sagas ended
    floor_terminal_s: float | None = None
    target: float | None = None  # the issue's performance target for ``rate``
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        """``rate / floor``, when both are known."""
        if self.rate is None or not self.floor:
            return None
        return self.rate / self.floor

    @property
    def verdict(self) -> str:
        """``ok`` / ``MISS`` against the target, empty when the row has none."""
        if self.target is None or self.rate is None:
            return ""
        return "ok" if self.rate >= self.target else "MISS"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) of ``values`` (nearest rank), None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def _num(value: float | None, fmt: str, width: int) -> str:
    return f"{value:{width}{fmt}}" if value is not None else f"{'-':>{width}}"


def print_table(rows: Iterable[Row], title: str = "") -> None:
    """Print ``rows`` as one aligned table, grouped, with a legend."""
    rows = list(rows)
    load = os.getloadavg()[0]
    if title:
        print()
        print(title)
    print(f"(load average {load:.1f} on {os.cpu_count()} CPUs: figures move with machine load)")
    header = (
        f"{'case':<46} {'rate':>9} {'unit':<10} {'floor':>9} {'ratio':>6} {'CPU us':>8} "
        f"{'commits':>7} {'p50 ms':>7} {'p99 ms':>7} {'end s':>6} {'floor s':>7} "
        f"{'target':>7} {'':>4}"
    )
    print(header)
    print("-" * len(header))
    group = None
    for row in rows:
        if row.group != group:
            group = row.group
            print(f"[{group}]")
        print(
            f"  {row.case[:44]:<44} {_num(row.rate, ',.0f', 9)} {row.unit:<10} "
            f"{_num(row.floor, ',.0f', 9)} {_num(row.ratio, '.2f', 6)} "
            f"{_num(row.cpu_us, ',.0f', 8)} {_num(row.commits, '.2f', 7)} "
            f"{_num(row.p50_ms, '.1f', 7)} {_num(row.p99_ms, '.1f', 7)} "
            f"{_num(row.terminal_s, '.2f', 6)} {_num(row.floor_terminal_s, '.2f', 7)} "
            f"{_num(row.target, ',.0f', 7)} {row.verdict:>4}"
        )
        for note in row.notes:
            print(f"      note: {note}")
    print(
        "rate: higher is better; floor: the same work hand-written with no library, same run; "
        "ratio = rate/floor;\nCPU us: per saga (per request for webhooks: the server's); "
        "end s: seconds from the first request until every saga is terminal."
    )


def write_json(rows: Iterable[Row], path: str) -> None:
    """Save ``rows`` (with ratios) as JSON, to compare runs later."""
    data = [{**asdict(r), "ratio": r.ratio} for r in rows]
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def median(values: Iterable[float]) -> float:
    """The median (a convenience for scripts that repeat runs)."""
    return statistics.median(list(values))
