"""Does a compile's memory stay flat as the dataset grows? Peak memory, speed and wall time by size.

    python -m edgetl.benchmarks.scale [--sizes 500,4000] [--big] [--edgetl PATH] [--work DIR]

For each size N, a synthetic dataset of N JPEGs (256 x 256, 4 classes of noisy colour blobs,
class folders, seeded) is written, then this command runs as a child process:

    edgetl compile DATA --teacher efficientnet_lite0 --student none --finetune-epochs 1
        --selection holdout --quantize fp32 --no-robustness --no-cache --out OUT

(`--head-epochs` of the issue no longer exists: the head is the linear probe, fitted in one
pass over cached features; `--selection holdout` keeps every size on the same path, where the
default would cross-validate the smaller sets.) Printed per size: the child's peak resident
memory (`os.wait4`'s ru_maxrss: the largest resident set of the compile process), the
images per second of feature extraction + probe and of the fine-tuning epoch (from
report.json), and the wall time of the data and teacher stages and of the whole command.
`--big` adds 16,000 images. `--edgetl` picks the CLI to measure (e.g. another checkout's venv).

`--workers 2` runs each size again as two `--strategy multi-worker` processes on loopback
(TF_CONFIG with two workers on 127.0.0.1; the chief writes the build) and prints the same row
for them: peak memory is the larger of the two processes', wall time until both have exited.
On one machine the two workers share its cores, so this measures the cost of the collective
and the sharding, not what two machines would gain.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = ("red", "green", "blue", "yellow")
_BASE = np.array([(210, 40, 40), (40, 190, 60), (40, 60, 210), (210, 200, 40)], np.float64)


def write_dataset(root: Path, n: int, size: int = 256, seed: int = 0) -> Path:
    """N JPEGs in class folders: a coloured blob on a noisy background, class by colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = i % len(CLASSES)
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        r = rng.uniform(0.15, 0.35) * size
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
        pixels = rng.normal(128, 40, (size, size, 3))
        pixels[blob] = _BASE[label] + rng.normal(0, 25, (int(blob.sum()), 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / CLASSES[label] / f"{i:06d}.jpg", quality=90)
    return root


def run_compile(edgetl: str, data: Path, out: Path, workers: int = 1) -> dict:
    """One compile (or `workers` multi-worker processes on loopback); its figures."""
    command = [edgetl, "compile", str(data), "--teacher", "efficientnet_lite0", "--student", "none",
               "--finetune-epochs", "1", "--selection", "holdout", "--quantize", "fp32", "--no-robustness",
               "--no-cache"]
    from edgetl.compiler.training.distribution import loopback_cluster

    cluster = loopback_cluster(workers)
    start = time.perf_counter()
    children, logs = [], []
    for index in range(workers):
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        extra = []
        if workers > 1:
            env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            extra = ["--strategy", "multi-worker"]
        target = out if index == 0 else out.parent / f"{out.name}-worker{index}"
        logs.append(out.parent / f"{target.name}.log")
        with open(logs[-1], "w") as sink:
            children.append(subprocess.Popen(command + extra + ["--out", str(target)], stdout=sink, stderr=subprocess.STDOUT, env=env))
    peak_kib, codes = 0, []
    for child in children:
        _, status, usage = os.wait4(child.pid, 0)
        peak_kib = max(peak_kib, usage.ru_maxrss)
        codes.append(os.waitstatus_to_exitcode(status))
    wall = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"compile failed (exit codes {codes}); see {logs[0]}\n" + logs[0].read_text()[-3000:])
    report = json.loads((out / "report.json").read_text())
    teacher = report["models"]["teacher"]["training"]
    n_train = report["dataset"]["totals"]["train"]
    n_val = report["dataset"]["totals"]["val"]
    top = teacher["top"]
    return {
        "images": sum(report["dataset"]["totals"].values()),
        "workers": workers,
        "peak_rss_gb": peak_kib * 1024 / 1e9,  # ru_maxrss is in KiB on Linux
        "features_probe_img_s": (n_train + n_val) / teacher["head"]["seconds"],
        "finetune_img_s": n_train / top["seconds_per_epoch"] if top["epochs_run"] else None,
        "data_s": report["timings_s"].get("data"),
        "teacher_s": report["timings_s"].get("teacher"),
        "wall_s": wall,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="500,4000", help="comma-separated dataset sizes (images)")
    parser.add_argument("--big", action="store_true", help="also 16,000 images")
    parser.add_argument("--edgetl", default=str(Path(sys.executable).with_name("edgetl")), help="the edgetl CLI to measure")
    parser.add_argument("--work", type=Path, default=None, help="folder for datasets and builds (default: a temporary one, removed)")
    parser.add_argument("--workers", type=int, choices=(1, 2), default=1, help="2: also each size as two multi-worker processes on loopback")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s] + ([16000] if args.big else [])
    work = args.work or Path(tempfile.mkdtemp(prefix="edgetl-scale-"))
    rows = []
    try:
        for n in sizes:
            data = work / f"data{n}"
            if not data.exists():
                write_dataset(data, n)
            for workers in range(1, args.workers + 1):
                out = work / f"build{n}" if workers == 1 else work / f"build{n}-{workers}workers"
                shutil.rmtree(out, ignore_errors=True)
                row = run_compile(args.edgetl, data, out, workers)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'images':>7} {'workers':>7} {'peak RSS GB':>11} {'feat+probe img/s':>16} {'fine-tune img/s':>15} {'data s':>7} {'teacher s':>9} {'wall s':>7}")
    for r in rows:
        ft = f"{r['finetune_img_s']:.1f}" if r["finetune_img_s"] else "-"
        print(f"{r['images']:>7} {r['workers']:>7} {r['peak_rss_gb']:>11.2f} {r['features_probe_img_s']:>16.1f} {ft:>15} "
              f"{r['data_s']:>7.1f} {r['teacher_s']:>9.1f} {r['wall_s']:>7.1f}")
    single = [r for r in rows if r["workers"] == 1]
    if len(single) > 1:
        print(f"peak RSS ratio {single[-1]['images']} / {single[0]['images']} images: {single[-1]['peak_rss_gb'] / single[0]['peak_rss_gb']:.2f}x")
    for r in rows:
        one = next((s for s in single if s["images"] == r["images"]), None)
        if r["workers"] == 2 and one:
            print(f"{r['images']} images, 2 workers / 1: wall {r['wall_s'] / one['wall_s']:.2f}x, peak RSS {r['peak_rss_gb'] / one['peak_rss_gb']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
