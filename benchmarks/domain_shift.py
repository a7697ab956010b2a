"""Domain shift on flowers12: train on clean photos, deploy behind a simulated cheap camera.

    python -m edgetl.benchmarks.domain_shift [--data ../shared/datasets/flowers12] [--model lite0.keras]

One deployable model (EfficientNet-Lite0, 224 px: a head on its frozen ImageNet features, then a
short fine-tune of the top; or `--model FILE.keras` to reuse one) is trained ONCE on the clean
`train/` images (15% of them carved out, seeded, for early stopping). Then, for each simulated
camera (`SHIFTS`: chains of compiler/data/corruptions.py steps, seeded), a seeded half of the
clean `train/` images is passed through that camera and given WITHOUT labels to each adaptation
method (compiler/training/adapt.py), always from the same trained model; the clean images the
methods match statistics from come from the other half, so no method can pair a device image
with its clean original (a user's device photos are other scenes). Methods that train on labels
(`camera`) get every labelled clean training image, as in a compile. The adapted model is scored
on the same camera's `test/` images and on the clean `test/` images. With `--int8` the deployed
int8 TFLite of each method is scored too (calibrated on the camera's images when adapting,
on clean training images otherwise, as a compile does). `camera_exact`, a method only this
benchmark has, trains `camera`'s recipe through the simulated camera itself instead of a
fitted one: set beside `camera`, it shows how much of what `camera` misses is the fit's error.

Printed per camera and method: shifted-test accuracy with its 95% Wilson interval
(compiler/evaluation/stats.py), the share of the points lost to the shift that the method recovers, the
clean-test accuracy and its change, the adaptation's wall time, and the paired differences on
the same images (shifted vs no adaptation, clean vs the unadapted model, Newcombe intervals);
then the total wall time. `--adapt-seed` reruns everything after the model with another seed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import os

REPO = Path(__file__).resolve().parents[1]
# ../shared from the main checkout, ../../shared from a worktree under wt/ ($EDGETL_SHARED wins).
_SHARED = [Path(os.environ["EDGETL_SHARED"])] if "EDGETL_SHARED" in os.environ else [REPO.parent / "shared", REPO.parent.parent / "shared"]
DEFAULT_DATA = next((p / "datasets" / "flowers12" for p in _SHARED if (p / "datasets" / "flowers12").is_dir()), _SHARED[0] / "datasets" / "flowers12")

# Simulated cameras: (kind, parameter) steps applied in order (compiler/data/corruptions.apply_steps).
SHIFTS = {
    # Soft plastic lens, warm white balance, sensor noise, heavy JPEG: the cheap camera.
    "cheap_camera": [("defocus_blur", 3.0), ("colour_cast", 0.2), ("gaussian_noise", 0.05), ("jpeg", 15)],
    # Under-exposed indoor shot: darker, photon noise, JPEG.
    "low_light": [("brightness", -0.25), ("shot_noise", 20), ("jpeg", 30)],
    # Hand-held in motion, compressed.
    "motion": [("motion_blur", 12.0), ("jpeg", 20)],
    # Cheap sensor in flat light: low contrast, over-exposed, cool cast.
    "washed_out": [("contrast", 0.5), ("brightness", 0.15), ("colour_cast", 0.15)],
}


def train_model(data: Path, size: int, finetune_epochs: int, seed: int):
    """EfficientNet-Lite0 on the clean training images (compiler/training/finetune.py's two stages)."""
    from edgetl._compat import keras
    from edgetl.compiler.spec.config import CompileConfig
    from edgetl.compiler.data.datasets import load_images, scan_dataset
    from edgetl.compiler.training.finetune import finetune
    from edgetl.models import create_model, get_config

    keras.utils.set_random_seed(seed)
    dataset = scan_dataset(data, val_fraction=0.15, seed=seed)
    config = CompileConfig(data=data, out=Path("/tmp"), finetune_epochs=finetune_epochs, seed=seed)
    model = create_model("efficientnet_lite0", weights="imagenet", num_classes=len(dataset.classes), input_size=size)
    train = load_images(dataset.splits["train"], size)
    val = load_images(dataset.splits["val"], size)
    finetune(model, get_config("efficientnet_lite0").unfreeze_from, config, train, val)
    return model


def accuracy(probs: np.ndarray, y: np.ndarray) -> tuple[int, int]:
    return int(np.sum(probs.argmax(1) == y)), len(y)


def int8_probs(model, calibration: np.ndarray, x: list[np.ndarray]) -> list[np.ndarray]:
    from edgetl.compiler.compression.quantize import convert_tflite
    from edgetl.runtime import open_session

    import tempfile

    data = convert_tflite(model, "int8", calibration=calibration, io_dtype="uint8")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(data)
        session = open_session(path, threads=2)
        return [session.predict(images, 32) for images in x]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", type=Path, help="a trained .keras model to start from (else one is trained)")
    parser.add_argument("--save-model", type=Path, help="save the trained model here (to pass as --model later)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--methods", default="none,bn,camera,shot",
                        help="adaptations to compare: none, bn, camera, shot, and camera_exact (camera's training through the "
                        "simulated camera itself instead of a fitted one: the fit's share of what camera misses)")
    parser.add_argument("--shifts", default=",".join(SHIFTS))
    parser.add_argument("--int8", default="", help="methods whose int8 TFLite is scored too, e.g. none,bn")
    parser.add_argument("--epochs", type=int, default=3, help="self-training epochs (shot)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="self-training learning rate (shot)")
    parser.add_argument("--seed", type=int, default=0, help="the split and the trained model's seed")
    parser.add_argument("--adapt-seed", type=int, help="the seed of everything after the model (device/source halves, "
                        "camera noise, adaptation); default --seed. Several runs with one --model give the spread over seeds")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    seed = args.seed if args.adapt_seed is None else args.adapt_seed
    from edgetl.compiler.spec.modes import Adapt  # the methods, without importing TensorFlow before a bad-input error

    methods_known = [m.value for m in Adapt if m is not Adapt.AUTO] + ["camera_exact"]
    for what, names, known in (("method", args.methods, methods_known), ("shift", args.shifts, list(SHIFTS))):
        unknown = sorted({n for n in names.split(",") if n} - set(known))
        if unknown:
            raise SystemExit(f"error: unknown {what}(s) {', '.join(unknown)}; choose from {', '.join(known)}")

    from edgetl.compiler.training.adapt import adapt, adapt_camera, calibration_images
    from edgetl.compiler.data.corruptions import apply_steps, describe_steps
    from edgetl.compiler.data.datasets import load_images, scan_dataset
    from edgetl.compiler.compression.quantize import calibration_sample
    from edgetl.compiler.evaluation.stats import describe_accuracy, paired_difference, points_span
    from edgetl.runtime.keras_model import KerasSession, load_keras_model

    wall = time.perf_counter()
    dataset = scan_dataset(args.data, val_fraction=0.15, seed=args.seed)
    x_train, y_train = load_images(dataset.splits["train"], args.size)
    x_test, y_test = load_images(dataset.splits["test"], args.size)
    clean_val = load_images(dataset.splits["val"], args.size)  # what `camera` keeps its accuracy on, as in a compile
    t = time.perf_counter()
    if args.model:
        model = load_keras_model(args.model)
        print(f"model: {args.model}")
    else:
        model = train_model(args.data, args.size, args.finetune_epochs, args.seed)
        print(f"model: efficientnet_lite0 {args.size} px trained in {time.perf_counter() - t:.0f} s")
        if args.save_model:
            model.save(args.save_model)
    predict = lambda m, x: KerasSession(model=m).predict(x, 32)  # noqa: E731

    methods = [m for m in args.methods.split(",") if m]
    int8_methods = [m for m in args.int8.split(",") if m]
    # The device's images are a seeded half of train/ through the camera; the clean images that
    # statistics are matched from come from the other half (module docstring).
    order = np.random.default_rng(seed).permutation(len(y_train))
    device_half, source_half = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])
    source = calibration_sample(x_train[source_half], y_train[source_half], 192, seed)  # as compiler/stages/adapt.py, adaptation_source
    clean_hits = predict(model, x_test).argmax(1) == y_test
    clean, n = float(np.mean(clean_hits)), len(y_test)
    print(f"clean test, no adaptation: {describe_accuracy(clean, n)}")
    results = {"clean": clean, "n_test": n, "seed": args.seed, "adapt_seed": seed, "shifts": {}}
    for shift in [s for s in args.shifts.split(",") if s]:
        steps = SHIFTS[shift]
        target_train = apply_steps(x_train[device_half], steps, seed=seed)
        target_test = apply_steps(x_test, steps, seed=seed + 1)
        print(f"\n== {shift}: " + describe_steps(steps))
        rows, hits = {}, {}
        for method in methods:
            if method == "camera_exact":  # `camera` trained through the true camera: what a perfect fit would give
                adapted, record = adapt_camera(model, target_train, source=source, labelled=(x_train, y_train), clean_val=clean_val,
                                               seed=seed, known_camera=steps)
            else:
                adapted, record = adapt(model, method, target_train, source=source, labelled=(x_train, y_train), clean_val=clean_val,
                                        seed=seed, epochs=args.epochs, learning_rate=args.learning_rate)
            hits[method] = (predict(adapted, target_test).argmax(1) == y_test, predict(adapted, x_test).argmax(1) == y_test)
            shifted_acc, clean_acc = float(np.mean(hits[method][0])), float(np.mean(hits[method][1]))
            row = {"shifted": shifted_acc, "clean": clean_acc, "seconds": round(record.seconds, 1)}
            if record.camera is not None:
                row["camera"] = record.camera["steps"]
                row["camera_known"] = bool(record.camera.get("known"))
                row["blend_share"] = record.camera.get("blend_share")
            if method in int8_methods:
                calibration = (
                    calibration_images(target_train, 128, seed) if method != "none" else calibration_sample(x_train, y_train, 128, seed)
                )
                p_shift, p_clean = int8_probs(adapted, calibration, [target_test, x_test])
                row["int8_shifted"] = accuracy(p_shift, y_test)[0] / n
                row["int8_clean"] = accuracy(p_clean, y_test)[0] / n
            rows[method] = row
        base = rows.get("none", {}).get("shifted")
        for method, row in rows.items():
            lost = clean - base if base is not None else None
            recovered = (row["shifted"] - base) / lost if lost and lost > 0 else None
            row["recovered_share"] = recovered
            if "none" in hits and method != "none":
                row["shifted_gain"] = paired_difference(hits[method][0], hits["none"][0]).to_json()
            row["clean_change"] = paired_difference(hits[method][1], clean_hits).to_json()
            line = (
                f"  {method:<5} shifted {describe_accuracy(row['shifted'], n)}"
                + (f", recovers {recovered:.0%} of the {lost * 100:.1f} points lost" if recovered is not None and method != "none" else "")
                + f"; clean {describe_accuracy(row['clean'], n)} ({(row['clean'] - clean) * 100:+.1f} pt); {row['seconds']:.0f} s"
            )
            if "shifted_gain" in row:
                gain, change = row["shifted_gain"], row["clean_change"]
                line += (f"\n        paired, same images (95% CI): shifted {points_span(gain['difference'], gain['ci95'])}, "
                         f"clean {points_span(change['difference'], change['ci95'])}")
            if "camera" in row:
                line += ("\n        the true camera: " if row["camera_known"] else "\n        fitted camera: ") + (
                    describe_steps(row["camera"]) or "none (nothing trained)")
                if row["blend_share"] is not None:
                    line += f"; {row['blend_share']:.0%} of the trained weights kept"
            if "int8_shifted" in row:
                line += f"\n        int8 TFLite: shifted {describe_accuracy(row['int8_shifted'], n)}, clean {describe_accuracy(row['int8_clean'], n)}"
            print(line, flush=True)
        results["shifts"][shift] = {"steps": steps, "methods": rows}
    results["wall_s"] = round(time.perf_counter() - wall, 1)
    print(f"\nwall time {results['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
