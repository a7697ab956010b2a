"""Fewer pixels, faster int8 file: EfficientNet-Lite0 at 224, 160 and 128 px, accuracy vs p50.

    python -m edgetl.benchmarks.resolution_front [--data ../shared/datasets/flowers12] [--sizes 224,160,128]

For each input size, the same recipe: the ImageNet Lite0 backbone at that size, frozen, with
edgetl's linear probe (logistic regression, C by 5-fold CV on the training images: the stage
every edgetl model starts from, `compiler/training/probe.py`) as its head; then edgetl's full-integer
int8 file (`convert_tflite`, uint8 I/O, calibrated on a class-balanced sample of 128 training
images). Each file's test accuracy is measured in LiteRT, with its Wilson interval and the paired
difference to the first size (`compiler/evaluation/stats.py`); then all files are timed in one process,
interleaved (`int8_overhead.time_interleaved`). The issue's bar: p50 at most 0.5x the 224 px
file's at no more than 1 point of test accuracy below it.

What this does not measure: a distilled or fine-tuned student at each size (a full compile
each; see the README's recipe with --student-size). The probe isolates what the resolution
costs the frozen features.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np


def build(data: Path, sizes: list[int], work: Path, log) -> dict:
    from edgetl.compiler.data.datasets import load_images, scan_dataset
    from edgetl.compiler.evaluation.stats import describe_accuracy
    from edgetl.compiler.training.finetune import extract_features
    from edgetl.compiler.training.probe import fit_probe, set_head
    from edgetl.compiler.compression.quantize import calibration_sample, convert_tflite
    from edgetl.models import create_model, final_pool_width
    from edgetl.runtime import open_session

    ds = scan_dataset(data, val_fraction=0.0, test_fraction=0.15, seed=0)
    train, test = ds.splits["train"] + ds.splits["val"], ds.splits["test"]
    log(f"{data}: {len(train)} training images, {len(test)} test images, {len(ds.classes)} classes")
    results = {}
    for size in sizes:
        x_train, y_train = load_images(train, size)
        x_test, y_test = load_images(test, size)
        model = create_model("efficientnet_lite0", weights="imagenet", num_classes=len(ds.classes), input_size=size)
        features = extract_features(model, x_train, 32, f"{size} px: features")
        probe = fit_probe(features, y_train, len(ds.classes), seed=0, first_columns=final_pool_width(model))
        set_head(model, probe)
        data_int8 = convert_tflite(model, "int8", calibration=calibration_sample(x_train, y_train, 128), io_dtype="uint8")
        path = work / f"lite0_{size}px_int8.tflite"
        path.write_bytes(data_int8)
        keras_correct = model.predict(x_test.astype(np.float32), batch_size=32, verbose=0).argmax(1) == y_test
        correct = open_session(path).predict(x_test, 32).argmax(1) == y_test
        results[size] = {"path": str(path), "size_mb": path.stat().st_size / 1e6, "probe_C": probe.C,
                         "cv_accuracy": probe.cv_accuracy[probe.C], "correct": correct.tolist(),
                         "keras_accuracy": float(keras_correct.mean())}
        log(f"{size} px: int8 test accuracy {describe_accuracy(correct.mean(), len(correct))} "
            f"(float Keras {describe_accuracy(keras_correct.mean(), len(keras_correct))}), "
            f"{results[size]['size_mb']:.2f} MB")
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--build":  # in its own process: TensorFlow's memory goes with it
        spec = json.loads(Path(argv[1]).read_text())
        out = build(Path(spec["data"]), spec["sizes"], Path(spec["work"]), lambda m: print(m, file=sys.stderr, flush=True))
        Path(argv[2]).write_text(json.dumps(out))
        return 0
    import subprocess

    from edgetl.benchmarks.int8_overhead import time_interleaved
    from edgetl.benchmarks.overhead import _default_calibration_dir
    from edgetl.compiler.evaluation.stats import describe_accuracy, paired_difference

    default_data = (_default_calibration_dir() or Path("flowers12")).parent
    parser = argparse.ArgumentParser(prog="python -m edgetl.benchmarks.resolution_front", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data, help="class folders, or train/ and test/ of class folders")
    parser.add_argument("--sizes", default="224,160,128")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgetl-resolution-front")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block", type=int, default=30)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    spec, built = args.work / "spec.json", args.work / "built.json"
    spec.write_text(json.dumps({"data": str(args.data), "sizes": sizes, "work": str(args.work)}))
    subprocess.run([sys.executable, "-m", "edgetl.benchmarks.resolution_front", "--build", str(spec), str(built)], check=True)
    results = {int(k): v for k, v in json.loads(built.read_text()).items()}
    timing = time_interleaved({s: Path(results[s]["path"]) for s in sizes}, args.threads, args.rounds, args.block, 30)

    base = sizes[0]
    print(f"EfficientNet-Lite0 int8 (uint8 I/O), frozen ImageNet backbone + linear probe, by input size · "
          f"{args.data} · threads {args.threads} · {args.rounds} rounds x {args.block} calls, interleaved")
    print(f"{'size':>5} {'MB':>5} {'p50 ms':>7} {'vs ' + str(base):>7} {'test accuracy (95% interval)':>34} {'vs ' + str(base) + ' px (paired, points)':>30}")
    rows = []
    for s in sizes:
        r, t = results[s], timing[s]
        correct = r["correct"]
        ratio = statistics.median(a / b for a, b in zip(t["round_p50_ms"], timing[base]["round_p50_ms"]))
        diff = paired_difference(correct, results[base]["correct"])
        rows.append({"size": s, "p50_ms": t["p50_ms"], "p50_ratio": ratio, "accuracy": float(np.mean(correct)),
                     "n": len(correct), "diff_points": 100 * diff.difference, "diff_low": 100 * diff.low,
                     "diff_high": 100 * diff.high, "size_mb": r["size_mb"], "float_accuracy": r["keras_accuracy"]})
        print(f"{s:>5} {r['size_mb']:5.2f} {t['p50_ms']:7.3f} {ratio:7.3f} {describe_accuracy(float(np.mean(correct)), len(correct)):>34} "
              f"{100 * diff.difference:+8.2f} [{100 * diff.low:+.2f}, {100 * diff.high:+.2f}]")
    for row in rows[1:]:
        met = row["p50_ratio"] <= 0.5 and row["diff_points"] >= -1.0
        print(f"{row['size']} px: p50 {row['p50_ratio']:.2f}x of {base} px, accuracy {row['diff_points']:+.2f} points: "
              f"{'meets' if met else 'misses'} the bar (<= 0.5x at no more than 1 point below)")
    (args.work / "resolution_front.json").write_text(json.dumps({"rows": rows, "threads": args.threads}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
