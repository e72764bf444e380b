"""Timing for the benchmarks: cases measured in interleaved rounds, so that all see the same load
of a shared machine."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed(cases: dict[str, Callable[[], object]], rounds: int, warm_up: bool = True) -> dict[str, tuple[float, float]]:
    """Median wall-clock and process CPU seconds of every case over ``rounds`` interleaved rounds
    (after one warm-up call of each unless ``warm_up`` is False)."""
    for function in cases.values() if warm_up else ():
        function()
    wall = {name: [] for name in cases}
    cpu = {name: [] for name in cases}
    for _ in range(rounds):
        for name, function in cases.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            function()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in cases}
