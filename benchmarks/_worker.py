"""One benchmark case (file x runtime x threads) in a fresh process.

    python -m edgetl.benchmarks._worker SPEC.json RESULT.json

A fresh process per case keeps the figures clean: the runtime library's import and the
model's load are timed from a cold start, peak memory is this case's alone, and `--cores`
pinning (sched_setaffinity, set before any runtime starts its threads) applies to every
thread the runtime creates. The result is always written; failures become a status.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback


def run_case(spec: dict) -> dict:
    result: dict = {"status": "ok"}
    cores = spec.get("cores")
    if cores:
        os.sched_setaffinity(0, cores)
    result["cores"] = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None

    from edgetl.runtime.measure import current_rss_mb, peak_rss_mb, reset_peak_rss, time_calls

    import numpy as np

    from edgetl.errors import EdgetlError
    from edgetl.runtime import RUNTIMES, RuntimeUnavailableError, open_session

    runtime = spec["runtime"]
    start = time.perf_counter()
    for module in RUNTIMES[runtime].modules:
        importlib.import_module(module)
    result["import_s"] = round(time.perf_counter() - start, 4)
    result["rss_before_load_mb"] = _round(current_rss_mb())
    result["peak_reset"] = reset_peak_rss()

    start = time.perf_counter()
    try:
        session = open_session(
            spec["path"], runtime=runtime, threads=spec.get("threads"), trust_model=bool(spec.get("trust_model"))
        )
    except RuntimeUnavailableError as exc:
        return {**result, "status": "skipped", "reason": str(exc)}
    except EdgetlError as exc:
        return {**result, "status": "failed", "reason": str(exc)}
    result["load_s"] = round(time.perf_counter() - start, 4)
    result["session"] = session.describe()
    result["rss_after_load_mb"] = _round(current_rss_mb())

    batch = int(spec.get("batch", 1))
    if spec.get("input_npy"):
        pixels = np.load(spec["input_npy"])
        pixels = np.concatenate([pixels] * (batch // len(pixels) + 1))[:batch]
    else:
        size = session.input_size
        pixels = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    tensor = session.prepare(pixels)  # the input tensor is made once: the loop times inference
    try:
        timing = time_calls(
            lambda: session.invoke(tensor),
            warmup=int(spec.get("warmup", 10)),
            runs=int(spec.get("runs", 100)),
            min_time=float(spec.get("min_time", 0.0)),
        )
    except EdgetlError as exc:
        return {**result, "status": "failed", "reason": str(exc)}
    result.update(timing.stats(batch))
    result["peak_rss_mb"] = _round(peak_rss_mb())
    if result["peak_rss_mb"] is not None and result["peak_reset"] and result["rss_before_load_mb"] is not None:
        # Memory the model and its runtime state added on top of the process and its libraries.
        result["model_memory_mb"] = _round(result["peak_rss_mb"] - result["rss_before_load_mb"])
    if spec.get("eval_npy"):
        images = np.load(spec["eval_npy"], mmap_mode="r")
        start = time.perf_counter()
        probs = session.predict(images, batch_size=int(spec.get("eval_batch", 32)))
        result["eval_s"] = round(time.perf_counter() - start, 3)
        result["predictions"] = probs.argmax(1).astype(int).tolist()
    session.close()
    return result


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def main(argv: list[str]) -> int:
    spec_path, result_path = argv
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    try:
        result = run_case(spec)
    except Exception as exc:  # noqa: BLE001 - a crash in one case must not lose the others
        result = {
            "status": "failed",
            "reason": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
            "traceback": traceback.format_exc(),
        }
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
