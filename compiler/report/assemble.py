"""report.json assembled from a finished compile: each model's summary, every file's figures
(accuracy with its interval, parity with its source, size, latency, the gate), the test
predictions behind the gallery of mistakes, and how every figure was obtained, in words.
compiler/report/html.py and summary.py present what this gathers."""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgetl import __version__
from edgetl.compiler.evaluation.evaluate import classification_metrics
from edgetl.compiler.evaluation.stats import Accuracy, paired_difference
from edgetl.compiler.training.crossval import fold_count
from edgetl.compiler.outputs import ONNX_FILE, SOURCE_FILE, STUDENT_FILE, TEACHER_FILE, TFLITE_FILE
from edgetl.compiler.report.html import HTML_FILE
from edgetl.compiler.report.summary import CONFUSION_PNG
from edgetl.compiler.spec.recipe import MANIFEST_FILE, RECIPE_FILE
from edgetl.runtime.model_info import INFO_FILE, LABELS_FILE

if TYPE_CHECKING:
    from edgetl.compiler.data.datasets import Dataset
    from edgetl.compiler.data.image_store import ImageCache
    from edgetl.compiler.stages.trained import TrainedModel
    from edgetl.compiler.spec.config import CompileConfig


def artifacts(out: Path, teacher, deployed, optimizer, deployed_files: dict, images: ImageCache, classes) -> list[dict]:
    from edgetl.compiler.compression.optimize import gzip_size
    from edgetl.compiler.export.verify import compare

    _, y_test = images.get("test", deployed.input_size)
    held_out = images.held_out["test"]
    rows = [_artifact(out / keras_file(teacher), "keras", teacher.test_probs, y_test, classes, None, held_out)]
    if deployed is not teacher:
        rows.append(_artifact(out / STUDENT_FILE, "keras", deployed.test_probs, y_test, classes, None, held_out))
    fp32_correct = {}  # per format: which scored images the fp32 file gets right
    n_gate = len(images.get("val", deployed.input_size)[1])  # the images each candidate's gate figure is on
    variant_rows = []
    for c in optimizer.candidates:
        runtime = "litert" if c.format == "tflite" else "onnxruntime"
        reference = deployed.test_probs if c.reference_probs is None else c.reference_probs
        parity = compare(c.file, runtime, c.test_probs, reference, deployed.config.export_atol if c.precision == "fp32" else 1.0)
        row = _artifact(c.path, runtime, c.test_probs, y_test, classes, {**parity.to_json(), "against": c.reference}, held_out)
        row.update(
            file=c.file,
            precision=c.precision,
            sparsity=c.sparsity,
            origin=c.origin,
            gzip_bytes=gzip_size(c.path),
            latency_p50_ms=c.latency_p50_ms,
            # The figure the accuracy gate compared, with its interval and n: on val, or under
            # cross-validation on the training images (fidelity to fp32, not accuracy).
            gate_accuracy=(None if c.val_accuracy is None else
                           {"on": optimizer.gate_images(), "split": "val" if optimizer.gates_on_val() else "train", **Accuracy(round(c.val_accuracy * n_gate), n_gate).to_json()}),
            gate=c.gate,
        )
        correct = np.asarray(c.test_probs).argmax(1) == y_test
        if c.name == "fp32":
            fp32_correct[c.format] = correct
        variant_rows.append((row, correct, c.name == "fp32"))
    for row, correct, reference in variant_rows:
        # Paired on the same images (most are right for both files), so the interval says whether
        # quantizing or pruning cost anything beyond noise; the accuracies' own intervals cannot.
        change = paired_difference(correct, fp32_correct[row["format"]])
        row["accuracy_delta"] = change.difference
        if not reference:  # the fp32 file itself: its change is 0 by definition, not a measurement
            row["accuracy_delta_ci95"] = [round(change.low, 4), round(change.high, 4)]
    variant_rows = [row for row, _, _ in variant_rows]
    by_file = {row["file"]: row for row in variant_rows}
    for final, variant in ((TFLITE_FILE, deployed_files["deployed"]["tflite_variant"]), (ONNX_FILE, deployed_files["deployed"]["onnx_variant"])):
        row = dict(by_file[variant], file=final, size_bytes=(out / final).stat().st_size, gzip_bytes=gzip_size(out / final), variant=variant)
        rows.append(row)
    return rows + variant_rows


