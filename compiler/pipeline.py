"""`compile_model`: from a folder of labelled images to checked TFLite and ONNX files.

The CLI builds a CompileConfig and calls this; so can any Python program. Stages, in order:
data (decode-check, split, load) -> teacher (two-stage fine-tuning) -> export (TFLite, ONNX)
-> verify (each file run in its runtime against the Keras model on the test split) -> report.
Everything is written into `config.out` only, atomically; a file that fails its check keeps an
`.unverified` name.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from pathlib import Path

from edgetl import __version__
from edgetl.compiler.config import CompileConfig
from edgetl.compiler.data import RESIZE_POLICY, load_images, scan_dataset
from edgetl.compiler.evaluate import classification_metrics
from edgetl.compiler.progress import StageTimer, console, progress_bar
from edgetl.compiler.report import CONFUSION_PNG, plot_confusion_matrix, print_summary, write_report
from edgetl.errors import ExportMismatchError, OutputExistsError
from edgetl.models import get_config
from edgetl.runtime.model_info import INFO_FILE, LABELS_FILE, ModelInfo

TEACHER_FILE = "teacher.keras"
TFLITE_FILE = "model.tflite"
ONNX_FILE = "model.onnx"


def prepare_output(out: Path, overwrite: bool) -> Path:
    """Refuse to write into a folder that already holds files, unless asked to."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        held = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise OutputExistsError(
            f"output folder {out} already holds files ({held}); pass --overwrite to replace "
            "edgetl's files there, or choose another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def _load_split(samples, size: int, description: str):
    with progress_bar(description, len(samples)) as advance:
        return load_images(samples, size, progress=advance)


def compile_model(config: CompileConfig) -> dict:
    """Run the whole pipeline; return the report (also written to `config.out/report.json`)."""
    start = time.perf_counter()
    timer = StageTimer()
    model_config = get_config(config.teacher)  # an unknown name fails before any work
    out = prepare_output(config.out, config.overwrite)

    with timer.stage("data", f"checking images in {config.data}"):
        dataset = scan_dataset(
            config.data, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed
        )
        for warning in dataset.warnings:
            console.print(f"[yellow]warning:[/] {warning}")
        if dataset.skipped:
            console.print(f"[yellow]skipping {len(dataset.skipped)} unreadable files (listed in the report)")

    from edgetl._compat import keras, tf
    from edgetl.compiler.atomic import atomic_path
    from edgetl.compiler.export import export_onnx, export_tflite
    from edgetl.compiler.finetune import finetune
    from edgetl.compiler.verify import compare
    from edgetl.models import create_model
    from edgetl.runtime import open_session
    from edgetl.runtime.keras_model import KerasSession

    keras.utils.set_random_seed(config.seed)
    strategy = tf.distribute.get_strategy()
    classes = dataset.classes
    size = model_config.input_size

    with timer.stage("teacher", f"fine-tuning teacher {config.teacher} ({size} px)"):
        with strategy.scope():
            teacher = create_model(
                config.teacher, weights=config.weights_arg, num_classes=len(classes), dropout=config.dropout
            )
        train = _load_split(dataset.splits["train"], size, "load train")
        val = _load_split(dataset.splits["val"], size, "load val")
        training = finetune(teacher, model_config.unfreeze_from, config, train, val, strategy)
        with atomic_path(out / TEACHER_FILE) as tmp:
            # Saved through an uncompiled twin (same layers) so no optimizer state is written:
            # the teacher file is a reference model, not a training checkpoint.
            keras.Model(teacher.inputs, teacher.outputs, name=teacher.name).save(tmp)

    with timer.stage("export", "exporting TFLite and ONNX"):
        unverified = {
            TFLITE_FILE: export_tflite(teacher, out / "model.unverified.tflite"),
            ONNX_FILE: export_onnx(teacher, out / "model.unverified.onnx"),
        }

    with timer.stage("verify", "checking every artefact on the test split"):
        x_test, y_test = _load_split(dataset.splits["test"], size, "load test")
        reference = KerasSession(model=teacher).predict(x_test, config.batch_size)
        artifacts = [_artifact(out / TEACHER_FILE, "keras", reference, y_test, classes, parity=None)]
        for final_name, path in unverified.items():
            session = open_session(path)
            probs = session.predict(x_test, config.batch_size)
            parity = compare(final_name, session.runtime, probs, reference, model_config.export_atol)
            if not parity.passed:
                raise ExportMismatchError(f"{parity.describe_failure()}; the file is kept as {path}")
            os.replace(path, out / final_name)
            artifacts.append(_artifact(out / final_name, session.runtime, probs, y_test, classes, parity.to_json()))

    ModelInfo(labels=tuple(classes), input_size=size, resize_policy=RESIZE_POLICY, model=config.teacher).write(out)
    deployed = next(a for a in artifacts if a["file"] == TFLITE_FILE)
    plot_confusion_matrix(
        deployed["test"]["confusion_matrix"],
        classes,
        f"{TFLITE_FILE} on the test split: accuracy {deployed['test']['accuracy']:.1%}",
        out / CONFUSION_PNG,
    )
    report = {
        "edgetl_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "out": str(out),
        "config": config.to_json(),
        "dataset": dataset.to_report(),
        "teacher": {
            "model": config.teacher,
            "params": int(teacher.count_params()),
            "input_size": size,
            "preprocessing": model_config.preprocessing + " (inside the exported graphs)",
            "weights": str(config.teacher_weights),
            "training": training.to_json(),
        },
        "artifacts": artifacts,
        "deployed": {"tflite": TFLITE_FILE, "onnx": ONNX_FILE},
        "timings_s": {k: round(v, 2) for k, v in timer.seconds.items()},
        "total_s": round(time.perf_counter() - start, 2),
        "files": [TFLITE_FILE, ONNX_FILE, TEACHER_FILE, LABELS_FILE, INFO_FILE, "report.json", CONFUSION_PNG],
    }
    write_report(report, out)
    print_summary(report)
    return report


def _artifact(path: Path, runtime: str, probs, y_true, classes, parity: dict | None) -> dict:
    return {
        "file": path.name,
        "format": path.suffix.lstrip("."),
        "runtime": runtime,
        "precision": "float32",
        "size_bytes": _size(path),
        "test": classification_metrics(y_true, probs, classes),
        "parity": parity,
    }


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
