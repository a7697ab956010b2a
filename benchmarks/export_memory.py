"""Peak memory of the ONNX export, with and without a garbage collection before each of
tf2onnx's graph optimizers (compiler/export/convert.py, `_collecting_optimizers`, with the objects
that existed before the conversion frozen out of those collections, `_gc_frozen`).

    python -m edgetl.benchmarks.export_memory [--models resnet50,efficientnet_lite0]

Each conversion runs in a fresh process (one per model and way), so its peak is its own: the
model is built with random weights (no download; the graph and the weights' size are what cost
memory, not their values), the peak resident memory is reset (Linux clear_refs), and the
conversion's peak, its wall time and the memory still held after it are printed. The two files
of a model are then run on the same random images in ONNX Runtime: the collection must not
change the graph's outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WAYS = ("tf2onnx defaults", "collect before each optimizer")


def convert_once(model_name: str, collect: bool, out: Path) -> dict:
    """In this (fresh) process: build `model_name`, convert it, and measure."""
    from edgetl.compiler.export import convert
    from edgetl.models import create_model
    from edgetl.runtime.measure import current_rss_mb, peak_rss_mb, reset_peak_rss

    from edgetl._compat import keras

    keras.utils.set_random_seed(0)  # the same weights in both processes, so their outputs compare
    model = create_model(model_name, weights=None, num_classes=12)
    before = current_rss_mb()
    reset = reset_peak_rss()
    if not collect:  # tf2onnx exactly as it comes: its own optimizer list, the collector untouched
        convert._collecting_optimizers = lambda: None
        convert._gc_frozen = contextlib.nullcontext
    start = time.perf_counter()
    convert.export_onnx(model, out)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss_before_mb": before, "peak_mb": peak_rss_mb() if reset else None,
            "rss_after_mb": current_rss_mb(), "params": int(model.count_params())}


def max_output_difference(a: Path, b: Path, size: int) -> float:
    import numpy as np
    import onnxruntime as ort
    from edgetl.models import INPUT_NAME

    x = np.random.default_rng(0).uniform(0, 255, (4, size, size, 3)).astype(np.float32)
    outputs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})[0] for p in (a, b)]
    return float(np.abs(outputs[0] - outputs[1]).max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet50,efficientnet_lite0", help="comma-separated registry names")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "COLLECT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        model, collect, out = args.child
        print(json.dumps(convert_once(model, collect == "1", Path(out))))
        return

    from edgetl.models import get_config

    print(f"{'model':<20} {'way':<30} {'peak':>9} {'held after':>11} {'time':>7}", flush=True)
    with tempfile.TemporaryDirectory(prefix="edgetl-export-memory-") as work:
        for name in args.models.split(","):
            files = []
            for collect, way in zip((False, True), WAYS):
                out = Path(work) / f"{name}_{int(collect)}.onnx"
                done = subprocess.run([sys.executable, "-m", "edgetl.benchmarks.export_memory", "--child", name, str(int(collect)), str(out)],
                                      capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    sys.exit(f"{name}, {way}: the conversion failed:\n{done.stderr[-2000:]}")
                r = json.loads(done.stdout.strip().splitlines()[-1])
                peak = f"{r['peak_mb'] / 1024:.2f} GiB" if r["peak_mb"] else "n/a"
                print(f"{name:<20} {way:<30} {peak:>9} {r['rss_after_mb'] / 1024:>7.2f} GiB {r['seconds']:>6.1f}s", flush=True)
                files.append(out)
            diff = max_output_difference(*files, size=get_config(name).input_size)
            print(f"{name:<20} largest difference between the two files' outputs on 4 random images: {diff:.2e}", flush=True)


if __name__ == "__main__":
    main()