def test_predictions(dataset: Dataset, optimizer, deployed_files: dict, teacher, deployed, baseline) -> list[dict]:
    """Per test image: what model.tflite said, for the report's gallery of mistakes.

    `keras` holds each trained Keras model's answer (teacher, student, baseline), so the report
    can compare models image by image (paired differences) and tell a confident mistake that
    every model repeats (a likely label error) from one model's slip. Paths are relative to
    the data root, in the order of the test split.
    """
    variant = deployed_files["deployed"]["tflite_variant"]
    probs = next(c for c in optimizer.candidates if c.file == variant).test_probs
    keras_probs = {m.role: m.test_probs for m in (teacher, deployed, baseline) if m is not None}
    rows = []
    for i, sample in enumerate(dataset.splits["test"]):  # empty without a held-out test split
        row = {
            "path": sample.path.relative_to(dataset.root).as_posix(),
            **_digest(dataset, sample),
            "true": dataset.classes[sample.label],
            "predicted": dataset.classes[int(probs[i].argmax())],
            "confidence": round(float(probs[i].max()), 4),
        }
        row["keras"] = {
            role: {"predicted": dataset.classes[int(p[i].argmax())], "confidence": round(float(p[i].max()), 4)}
            for role, p in keras_probs.items()
        }
        rows.append(row)
    return rows


def build_report(config, dataset, unlabeled_skipped, images, teacher, deployed, baseline, artifacts, timer, start) -> dict:
    _, y_test = images.get("test", deployed.input_size)
    classes = dataset.classes
    dataset_report = dataset.to_report()
    if config.unlabeled:
        dataset_report["unlabeled"] = {
            "root": str(config.unlabeled),
            "images": len(images.samples["unlabeled"]),
            "skipped": [{"path": s.path.as_posix(), "reason": s.reason} for s in unlabeled_skipped],
        }
    held_out = images.held_out["test"]
    _, y_train = images.get("train", deployed.input_size)
    summarise = dict(test_held_out=held_out, y_train=y_train)
    models = {teacher.role: teacher.summary(y_test, classes, **summarise)}
    if deployed is not teacher:
        models["student"] = deployed.summary(y_test, classes, **summarise)
    if baseline is not None:
        models["baseline"] = baseline.summary(y_test, classes, **summarise)
    comparison = None
    if baseline is not None:
        source = "test" if held_out else "cv"
        student, base, teach = (models[r].get(source) for r in ("student", "baseline", "teacher"))
        if student and base:
            y_scored = y_test if held_out else y_train
            comparison = {
                "measured_on": "the held-out test split" if held_out else "cross-validation (out-of-fold, all labelled images)",
                "distillation_gain_accuracy": student["accuracy"] - base["accuracy"],
                # Same images for both: the paired interval says whether the gain is beyond noise.
                "distillation_gain_paired": paired_difference(
                    _correct(deployed, y_scored, held_out), _correct(baseline, y_scored, held_out)).to_json(),
                "distillation_gain_macro_f1": student["macro_f1"] - base["macro_f1"],
                "student_minus_teacher_accuracy": student["accuracy"] - teach["accuracy"] if teach else None,
            }
    files = [TFLITE_FILE, ONNX_FILE, keras_file(teacher)] + ([STUDENT_FILE] if deployed is not teacher else [])
    return {
        "edgetl_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "out": str(config.out),
        "config": config.to_json(),
        "dataset": dataset_report,
        "models": models,
        "distillation": comparison,
        "evaluation": _evaluation(config, dataset, images, refit=[t.role for t in (teacher, deployed, baseline)
                                                                if t is not None and t.head_refit]),
        "artifacts": artifacts,
        "deployed": {"model": deployed.role, "tflite": TFLITE_FILE, "onnx": ONNX_FILE},
        "timings_s": {k: round(v, 2) for k, v in timer.seconds.items()},
        # The process's peak resident memory (MiB) when each stage ended: where it jumps, that stage set it.
        "peak_memory_mb": {k: round(v) for k, v in timer.peak_mb.items()},
        "total_s": round(time.perf_counter() - start, 2),
        "files": files + [LABELS_FILE, INFO_FILE, "report.json", HTML_FILE, CONFUSION_PNG, RECIPE_FILE, MANIFEST_FILE, "variants/", "app/"],
    }


def cv_predictions(dataset: Dataset, deployed: TrainedModel) -> list[dict] | None:
    """Per labelled training image, the deployed model's out-of-fold answer (the one its
    cross-validated estimate counts), so that `edgetl report A B` can pair two builds of one folder
    that had no test split. None when the model was not chosen by cross-validation."""
    oof = (deployed.selection or {}).get("oof_pred")
    train = dataset.splits["train"]
    if dataset.selection != "cv" or oof is None or len(oof) != len(train):
        return None
    return [{"path": s.path.relative_to(dataset.root).as_posix(), **_digest(dataset, s), "true": dataset.classes[s.label],
             "predicted": dataset.classes[int(p)]} for s, p in zip(train, oof)]


def _digest(dataset: Dataset, sample) -> dict:
    """{"digest": first 16 hex digits of the image's bytes' digest} from the data scan, so that
    `edgetl report A B` pairs two builds' answers only on the same photos, not merely the same
    names (a folder whose photos were replaced under the same names is other images); {} when
    the scan did not read the file."""
    digest = dataset.fingerprints.get(sample.path)
    return {"digest": digest.hex()[:16]} if digest else {}


