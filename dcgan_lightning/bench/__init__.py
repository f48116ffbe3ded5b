"""Benchmarks: each section module exposes `run(quick) -> list[dict]` rows for one table.

A row is {"section", "case", "value", "unit", "note"}. `python -m dcgan_lightning.bench` runs every
section module of this package and prints the table.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def row(section: str, case: str, value: float, unit: str, note: str = "") -> dict:
    """One line of the benchmark table."""
    return {"section": section, "case": case, "value": float(value), "unit": unit, "note": note}


def median_seconds(fn: Callable[[], object], repeats: int, warm_up: bool = False) -> float:
    """Median wall time of `repeats` calls of `fn`, after one untimed call when `warm_up`."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
