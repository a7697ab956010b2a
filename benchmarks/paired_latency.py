"""Two or more TFLite files timed against each other in one process, interleaved.

    python -m edgetl.benchmarks.paired_latency A.tflite B.tflite [C.tflite ...] [--threads 2] [--rounds 20] [--block 30]

`edgetl bench` times each file in its own worker process, one after another: right for memory
and load time, but on a shared machine a burst of load can land on one file. Here the files
alternate in rotating order, `--block` calls each per round, and each file's p50 per round is
divided by the first file's p50 in the same round; the median of those ratios is the paired
speed-up (`int8_overhead.time_interleaved`). Inputs are random pixels of each file's own size
and type: latency does not depend on the picture.

Used for the README's `--student-size` comparison: the 224 px build's model.tflite against the
192 and 160 px ones.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from edgetl.benchmarks.int8_overhead import _load, time_interleaved

    parser = argparse.ArgumentParser(prog="python -m edgetl.benchmarks.paired_latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", type=Path, nargs="+", help="TFLite files; the first is the reference")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block", type=int, default=30, help="calls per file per round")
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args(argv)
    if len(args.files) < 2:
        parser.error("give at least two files: the first is the reference")
    missing = [str(f) for f in args.files if not f.is_file() or f.suffix != ".tflite"]
    if missing:
        print(f"error: not a .tflite file: {', '.join(missing)}", file=sys.stderr)
        return 1
    names = [f"{i}: {f}" for i, f in enumerate(args.files, 1)]
    load = _load()
    timing = time_interleaved(dict(zip(names, args.files)), args.threads, args.rounds, args.block, args.warmup)
    reference = timing[names[0]]["round_p50_ms"]
    print(f"{args.threads} threads, {args.rounds} rounds x {args.block} calls, interleaved; load average at start {load}")
    for name in names:
        t = timing[name]
        ratio = statistics.median(a / b for a, b in zip(t["round_p50_ms"], reference))
        print(f"  {name}: p50 {t['p50_ms']:.3f} ms, {ratio:.3f}x the first (median of per-round ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