def _correct(trained: TrainedModel, y_true, held_out: bool) -> np.ndarray:
    """Per image, whether `trained` got it right: on the test split, or out of fold."""
    pred = trained.test_probs.argmax(1) if held_out else np.asarray(trained.selection["oof_pred"], np.int64)
    return pred == np.asarray(y_true)


def _evaluation(config, dataset, images: ImageCache, refit: list[str] = ()) -> dict:
    """How every accuracy in the report was obtained, in words and figures."""
    n_train, n_val, n_test = (len(dataset.splits[s]) for s in ("train", "val", "test"))
    folds = fold_count([s.label for s in dataset.splits["train"]], config.folds)  # as many as ran: a small class lowers it
    given = "given" if "test" not in dataset.carved else "carved from the training images"
    if config.model is not None:
        return _source_evaluation(config, dataset)
    if dataset.selection == "cv":
        choices = (f"{folds}-fold stratified cross-validation on all {n_train} labelled training images chose "
                   "between each model's linear probe and its fine-tuning or distillation, and the number of epochs; "
                   "each deployed model was then refit on all of them")
    else:
        choices = (f"the validation split ({n_val} images) chose between each model's linear probe and its "
                   "fine-tuning or distillation (early stopping); the probe's C came from 5-fold cross-validation")
        if refit:
            who = " and the ".join(dict.fromkeys(refit))
            choices += (f". Val kept the {who}'s probe, which was then refit on train + val ({n_train + n_val} images), C chosen "
                        "again by 5-fold cross-validation: its val figures (the quantization gate's, which then checks fidelity "
                        "to fp32, as under cross-validation) are no longer held out")
    test = (f"accuracies marked test are on the held-out test split ({n_test} images, {given}), which decided nothing"
            if images.held_out["test"] else
            "there is no test split: model accuracies are cross-validated estimates (marked cv); the exported files "
            "were scored on the training images only, to measure what quantization changed, not accuracy")
    return {"selection": dataset.selection, "folds": folds if dataset.selection == "cv" else None,
            "cv_below": config.cv_below, "test_images": n_test, "val_images": n_val, "train_images": n_train,
            "choices": choices, "accuracy": test}


def _artifact(path: Path, runtime: str, probs, y_true, classes, parity: dict | None, held_out: bool = True) -> dict:
    """A file's figures. Without a held-out test split its accuracy is measured on the training
    images, under "training_images": a measure of what quantization lost, never of accuracy."""
    metrics = classification_metrics(y_true, probs, classes)
    return {
        "file": path.name,
        "format": path.suffix.lstrip("."),
        "runtime": runtime,
        "precision": "float32",
        "size_bytes": path.stat().st_size,
        "test": metrics if held_out else None,
        **({} if held_out else {"training_images": metrics}),
        "parity": parity,
    }


def scored(row: dict) -> dict:
    """A row's metrics: on the test split, or on the training images when there is none."""
    return row["test"] if row.get("test") is not None else row["training_images"]


def keras_file(trained: TrainedModel) -> str:
    """The Keras file a model is saved as in the build."""
    return {"source": SOURCE_FILE, "student": STUDENT_FILE}.get(trained.role, TEACHER_FILE)


def _source_evaluation(config: CompileConfig, dataset: Dataset) -> dict:
    """How the figures of a --model compile were obtained."""
    train, test = dataset.splits["train"], dataset.splits["test"]
    if test is train:
        accuracy = (f"nothing was trained: every one of the {len(test)} images of DATA calibrated int8, fed the accuracy gate "
                    "and scored the files, and accuracies marked test are on all of them. edgetl cannot know whether your "
                    "model was trained on some of these images: if it was, they overstate its accuracy on new images "
                    "(give DATA a test/ folder of images it never saw for a held-out figure). What quantization changed "
                    "(file against the source model, same images) is measured either way")
        images = f"all {len(test)} images of DATA"
        measured = (f"Nothing was trained here (--model): accuracies are on all {len(test)} images of DATA, which also calibrated "
                    "int8 and fed the accuracy gate; your model may have been trained on some of them (a test/ folder of new "
                    "images gives a held-out figure). Brackets give the 95% Wilson interval.")
    else:
        accuracy = (f"nothing was trained: the {len(train)} images of train/ (and val/) calibrated int8 and fed the accuracy gate; "
                    f"accuracies marked test are on the {len(test)} images of test/, which decided nothing")
        images = f"the {len(test)} images of test/"
        measured = (f"Nothing was trained here (--model): accuracies are on the {len(test)} images of test/, which decided nothing "
                    "(your model may still have seen them in its own training). Brackets give the 95% Wilson interval.")
    return {"selection": "none (--model: nothing trained)", "folds": None, "cv_below": config.cv_below, "test_images": len(test),
            "val_images": 0, "train_images": len(train), "choices": "none: the model was given (--model)",
            "accuracy": accuracy, "scored_on": images, "measured": measured}
