"""Growth checks: is the work linear in the input's size, judged by timings taken in the same run?

A wall-clock budget fails on a loaded CI machine (a linear parse of 20,000 inputs took 1.27 s there
against a 1 s budget). Comparing a small and a large input, each timed as the fastest of a few runs,
cancels the machine's speed: linear work grows by the size ratio, quadratic work by its square.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def fastest(work: Callable[[], Any], repeats: int = 3) -> float:
    """The fewest seconds `work()` took over `repeats` runs: the run least disturbed by other load."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def growth(small: Callable[[], Any], large: Callable[[], Any], repeats: int = 3) -> float:
    """How many times longer `large()` takes than `small()` (each the fastest of `repeats` runs)."""
    return fastest(large, repeats) / max(fastest(small, repeats), 1e-6)
