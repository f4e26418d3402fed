"""The process's garbage-collector policy, set once the gateway has started.

Python's cyclic collector scans every tracked object on a full collection. After the start,
most of a gateway's heap is what it imported and built (the web stack, the organisation, the
replayed alarms) and lives as long as the process; scanning it again and again is pure cost.
Measured (``bench/storm_bench.py``, SQLite, 10,000 alarms, one run each): full collections
took 0.9 s of the gateway's life; the storm ran at 2,030 alarms/s (0.53 ms CPU each) with
Python's defaults, 2,231 with the freeze, 2,304 with the threshold, 2,520 (0.43 ms) with both.

So, once started: what exists is frozen (moved to the permanent generation, never scanned
again; reference counting still frees it), and the youngest generation is collected less
often. Cycles created later are still collected.
"""

from __future__ import annotations

import gc
import logging

_LOGGER = logging.getLogger(__name__)

# Allocations (minus deallocations) before a young collection; Python's default is 700.
# A storm allocates a few dozen objects per alarm, nearly all freed by reference counting.
YOUNG_THRESHOLD = 10_000


def settle() -> None:
    """Freeze the started process's heap and set the thresholds (see the module's doc)."""
    # Start-up garbage first (one full collection, ~0.1 s), so that none of it is frozen.
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    _LOGGER.debug("heap settled: %d objects frozen, thresholds %s", gc.get_freeze_count(),
                  gc.get_threshold())
