"""`compile_model`: from a folder of labelled images to checked TFLite and ONNX files.

The CLI builds a CompileConfig and calls this; so can any Python program. Stages, in order:

  data      decode-check every file, split, load
  teacher   two-stage fine-tuning of the teacher (compiler/finetune.py)
  student   head on cached features, then distillation from the teacher (compiler/distill.py)
  baseline  the same student trained on the labels alone, same budget (the ablation)
  export    TFLite and ONNX of the deployed model (the student, or the teacher with --student none)
  verify    each file run in its runtime against its Keras model on the test split
  report    report.json, confusion_matrix.png, the printed summary

Everything is written into `config.out` only, atomically; a file that fails its check keeps an
`.unverified` name.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import time
from pathlib import Path

import numpy as np

from edgetl import __version__
from edgetl.compiler.cache import StageCache, default_cache_root, hash_files, stage_key
from edgetl.compiler.config import CompileConfig
from edgetl.compiler.data import RESIZE_POLICY, Dataset, load_images, scan_dataset, scan_unlabeled
from edgetl.compiler.evaluate import classification_metrics
from edgetl.compiler.progress import StageTimer, console, progress_bar
from edgetl.compiler.report import CONFUSION_PNG, plot_confusion_matrix, print_summary, write_report
from edgetl.errors import ExportMismatchError, OutputExistsError
from edgetl.models import ModelConfig, get_config
from edgetl.runtime.model_info import INFO_FILE, LABELS_FILE, ModelInfo

TEACHER_FILE = "teacher.keras"
STUDENT_FILE = "student.keras"
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


class ImageCache:
    """Each split decoded and resized once per input size, however many models need it."""

    def __init__(self, dataset: Dataset, unlabeled=()):
        self.samples = {**dataset.splits, "unlabeled": list(unlabeled)}
        self._arrays: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}

    def get(self, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
        key = (split, size)
        if key not in self._arrays:
            samples = self.samples[split]
            with progress_bar(f"load {split} ({size} px)", len(samples)) as advance:
                self._arrays[key] = load_images(samples, size, progress=advance)
        return self._arrays[key]


@dataclasses.dataclass
class TrainedModel:
    """A model that came out of a training stage, with what the report needs about it."""

    role: str  # "teacher", "student", "baseline"
    name: str
    config: ModelConfig
    model: object  # tf_keras.Model
    input_size: int
    training: dict
    test_probs: np.ndarray | None = None
    cached: bool = False  # reused from the stage cache rather than trained in this run

    def summary(self, y_test, classes) -> dict:
        from edgetl.models import count_macs

        return {
            "model": self.name,
            "input_size": self.input_size,
            "params": int(self.model.count_params()),
            "macs": count_macs(self.model),
            "preprocessing": self.config.preprocessing + " (inside the exported graphs)",
            "training": self.training,
            "cached": self.cached,
            "test": classification_metrics(y_test, self.test_probs, classes),
        }


def compile_model(config: CompileConfig) -> dict:
    """Run the whole pipeline; return the report (also written to `config.out/report.json`)."""
    start = time.perf_counter()
    timer = StageTimer()
    teacher_config = get_config(config.teacher)  # unknown names fail before any work
    student_config = get_config(config.student) if config.distills else None
    out = prepare_output(config.out, config.overwrite)

    with timer.stage("data", f"checking images in {config.data}"):
        dataset = scan_dataset(
            config.data, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed
        )
        unlabeled, unlabeled_skipped = scan_unlabeled(config.unlabeled) if config.unlabeled else ([], [])
        for warning in dataset.warnings:
            console.print(f"[yellow]warning:[/] {warning}")
        if dataset.skipped or unlabeled_skipped:
            n = len(dataset.skipped) + len(unlabeled_skipped)
            console.print(f"[yellow]skipping {n} unreadable files (listed in the report)")
    images = ImageCache(dataset, unlabeled)
    classes = dataset.classes
    cache = StageCache((config.cache_dir or default_cache_root()) if config.use_cache else None)
    keys = _stage_keys(config, dataset, unlabeled)

    from edgetl._compat import keras, tf

    keras.utils.set_random_seed(config.seed)
    strategy = tf.distribute.get_strategy()

    with timer.stage("teacher", f"fine-tuning teacher {config.teacher} ({teacher_config.input_size} px)"):
        teacher = _cached(cache, "teacher", keys["teacher"], lambda: _train_teacher(config, teacher_config, images, len(classes), strategy))
        _save_keras(teacher.model, out / TEACHER_FILE)

    deployed, baseline = teacher, None
    if config.distills:
        size = config.student_size or student_config.input_size
        with timer.stage("student", f"distilling {config.teacher} into {config.student} ({size} px)"):
            head = _cached(
                cache, "student_head", keys["student_head"], lambda: _train_student_head(config, student_config, size, images, len(classes), strategy)
            )
            deployed = _cached(
                cache, "student", keys["student"], lambda: _distil(config, student_config, head, teacher, images, len(classes), strategy)
            )
            _save_keras(deployed.model, out / STUDENT_FILE)
        if config.baseline:
            with timer.stage("baseline", f"baseline: {config.student} on the labels alone (no teacher)"):
                baseline = _cached(
                    cache, "baseline", keys["baseline"], lambda: _train_baseline(config, student_config, head, images, len(classes), strategy)
                )

    with timer.stage("export", f"exporting {config.student if config.distills else config.teacher} to TFLite and ONNX"):
        from edgetl.compiler.export import export_onnx, export_tflite

        unverified = {
            TFLITE_FILE: export_tflite(deployed.model, out / "model.unverified.tflite"),
            ONNX_FILE: export_onnx(deployed.model, out / "model.unverified.onnx"),
        }

    with timer.stage("verify", "checking every model and file on the test split"):
        artifacts = _verify(config, out, teacher, deployed, baseline, unverified, images, classes)

    ModelInfo(labels=tuple(classes), input_size=deployed.input_size, resize_policy=RESIZE_POLICY, model=deployed.name).write(out)
    deployed_file = next(a for a in artifacts if a["file"] == TFLITE_FILE)
    plot_confusion_matrix(
        deployed_file["test"]["confusion_matrix"],
        classes,
        f"{TFLITE_FILE} ({deployed.name}) on the test split: accuracy {deployed_file['test']['accuracy']:.1%}",
        out / CONFUSION_PNG,
    )
    report = _build_report(config, dataset, unlabeled_skipped, images, teacher, deployed, baseline, artifacts, timer, start)
    write_report(report, out)
    print_summary(report)
    return report


def _train_teacher(config: CompileConfig, model_config: ModelConfig, images: ImageCache, num_classes: int, strategy):
    from edgetl.compiler.finetune import finetune
    from edgetl.models import create_model

    size = model_config.input_size
    with strategy.scope():
        model = create_model(
            config.teacher, weights=config.weights_arg(config.teacher_weights), num_classes=num_classes, dropout=config.dropout
        )
    training = finetune(model, model_config.unfreeze_from, config, images.get("train", size), images.get("val", size), strategy)
    return TrainedModel("teacher", config.teacher, model_config, model, size, training.to_json())


def _new_student(config: CompileConfig, size: int, num_classes: int, strategy):
    from edgetl.models import create_model

    with strategy.scope():
        return create_model(
            config.student,
            weights=config.weights_arg(config.student_weights),
            num_classes=num_classes,
            dropout=config.dropout,
            input_size=size,
        )


def _student_views(config: CompileConfig, teacher: TrainedModel | None, size: int, images: ImageCache):
    """Training pixels at the larger input size (one view, resized for each model), plus unlabelled."""
    view_size = max(size, teacher.input_size) if teacher is not None else size
    x, y = images.get("train", view_size)
    if teacher is not None and images.samples["unlabeled"]:
        xu, yu = images.get("unlabeled", view_size)
        x, y = np.concatenate([x, xu]), np.concatenate([y, yu])
    return x, y


def _student_kwargs(config: CompileConfig, model_config: ModelConfig) -> dict:
    return dict(
        unfreeze_from=model_config.unfreeze_from,
        epochs=config.distill_epochs,
        learning_rate=config.distill_learning_rate,
        batch_size=config.batch_size,
        patience=config.patience,
        temperature=config.temperature,
        seed=config.seed,
    )


def _train_student_head(config, model_config, size, images: ImageCache, num_classes, strategy) -> TrainedModel:
    """The student with a new head trained on its cached features: where distillation and the
    baseline both start from."""
    from edgetl.compiler.finetune import train_head

    student = _new_student(config, size, num_classes, strategy)
    head = train_head(student, config, images.get("train", size), images.get("val", size), strategy, label="student")
    return TrainedModel("student", config.student, model_config, student, size, {"head": dataclasses.asdict(head)})


def _from_head(head: TrainedModel, config, num_classes, strategy):
    """A fresh student with the head stage's weights (the cached head model stays untouched)."""
    from edgetl.models import create_model

    with strategy.scope():
        model = create_model(config.student, weights=None, num_classes=num_classes, dropout=config.dropout, input_size=head.input_size)
    model.set_weights(head.model.get_weights())
    return model


