"""``python -m sagaz.core``: the ``sagaz`` command line."""

from sagaz.core.cli import main

main(prog_name="sagaz")
