"""The example applications' tests: each example started as a user starts it, on a real
server on 127.0.0.1, with the requests of its README replayed."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # sagaz_examples_support
    sys.path.insert(0, str(HERE))
