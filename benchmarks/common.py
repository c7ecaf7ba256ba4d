"""Helpers shared by the benchmark scripts (run as `python benchmarks/<name>.py`)."""
import time


def alternate(fns: dict, rounds: int) -> tuple[dict, dict]:
    """Call every fn once per round, in turn, timing each call.

    This VM's speed drifts by 10-20% within minutes, so two sides compared one after the other
    can differ by the drift alone; alternating call by call exposes both to the same drift.
    Warm up (compile) before. -> ({name: [seconds per call]}, {name: the last call's result}).
    """
    times = {name: [] for name in fns}
    last = {}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            last[name] = fn()
            times[name].append(time.perf_counter() - t)
    return times, last
