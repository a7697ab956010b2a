"""Hand-made report.json dicts, consistent with themselves, for the report tests.

A compile takes minutes; these take milliseconds and can be as large as the charts must
survive (50 classes, 20 files) or lack a test split (cross-validated figures only).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from edgetl.compiler.evaluation.evaluate import classification_metrics


def _history(epochs: int, rng) -> dict:
    loss = np.sort(rng.uniform(0.1, 2.0, epochs))[::-1]
    acc = np.sort(rng.uniform(0.3, 0.99, epochs))
    return {
        "loss": loss.tolist(),
        "accuracy": acc.tolist(),
        "val_loss": (loss * 1.1).tolist(),
        "val_accuracy": np.clip(acc - 0.03, 0, 1).tolist(),
    }


def make_report(root, out, num_classes: int = 3, num_files: int = 4, per_class: int = 6, seed: int = 0,
                with_test: bool = True, images: bool = True) -> dict:
    """A report of a distilled compile on `per_class` test images per class, written under `root`."""
    rng = np.random.default_rng(seed)
    classes = [f"class_{i:02d}_{'x' * (i % 7)}" for i in range(num_classes)]
    labels = np.repeat(np.arange(num_classes), per_class)
    paths = [f"test/{classes[y]}/img_{i:03d}.png" for i, y in enumerate(labels)]
    if images:
        for i, path in enumerate(paths):
            file = root / path
            file.parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(file)

    def probs(accuracy: float) -> np.ndarray:
        p = rng.uniform(0, 1, (len(labels), num_classes))
        right = rng.uniform(size=len(labels)) < accuracy
        p[np.arange(len(labels)), labels] += np.where(right, 5.0, 0.0)
        wrong = ~right
        p[wrong, labels[wrong]] = 0.0  # a miss is a miss
        return p / p.sum(1, keepdims=True)

    keras = {"teacher": probs(0.9), "student": probs(0.8), "baseline": probs(0.75)}
    deployed = probs(0.8)

    def model(name, role_probs, training):
        entry = {"model": name, "input_size": 224, "params": 3_400_000, "macs": 385_000_000, "training": training,
                 "cached": False}
        if with_test:
            entry["test"] = classification_metrics(labels, role_probs, classes)
        else:
            n, correct = 5 * len(labels), int(0.85 * 5 * len(labels))
            entry["test"] = None
            entry["cv"] = {"accuracy": correct / n, "n": n, "ci95": [0.8, 0.89], "folds": 5, "macro_f1": 0.84}
        return entry

    stage = lambda epochs: {"epochs_run": epochs, "best_epoch": max(1, epochs - 2), "best_val_accuracy": 0.9,  # noqa: E731
                            "seconds_per_epoch": 1.0, "history": _history(epochs, rng)}
    models = {
        "teacher": model("resnet50", keras["teacher"], {"head": stage(12), "top": stage(4)}),
        "student": model("efficientnet_lite0", keras["student"], {"head": stage(8), "distillation": {"stage": stage(1)}}),
        "baseline": model("efficientnet_lite0", keras["baseline"], {"head": stage(8), "labels_only": {"stage": stage(6)}}),
    }
    artifacts = []
    precisions = ["fp32", "fp16", "dynamic", "int8", "int8-qat"]
    for k in range(num_files):
        fmt = "tflite" if k % 2 == 0 else "onnx"
        precision = precisions[(k // 2) % len(precisions)]
        name = f"variants/model.{precision}{'' if k < 10 else '-pruned50'}.{fmt}"
        artifacts.append({
            "file": name, "format": fmt, "runtime": "litert" if fmt == "tflite" else "onnxruntime",
            "precision": precision, "size_bytes": int(rng.uniform(1e6, 2e7)), "gzip_bytes": int(rng.uniform(1e6, 1e7)),
            "latency_p50_ms": float(rng.uniform(2.5, 5.7)), "accuracy_delta": 0.0, "gate": "passed", "parity": None,
            "test": classification_metrics(labels, deployed if k == 0 else probs(0.8), classes) if with_test else None,
        })
    chosen = dict(artifacts[0], file="model.tflite", variant=artifacts[0]["file"])
    rows = []
    for i, path in enumerate(paths):
        rows.append({
            "path": path, "true": classes[labels[i]], "predicted": classes[int(deployed[i].argmax())],
            "confidence": float(deployed[i].max()),
            "keras": {role: {"predicted": classes[int(p[i].argmax())], "confidence": float(p[i].max())}
                      for role, p in keras.items()},
        })
    counts = {"train": {c: 40 for c in classes}, "val": {c: 8 for c in classes},
              "test": {c: (per_class if with_test else 0) for c in classes}}
    return {
        "edgetl_version": "test", "created_utc": "2026-01-01T00:00:00+00:00", "out": str(out),
        "config": {"max_accuracy_drop": 1.0, "teacher": "resnet50", "student": "efficientnet_lite0", "seed": seed},
        "dataset": {"root": str(root), "classes": classes, "counts": counts, "warnings": [], "skipped": []},
        "models": models,
        "distillation": None,
        "artifacts": [chosen, *artifacts],
        "deployed": {"model": "student", "tflite": "model.tflite", "onnx": "model.onnx",
                     "tflite_variant": artifacts[0]["file"], "why": "test",
                     "test_predictions": rows if with_test else None},
        "optimization": {"threads": 2},
        "timings_s": {"data": 1.0}, "total_s": 1.0, "files": [],
    }
