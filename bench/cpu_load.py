"""A process that keeps a fraction of one core busy for as long as a benchmark runs.

It stands in for work that could be moved out of the gateway's process (the session log's
encoding and hashing, say) but would still need a core on this machine. Running the same
benchmark with and without it says what such a move could gain at most.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from procs import background

PERIOD_SECONDS = 0.01

# Busy for `fraction` of every period, asleep for the rest.
_LOOP = """
import sys, time
busy = float(sys.argv[1]) * {period}
while True:
    until = time.monotonic() + busy
    while time.monotonic() < until:
        pass
    time.sleep({period} - busy)
""".format(period=PERIOD_SECONDS)


@contextlib.contextmanager
def cpu_load(fraction: float, log_path: Path) -> Iterator[None]:
    """Keep `fraction` (0 < fraction < 1) of one core busy inside the block; nothing when 0."""
    if fraction <= 0:
        yield
        return
    with background([sys.executable, "-c", _LOOP, str(fraction)], log_path):
        yield
