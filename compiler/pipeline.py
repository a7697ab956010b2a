"""`compile_model`: from a folder of labelled images to checked TFLite and ONNX files.

The CLI builds a CompileConfig and calls this; so can any Python program. Stages, in order:

  data      decode-check every file, split, load
  teacher   two-stage fine-tuning of the teacher (compiler/finetune.py)
  student   head on cached features, then distillation from the teacher (compiler/distill.py)
  baseline  the same student trained on the labels alone, same budget (the ablation)
  export    TFLite and ONNX of the deployed model (the student, or the teacher with --student none)
  verify    each file run in its runtime against its Keras model on the test split
  report    report.json, confusion_matrix.png, the printed summary

Everything is written into a hidden staging folder inside `config.out` (compiler/outputs.py)
and moved into place only when every check has passed; a file that fails its check keeps an
`.unverified` (or `.unchecked`) name. One compile at a time holds `config.out`'s lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from edgetl import __version__
from edgetl.compiler.cache import StageCache, default_cache_root, hash_files, stage_key
from edgetl.compiler.config import CompileConfig
from edgetl.compiler.outputs import RUN_MARKER  # noqa: F401 (importable from here, as before)
from edgetl.compiler.outputs import BuildOutput, check_data_holds_no_build, check_location, environment_errors
from edgetl.compiler.recipe import MANIFEST_FILE, RECIPE_FILE, recipe_text, write_manifest, write_recipe
from edgetl.compiler.targets import get_target
from edgetl.compiler.data import RESIZE_POLICY, Dataset, load_images, scan_dataset, scan_unlabeled
from edgetl.compiler.evaluate import classification_metrics
from edgetl.compiler.progress import StageTimer, activity, console, progress_bar
from edgetl.compiler.html_report import HTML_FILE, write_html_report
from edgetl.compiler.report import CONFUSION_PNG, plot_confusion_matrix, print_summary, write_report
from edgetl.errors import ExportMismatchError, ResourceError
from edgetl.models import ModelConfig, get_config
from edgetl.runtime.model_info import INFO_FILE, LABELS_FILE, ModelInfo

TEACHER_FILE = "teacher.keras"
STUDENT_FILE = "student.keras"
TFLITE_FILE = "model.tflite"
ONNX_FILE = "model.onnx"


def prepare_output(out: Path, overwrite: bool, run_id: str | None = None) -> Path:
    """Refuse a folder that already holds files (unless asked to) or is in use; then create it.

    A folder left by an interrupted compile of the same recipe (its marker holds `run_id`) is
    accepted without asking: its files are edgetl's own and unfinished.
    """
    BuildOutput(out, overwrite, run_id).check()
    with environment_errors(Path(out)):
        Path(out).mkdir(parents=True, exist_ok=True)
    return Path(out)


def run_id(config: CompileConfig) -> str:
    """Identity of a compile's settings (overwrite aside), for resuming."""
    settings = {k: v for k, v in config.to_json().items() if k != "overwrite"}
    return stage_key("run", **settings)


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


def compile_model(config: CompileConfig, dry_run: bool = False) -> dict:
    """Run the whole pipeline; return the report (also written to `config.out/report.json`).

    dry_run: only resolve the recipe and say which stages would run (and which are cached).
    """
    start = time.perf_counter()
    timer = StageTimer()
    config.validate()
    config = config.resolved()
    target = get_target(config.target) if config.target else None
    teacher_config = get_config(config.teacher)  # unknown names fail before any work
    student_config = get_config(config.student) if config.distills else None
    # Inputs first, and nothing is created in --out before they have passed: the folder
    # itself, then the data (which must not hold an edgetl build), then every image.
    build = BuildOutput(config.out, config.overwrite, run_id(config), announce=console.print)
    if not dry_run:
        build.check()
    _check_inputs(config)
    if dry_run:
        return plan(config)

    data_stage = timer.stage("data", f"checking images in {config.data}")
    with data_stage, _large_images_noted(), activity("decode-check images", unit="files") as advance:
        dataset = scan_dataset(
            config.data, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed, progress=advance
        )
        unlabeled, unlabeled_skipped = scan_unlabeled(config.unlabeled) if config.unlabeled else ([], [])
        for warning in dataset.warnings:
            console.print(f"[yellow]warning:[/] {warning}")
        if dataset.skipped or unlabeled_skipped:
            n = len(dataset.skipped) + len(unlabeled_skipped)
            console.print(f"[yellow]skipping {n} unreadable files (listed in the report)")
    _check_memory(config, dataset, unlabeled, teacher_config, student_config)

    out = build.open()  # the staging folder: moved into --out only once every check has passed
    try:
        with environment_errors(config.out), warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # noted once by the data check
            report = _run_stages(config, out, timer, start, target, teacher_config, student_config, dataset, unlabeled, unlabeled_skipped)
        build.publish()
    except BaseException:
        build.fail()
        raise
    finally:
        build.close()
    print_summary(report)
    return report