def _distil(config, model_config, head: TrainedModel, teacher: TrainedModel, images: ImageCache, num_classes, strategy):
    from edgetl.compiler.distill import train_student

    student = _from_head(head, config, num_classes, strategy)
    result = train_student(
        student,
        teacher.model,
        train_views=_student_views(config, teacher, head.input_size, images),
        val=images.get("val", head.input_size),
        alpha=config.alpha,
        label="student: distillation",
        strategy=strategy,
        **_student_kwargs(config, model_config),
    )
    training = {**head.training, "distillation": result.to_json()}
    return TrainedModel("student", config.student, model_config, student, head.input_size, training)


def _train_baseline(config, model_config, head: TrainedModel, images: ImageCache, num_classes, strategy):
    from edgetl.compiler.distill import train_student

    baseline = _from_head(head, config, num_classes, strategy)
    result = train_student(
        baseline,
        None,
        train_views=_student_views(config, None, head.input_size, images),
        val=images.get("val", head.input_size),
        alpha=0.0,
        label="baseline: labels only",
        strategy=strategy,
        **_student_kwargs(config, model_config),
    )
    training = {**head.training, "labels_only": result.to_json()}
    return TrainedModel("baseline", config.student, model_config, baseline, head.input_size, training)


def _stage_keys(config: CompileConfig, dataset: Dataset, unlabeled) -> dict[str, str]:
    """What each training stage's result depends on, hashed (see compiler/cache.py)."""
    data = stage_key(
        "data",
        content=hash_files([s.path for split in dataset.splits.values() for s in split], dataset.root),
        splits={split: [(s.path.relative_to(dataset.root).as_posix(), s.label) for s in samples] for split, samples in dataset.splits.items()},
        classes=dataset.classes,
    )
    common = dict(data=data, batch_size=config.batch_size, dropout=config.dropout, patience=config.patience, seed=config.seed)
    head = dict(head_epochs=config.head_epochs, head_learning_rate=config.head_learning_rate)
    teacher = stage_key(
        "teacher",
        **common,
        **head,
        model=config.teacher,
        weights=_weights_id(config.teacher_weights),
        finetune_epochs=config.finetune_epochs,
        finetune_learning_rate=config.finetune_learning_rate,
    )
    keys = {"data": data, "teacher": teacher}
    if config.distills:
        student_head = stage_key(
            "student_head", **common, **head, model=config.student, size=config.student_size, weights=_weights_id(config.student_weights)
        )
        training = dict(head=student_head, epochs=config.distill_epochs, learning_rate=config.distill_learning_rate)
        unlabeled_hash = hash_files([s.path for s in unlabeled], Path(config.unlabeled).resolve()) if unlabeled else None
        keys["student_head"] = student_head
        keys["student"] = stage_key(
            "student", **training, teacher=teacher, temperature=config.temperature, alpha=config.alpha, unlabeled=unlabeled_hash
        )
        keys["baseline"] = stage_key("baseline", **training)
    return keys


