"""The timing loop and the statistics behind every latency figure edgetl prints.

One call is timed at a time with `time.perf_counter_ns` (the timer itself costs well under a
microsecond). The first call is reported apart (it pays for lazy allocation, kernel packing,
GPU engine builds); then `warmup` untimed calls; then timed calls until both `runs` calls and
`min_time` seconds are reached. The garbage collector is paused while timing so that a
collection triggered by unrelated allocations does not land in one sample.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time
from collections.abc import Callable

import numpy as np


def usable_cores() -> list[int]:
    """The cores this process may run on (its affinity mask: a container or `taskset` may allow
    fewer than the machine has, which os.cpu_count() does not see)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def default_threads(preferred: int) -> int:
    """Threads to measure with when the user did not say: `preferred` (a target's), never more
    than the cores present, as more threads than cores only time the scheduler."""
    return max(1, min(preferred, len(usable_cores())))


@dataclasses.dataclass(frozen=True)
class Timing:
    first_ms: float
    samples_ms: tuple[float, ...]

    def stats(self, batch: int = 1) -> dict:
        x = np.asarray(self.samples_ms, dtype=np.float64)
        mean = float(x.mean())
        return {
            "runs": int(x.size),
            "first_run_ms": round(self.first_ms, 4),
            "p50_ms": round(float(np.percentile(x, 50)), 4),
            "p90_ms": round(float(np.percentile(x, 90)), 4),
            "p99_ms": round(float(np.percentile(x, 99)), 4),
            "mean_ms": round(mean, 4),
            "std_ms": round(float(x.std(ddof=1)) if x.size > 1 else 0.0, 4),
            "min_ms": round(float(x.min()), 4),
            "max_ms": round(float(x.max()), 4),
            # Sequential calls: images per second one caller gets at this batch size.
            "throughput_ips": round(batch * 1000.0 / mean, 2) if mean > 0 else None,
        }


def time_calls(fn: Callable[[], object], warmup: int = 10, runs: int = 100, min_time: float = 0.0) -> Timing:
    """Time `fn()`: first call, `warmup` untimed calls, then >= `runs` calls and >= `min_time` s."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    clock = time.perf_counter_ns
    start = clock()
    fn()
    first = clock() - start
    for _ in range(max(0, warmup)):
        fn()
    samples: list[int] = []
    append = samples.append
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        deadline = clock() + int(min_time * 1e9)
        while True:
            t0 = clock()
            fn()
            append(clock() - t0)
            if len(samples) >= runs and clock() >= deadline:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing(first / 1e6, tuple(s / 1e6 for s in samples))


# --------------------------------------------------------------------------------------------
# Memory. ru_maxrss is NOT used: on Linux a child started by fork/vfork + exec inherits the
# parent's peak in ru_maxrss (measured: a worker spawned by an 800 MB parent reported 813 MB),
# so a benchmark worker would report its parent's memory. VmHWM belongs to the new process.
# --------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process (since start or the last `reset_peak_rss`)."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024.0
    try:  # not Linux: ru_maxrss is right for a process that was not forked from a big one
        import resource
        import sys

        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return value / (1024.0 * 1024.0) if sys.platform == "darwin" else value / 1024.0
    except (ImportError, OSError):
        return None


def reset_peak_rss() -> bool:
    """Reset the peak to the current RSS (Linux `clear_refs`); False where not possible."""
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False
