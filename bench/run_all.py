"""Run every benchmark and print ONE table (what ``nox -s bench`` runs).

    python bench/run_all.py [--quick] [--soak [N]] [--only engine,postgres,...] [--json out.json]

Each part is a ``bench_*.py`` script that also runs alone with its own options; here each
runs with its defaults (or ``--quick``). A part that fails is reported in the table and
the others still run; the exit code is 1 if any part failed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _table import Row, print_table, write_json

#: name -> module; the order of the table.
PARTS = {
    "engine": "bench_engine",
    "postgres": "bench_postgres",
    "outbox": "bench_outbox_relay",
    "fastapi": "bench_fastapi_webhooks",
    "flask": "bench_flask_webhooks",
    "django": "bench_django_webhooks",
}


def main() -> int:
    """Run the parts, print the table; 1 if a part failed."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every part with --quick")
    parser.add_argument(
        "--soak", type=int, nargs="?", const=100_000, default=0,
        help="add the memory soak: N sagas (default 100,000) in one process, RSS per 10k",
    )  # fmt: skip
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    rows: list[Row] = []
    failed = False
    started = time.perf_counter()
    for name in args.only.split(","):
        if name not in PARTS:
            parser.error(f"unknown part {name!r}; choose from {', '.join(PARTS)}")
        module = importlib.import_module(PARTS[name])
        argv = ["--quick"] if args.quick else []
        if name == "engine" and args.soak:
            argv += ["--soak", str(args.soak)]
        part_started = time.perf_counter()
        print(f"== {name} ({PARTS[name]}.py {' '.join(argv)})", flush=True)
        try:
            rows.extend(module.rows(module.parser().parse_args(argv)))
        except (Exception, SystemExit) as exc:
            failed = True
            traceback.print_exc()
            rows.append(Row(name, f"{name}: FAILED", None, notes=[f"{type(exc).__name__}: {exc}"]))
        print(f"   {name}: {time.perf_counter() - part_started:.0f}s", flush=True)
    print_table(rows, f"Sagaz benchmarks ({'quick' if args.quick else 'full'} run, "
                      f"{time.perf_counter() - started:.0f}s)")  # fmt: skip
    if args.json:
        write_json(rows, args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