def _weights_id(weights: str) -> str:
    """A weights option as it matters for caching: a file by its content, a name by itself."""
    path = Path(weights)
    return hash_files([path], path.parent) if path.is_file() else weights


def _cached(cache: StageCache, stage: str, key: str, train) -> TrainedModel:
    """Train, or reuse the stage's cached result when its inputs are unchanged."""
    hit = cache.load(stage, key)
    if hit is not None:
        model, record = hit
        console.print(f"    reusing cached {stage} ({key}) from {cache.root}")
        return TrainedModel(
            record["role"], record["name"], get_config(record["name"]), model, record["input_size"], record["training"], cached=True
        )
    trained = train()
    cache.store(stage, key, trained.model, {"role": trained.role, "name": trained.name, "input_size": trained.input_size, "training": trained.training})
    return trained


def _verify(config, out: Path, teacher, deployed, baseline, unverified: dict, images: ImageCache, classes) -> list[dict]:
    from edgetl.compiler.verify import compare
    from edgetl.runtime import open_session
    from edgetl.runtime.keras_model import KerasSession

    for trained in filter(None, (teacher, deployed, baseline)):
        if trained.test_probs is None:
            x_test, _ = images.get("test", trained.input_size)
            trained.test_probs = KerasSession(model=trained.model).predict(x_test, config.batch_size)

    x_test, y_test = images.get("test", deployed.input_size)
    artifacts = [_artifact(out / TEACHER_FILE, "keras", teacher.test_probs, y_test, classes, None)]
    if deployed is not teacher:
        artifacts.append(_artifact(out / STUDENT_FILE, "keras", deployed.test_probs, y_test, classes, None))
    for final_name, path in unverified.items():
        session = open_session(path)
        probs = session.predict(x_test, config.batch_size)
        parity = compare(final_name, session.runtime, probs, deployed.test_probs, deployed.config.export_atol)
        if not parity.passed:
            raise ExportMismatchError(f"{parity.describe_failure()}; the file is kept as {path}")
        os.replace(path, out / final_name)
        artifacts.append(_artifact(out / final_name, session.runtime, probs, y_test, classes, parity.to_json()))
    return artifacts