@contextlib.contextmanager
def _large_images_noted():
    """Pillow's decompression-bomb warning (printed raw, once per image) as one edgetl line.

    Images over Pillow's limit (about 89 megapixels) still decode; those over twice the limit
    are skipped and listed by the data check itself.
    """
    large = []
    with warnings.catch_warnings():  # restores the filters and showwarning afterwards
        shown = warnings.showwarning

        def show(message, category, *args, **kwargs):
            if issubclass(category, Image.DecompressionBombWarning):
                large.append(str(message))
            else:
                shown(message, category, *args, **kwargs)

        warnings.simplefilter("always", Image.DecompressionBombWarning)
        warnings.showwarning = show
        yield
    if large:
        console.print(
            f"[yellow]note:[/] {len(large)} very large image(s) (over {Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels) were "
            "decoded; they slow every stage that reads images, and the models see them resized to a few hundred pixels"
        )


def _check_inputs(config: CompileConfig) -> None:
    """Where the build goes and what it reads: checks that create nothing."""
    check_location(config.out, config.data, config.unlabeled)
    check_data_holds_no_build(config.data)
    if config.unlabeled:
        check_data_holds_no_build(config.unlabeled, "--unlabeled")


def _check_memory(config: CompileConfig, dataset: Dataset, unlabeled, teacher_config, student_config) -> None:
    """Refuse a compile whose decoded images alone would not fit in this machine's memory.

    Each split is decoded once per input size (ImageCache, uint8); training needs more besides,
    so more than half the memory for the images is refused rather than left to the OOM killer.
    """
    sizes = {teacher_config.input_size}
    if config.distills:
        sizes.add(config.student_size or student_config.input_size)
    images = sum(len(samples) for samples in dataset.splits.values()) + len(unlabeled)
    needed = images * sum(s * s * 3 for s in sizes)
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not available on this platform
        return
    if needed > memory / 2:
        raise ResourceError(
            f"{images} images decoded at {' and '.join(f'{s} px' for s in sorted(sizes))} need {_bytes(needed)}, "
            f"more than half of this machine's {_bytes(memory)} of memory; use a smaller --student-size or fewer images"
        )