def _build_report(config, dataset, unlabeled_skipped, images, teacher, deployed, baseline, artifacts, timer, start) -> dict:
    _, y_test = images.get("test", deployed.input_size)
    classes = dataset.classes
    dataset_report = dataset.to_report()
    if config.unlabeled:
        dataset_report["unlabeled"] = {
            "root": str(config.unlabeled),
            "images": len(images.samples["unlabeled"]),
            "skipped": [{"path": s.path.as_posix(), "reason": s.reason} for s in unlabeled_skipped],
        }
    models = {"teacher": teacher.summary(y_test, classes)}
    if deployed is not teacher:
        models["student"] = deployed.summary(y_test, classes)
    if baseline is not None:
        models["baseline"] = baseline.summary(y_test, classes)
    comparison = None
    if baseline is not None:
        gain = models["student"]["test"]["accuracy"] - models["baseline"]["test"]["accuracy"]
        comparison = {
            "distillation_gain_accuracy": gain,
            "distillation_gain_macro_f1": models["student"]["test"]["macro_f1"] - models["baseline"]["test"]["macro_f1"],
            "student_minus_teacher_accuracy": models["student"]["test"]["accuracy"] - models["teacher"]["test"]["accuracy"],
        }
    files = [TFLITE_FILE, ONNX_FILE, TEACHER_FILE] + ([STUDENT_FILE] if deployed is not teacher else [])
    return {
        "edgetl_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "out": str(config.out),
        "config": config.to_json(),
        "dataset": dataset_report,
        "models": models,
        "distillation": comparison,
        "artifacts": artifacts,
        "deployed": {"model": deployed.role, "tflite": TFLITE_FILE, "onnx": ONNX_FILE},
        "timings_s": {k: round(v, 2) for k, v in timer.seconds.items()},
        "total_s": round(time.perf_counter() - start, 2),
        "files": files + [LABELS_FILE, INFO_FILE, "report.json", CONFUSION_PNG],
    }


def _save_keras(model, path: Path) -> None:
    from edgetl._compat import keras
    from edgetl.compiler.atomic import atomic_path

    with atomic_path(path) as tmp:
        # Saved through an uncompiled twin (same layers) so no optimizer state is written:
        # the file is a reference model, not a training checkpoint.
        keras.Model(model.inputs, model.outputs, name=model.name).save(tmp)


def _artifact(path: Path, runtime: str, probs, y_true, classes, parity: dict | None) -> dict:
    return {
        "file": path.name,
        "format": path.suffix.lstrip("."),
        "runtime": runtime,
        "precision": "float32",
        "size_bytes": path.stat().st_size,
        "test": classification_metrics(y_true, probs, classes),
        "parity": parity,
    }