def _bytes(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _run_stages(config, out: Path, timer, start, target, teacher_config, student_config, dataset, unlabeled, unlabeled_skipped) -> dict:
    """Every stage after the data check, writing into `out` (the staging folder)."""
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

    # The float exports depend only on the deployed model: a replay that changes only the
    # quantization takes them (already verified once) from the cache.
    export_key = stage_key("export", model=keys["student" if deployed is not teacher else "teacher"])
    exported = cache.load_files("export", export_key, ["model.fp32.tflite", "model.fp32.onnx"])
    with timer.stage("export", f"exporting {deployed.name} to TFLite and ONNX (float32)" + (" (cached)" if exported else "")):
        from edgetl.compiler.export import export_onnx, export_tflite

        if exported:
            unverified = {fmt: out / f"model.unverified.{fmt}" for fmt in ("tflite", "onnx")}
            for fmt, path in unverified.items():
                shutil.copyfile(exported[f"model.fp32.{fmt}"], path)
        else:
            with activity("convert to TFLite"):
                tflite_file = export_tflite(deployed.model, out / "model.unverified.tflite")
            with activity("convert to ONNX"):
                onnx_file = export_onnx(deployed.model, out / "model.unverified.onnx")
            unverified = {"tflite": tflite_file, "onnx": onnx_file}

    with timer.stage("verify", "checking the float exports against their Keras model on the test split"):
        _predict_keras(config, images, teacher, deployed, baseline)
        float_files = _verify_float(out, deployed, unverified, images, config.batch_size)
        if not exported:
            cache.store_files("export", export_key, {f"model.fp32.{fmt}": path for fmt, path in float_files.items()})

    with timer.stage("optimize", "quantization and pruning: building, measuring and choosing"):
        optimizer = _optimize(config, target, out, teacher, deployed, images, float_files)

    with timer.stage("package", "deployed files, metadata, app handoff"):
        deployed_files = _package(config, target, out, deployed, optimizer, classes, images)

    artifacts = _artifacts(out, teacher, deployed, optimizer, deployed_files, images, classes)
    deployed_artifact = next(a for a in artifacts if a["file"] == TFLITE_FILE)
    plot_confusion_matrix(
        deployed_artifact["test"]["confusion_matrix"],
        classes,
        f"{TFLITE_FILE} ({deployed.name}, {deployed_artifact['precision']}) on the test split: "
        f"accuracy {deployed_artifact['test']['accuracy']:.1%}",
        out / CONFUSION_PNG,
    )
    report = _build_report(config, dataset, unlabeled_skipped, images, teacher, deployed, baseline, artifacts, timer, start)
    report["deployed"].update(deployed_files["deployed"])
    report["target"] = target.to_json() if target else None
    report["optimization"] = {"trained": optimizer.trained, "calibration_images": config.calibration_size, "threads": optimizer.threads}
    report["app"] = deployed_files.get("app")
    write_report(report, out)
    write_html_report(report, out)
    write_recipe(config, out)
    write_manifest(out, dataset, keys, keys["data_content"])
    return report


def plan(config: CompileConfig) -> dict:
    """The resolved recipe and the stages a compile would run, with what the cache already holds."""
    from edgetl.compiler.progress import summary_console

    dataset = scan_dataset(config.data, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed)
    unlabeled = scan_unlabeled(config.unlabeled)[0] if config.unlabeled else []
    keys = _stage_keys(config, dataset, unlabeled)
    cache = StageCache((config.cache_dir or default_cache_root()) if config.use_cache else None)
    stages = []
    for stage in ("teacher", "student_head", "student", "baseline"):
        if stage in keys and (stage != "baseline" or config.baseline):
            cached = cache.root is not None and (cache.root / f"{stage}-{keys[stage]}" / StageCache.RECORD).is_file()
            stages.append({"stage": stage, "key": keys[stage], "cached": cached})
    stages += [{"stage": s, "key": None, "cached": False} for s in ("export", "verify", "optimize", "package")]
    summary_console.print(recipe_text(config), markup=False, highlight=False)
    summary_console.print("stages:")
    for s in stages:
        summary_console.print(f"  {s['stage']:<13} {'cached, reused' if s['cached'] else 'would run'}", highlight=False)
    return {"config": config.to_json(), "stages": stages, "dataset": dataset.to_report()}


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
    content = hash_files([s.path for split in dataset.splits.values() for s in split], dataset.root)
    data = stage_key(
        "data",
        content=content,
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
    keys = {"data_content": content, "data": data, "teacher": teacher}
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


def _predict_keras(config, images: ImageCache, *trained_models) -> None:
    """Each Keras model's probabilities on the test split, at its own input size."""
    from edgetl.runtime.keras_model import KerasSession

    for trained in filter(None, trained_models):
        if trained.test_probs is None:
            x_test, _ = images.get("test", trained.input_size)
            trained.test_probs = KerasSession(model=trained.model).predict(x_test, config.batch_size)


def _verify_float(out: Path, deployed: TrainedModel, unverified: dict, images: ImageCache, batch_size: int) -> dict:
    """Run each float export in its runtime against the Keras model; a miss fails the compile."""
    from edgetl.compiler.optimize import VARIANTS_DIR
    from edgetl.compiler.verify import compare
    from edgetl.runtime import open_session

    x_test, _ = images.get("test", deployed.input_size)
    verified = {}
    for fmt, path in unverified.items():
        session = open_session(path)
        probs = session.predict(x_test, batch_size)
        parity = compare(path.name, session.runtime, probs, deployed.test_probs, deployed.config.export_atol)
        if not parity.passed:
            raise ExportMismatchError(f"{parity.describe_failure()}; the file is kept as {path}")
        final = out / VARIANTS_DIR / f"model.fp32.{fmt}"
        final.parent.mkdir(exist_ok=True)
        os.replace(path, final)
        verified[fmt] = final
    return verified


def _optimize(config: CompileConfig, target, out: Path, teacher: TrainedModel, deployed: TrainedModel, images: ImageCache, float_files: dict):
    from edgetl.compiler.optimize import Optimizer

    distilled = deployed is not teacher
    cores = os.cpu_count() or 1
    threads = config.threads or min(target.threads if target else 4, cores)
    optimizer = Optimizer(
        float_model=deployed.model,
        teacher_model=teacher.model if distilled else None,
        train_views=_student_views(config, teacher if distilled else None, deployed.input_size, images),
        config=config,
        images=images,
        size=deployed.input_size,
        out=out,
        threads=threads,
    )
    optimizer.add_float(float_files["tflite"], float_files["onnx"])
    mode = config.quantize
    if mode == "auto":
        optimizer.add_ptq()
        if config.qat:
            optimizer.ensure("int8-qat")
        optimizer.apply_gate()
        int8 = next(c for c in optimizer.candidates if c.name == "int8")
        if int8.gate != "passed" and not config.qat:
            console.print(f"    post-training int8 {int8.gate}: trying quantization-aware training")
            optimizer.ensure("int8-qat")
    elif mode != "fp32":
        optimizer.settle(mode)
        if config.qat and mode == "int8":
            optimizer.ensure("int8-qat")
    if config.prune > 0:
        pruned, sparsity = optimizer.pruned_model()
        suffix = f"-pruned{round(sparsity * 100)}"
        preserve = "pruning"  # PQAT
        if config.cluster:
            pruned = optimizer.clustered_model(pruned)
            suffix += f"-clustered{config.cluster}"
            preserve = "clusters"  # PCQAT
        optimizer.add_ptq(pruned, suffix, sparsity, precisions=("fp32",))
        if mode in ("auto", "int8"):
            optimizer.ensure("int8-qat", pruned, suffix, sparsity, preserve)
            optimizer.add_onnx_compressed(pruned, suffix, sparsity)
        elif mode in ("fp16", "dynamic"):
            optimizer.add_ptq(pruned, suffix, sparsity, precisions=(mode,))
    if mode in ("auto", "int8"):
        optimizer.add_onnx_int8(float_files["onnx"])
    if mode == "fp16" or (target and target.ops == "onnx-tensorrt"):
        optimizer.add_onnx_fp16(float_files["onnx"])
    optimizer.apply_gate()
    optimizer.time_all()
    return optimizer


def _package(config, target, out: Path, deployed: TrainedModel, optimizer, classes, images: ImageCache) -> dict:
    """Copy the chosen files to model.tflite / model.onnx with metadata; check the target; app handoff."""
    from edgetl.compiler.atomic import atomic_write_bytes
    from edgetl.compiler.constraints import check_target
    from edgetl.compiler.handoff import write_handoff
    from edgetl.compiler.metadata import add_onnx_metadata, add_tflite_metadata, onnx_classifier_props

    pinned = None if config.quantize == "auto" else config.quantize
    tflite, why_tflite = optimizer.choose("tflite", pinned, prefer_pruned=config.prune > 0)
    onnx_pinned = "fp16" if target and target.ops == "onnx-tensorrt" else (
        pinned if optimizer.has(pinned or "", "onnx") else ("fp32" if pinned else None)
    )
    onnx_choice, why_onnx = optimizer.choose("onnx", onnx_pinned, prefer_pruned=config.prune > 0)

    info = ModelInfo(labels=tuple(classes), input_size=deployed.input_size, resize_policy=RESIZE_POLICY, model=deployed.name)
    info.write(out)
    description = f"{deployed.name} image classifier ({len(classes)} classes) made by edgetl {__version__}"
    common = dict(name=deployed.name, description=description, version=__version__, author="edgetl", license="see the training data's licence")
    atomic_write_bytes(
        out / TFLITE_FILE,
        add_tflite_metadata(tflite.path.read_bytes(), labels=list(classes), model_info=info.to_json(), **common),
    )
    shutil.copyfile(onnx_choice.path, out / ".model.onnx.tmp")
    add_onnx_metadata(out / ".model.onnx.tmp", onnx_classifier_props(labels=list(classes), input_size=deployed.input_size, model_info=info.to_json(), **common))
    os.replace(out / ".model.onnx.tmp", out / ONNX_FILE)

    result = {
        "deployed": {
            "tflite_variant": tflite.file,
            "onnx_variant": onnx_choice.file,
            "why": f"model.tflite is {tflite.name}: {why_tflite}. model.onnx is {onnx_choice.name}: {why_onnx}.",
            "io": tflite.io,
        }
    }
    if target is not None:
        check_target(target, out / TFLITE_FILE, out / ONNX_FILE)
        fastest = min((tflite, onnx_choice), key=lambda c: c.latency_p50_ms)
        primary = {"tflite": TFLITE_FILE, "onnx": ONNX_FILE}
        if target.name == "x86-cpu":
            chosen_file = primary[fastest.format]
            reason = f"{chosen_file} measured faster here ({fastest.latency_p50_ms:.2f} ms p50)"
        else:
            chosen_file = primary[target.formats[0]]
            reason = f"{target.runtime} takes {target.formats[0].upper()}"
        result["deployed"]["target_file"] = chosen_file
        result["deployed"]["why"] = f"For {target.name}: {chosen_file} ({reason}). " + result["deployed"]["why"]

    # App handoff: snippets for the TFLite file and golden vectors from its real outputs.
    x_test, y_test = images.get("test", deployed.input_size)
    picks = _golden_indices(y_test, len(classes))
    result["app"] = write_handoff(
        out,
        model_file=TFLITE_FILE,
        model=deployed.name,
        target=target.name if target else "any TFLite runtime",
        threads=target.threads if target else 4,
        size=deployed.input_size,
        resize="the whole image stretched to the input size (no crop), bilinear; RGB 0..255 (model_info.json has the details)",
        io=tflite.io,
        golden_images=x_test[picks],
        golden_labels=[classes[y_test[i]] for i in picks],
        golden_probs=tflite.test_probs[picks],
        labels=list(classes),
    )
    return result


def _golden_indices(y: np.ndarray, num_classes: int, count: int = 6) -> list[int]:
    """One test image of each of the first `count` classes (deterministic)."""
    picks = []
    for label in range(num_classes):
        where = np.flatnonzero(y == label)
        if len(where):
            picks.append(int(where[0]))
        if len(picks) == count:
            break
    return picks


def _artifacts(out: Path, teacher, deployed, optimizer, deployed_files: dict, images: ImageCache, classes) -> list[dict]:
    from edgetl.compiler.optimize import gzip_size
    from edgetl.compiler.verify import compare

    _, y_test = images.get("test", deployed.input_size)
    rows = [_artifact(out / TEACHER_FILE, "keras", teacher.test_probs, y_test, classes, None)]
    if deployed is not teacher:
        rows.append(_artifact(out / STUDENT_FILE, "keras", deployed.test_probs, y_test, classes, None))
    fp32_accuracy = {}
    variant_rows = []
    for c in optimizer.candidates:
        runtime = "litert" if c.format == "tflite" else "onnxruntime"
        reference = deployed.test_probs if c.reference_probs is None else c.reference_probs
        parity = compare(c.file, runtime, c.test_probs, reference, deployed.config.export_atol if c.precision == "fp32" else 1.0)
        row = _artifact(c.path, runtime, c.test_probs, y_test, classes, {**parity.to_json(), "against": c.reference})
        row.update(
            file=c.file,
            precision=c.precision,
            sparsity=c.sparsity,
            origin=c.origin,
            gzip_bytes=gzip_size(c.path),
            latency_p50_ms=c.latency_p50_ms,
            val_accuracy=c.val_accuracy,
            gate=c.gate,
        )
        if c.name == "fp32":
            fp32_accuracy[c.format] = row["test"]["accuracy"]
        variant_rows.append(row)
    for row in variant_rows:
        row["accuracy_delta"] = row["test"]["accuracy"] - fp32_accuracy[row["format"]]
    by_file = {row["file"]: row for row in variant_rows}
    for final, variant in ((TFLITE_FILE, deployed_files["deployed"]["tflite_variant"]), (ONNX_FILE, deployed_files["deployed"]["onnx_variant"])):
        row = dict(by_file[variant], file=final, size_bytes=(out / final).stat().st_size, gzip_bytes=gzip_size(out / final), variant=variant)
        rows.append(row)
    return rows + variant_rows


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
        "files": files + [LABELS_FILE, INFO_FILE, "report.json", HTML_FILE, CONFUSION_PNG, RECIPE_FILE, MANIFEST_FILE, "variants/", "app/"],
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
