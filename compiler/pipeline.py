"""`compile_model`: from a folder of labelled images to checked TFLite and ONNX files.

The CLI builds a CompileConfig and calls this; so can any Python program. Stages, in order:

  data      decode-check every file, split, load
  teacher   two-stage fine-tuning of the teacher (compiler/training/finetune.py)
  student   head on cached features, then distillation from the teacher (compiler/training/distill.py)
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
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from edgetl import __version__
from edgetl.compiler.training import distribution
from edgetl.compiler.cache import StageCache, default_cache_root, stage_key
from edgetl.compiler.spec.config import CompileConfig
from edgetl.compiler.outputs import RUN_MARKER  # noqa: F401 (importable from here, as before)
from edgetl.compiler.outputs import BuildOutput, check_data_holds_no_build, check_location, environment_errors
from edgetl.compiler.outputs import ONNX_FILE, SOURCE_FILE, STUDENT_FILE, TEACHER_FILE, TFLITE_FILE, VARIANTS_FP32_TFLITE
from edgetl.compiler.spec.recipe import recipe_text, write_manifest, write_recipe
from edgetl.compiler.spec.targets import get_target
from edgetl.compiler.data.datasets import RESIZE_POLICY, Dataset, load_images, scan_dataset, scan_unlabeled
from edgetl.compiler.evaluation.evaluate import classification_metrics
from edgetl.compiler.progress import StageTimer, activity, console, progress_bar
from edgetl.compiler.stages import EXPORT_FILES, StageSequence, stage_keys, stages_for
from edgetl.compiler.report import assemble
from edgetl.compiler.report.html import write_html_report
from edgetl.compiler.report.summary import CONFUSION_PNG, plot_confusion_matrix, print_summary, write_report
from edgetl.errors import ExportMismatchError, ModelFileError, ResourceError, SettingError
from edgetl.models import ModelConfig, get_config
from edgetl.runtime.model_info import ModelInfo



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
    """Each split decoded and resized once per input size, however many models need it.

    The pixels go to one .npy file per split and size in `folder` (compiler/data/image_store.py),
    not into memory: `get` returns a DiskImages that training streams from a batch at a time,
    so memory does not grow with the number of images. Without a folder a temporary one is used;
    `close()` removes it either way.

    With cross-validation there is no val split and maybe no test split: asking for one gives
    the training images instead (export parity, the quantization gate and the golden images need
    some images; they measure fidelity to the float model, not generalisation). `held_out`
    says which splits are real, and the report says so next to every figure.
    """

    def __init__(self, dataset: Dataset, unlabeled=(), folder: Path | None = None):
        from edgetl.compiler.data.image_store import ImageFolder

        self.samples = {**dataset.splits, "unlabeled": list(unlabeled)}
        self.held_out = {split: bool(self.samples.get(split)) for split in ("val", "test")}
        self._arrays: dict[tuple[str, int], tuple[object, np.ndarray]] = {}
        self.folder = ImageFolder(folder)

    def get(self, split: str, size: int):
        """(images, labels): images a DiskImages (uint8 [N, size, size, 3], read on demand)."""
        from edgetl.compiler.data.image_store import write_images

        if split in self.held_out and not self.held_out[split]:
            split = "train"
        if self.samples.get(split) is self.samples["train"]:  # the same images (--model): decoded once
            split = "train"
        key = (split, size)
        if key not in self._arrays:
            samples = self.samples[split]
            labels = np.fromiter((s.label for s in samples), dtype=np.int64, count=len(samples))
            with progress_bar(f"load {split} ({size} px)", len(samples)) as advance:
                images = write_images(samples, size, self.folder.file(split, size), progress=advance)
            self._arrays[key] = (images, labels)
        return self._arrays[key]

    def close(self) -> None:
        self._arrays.clear()
        self.folder.remove()


@dataclasses.dataclass
class TrainedModel:
    """A model that came out of a training stage, with what the report needs about it."""

    role: str  # "teacher", "student", "baseline", or "source" (--model: trained elsewhere)
    name: str
    config: ModelConfig
    model: object  # tf_keras.Model
    input_size: int
    training: dict
    test_probs: np.ndarray | None = None
    cached: bool = False  # reused from the stage cache rather than trained in this run
    # Arrays a later stage needs besides the model (the teacher's fold models under
    # cross-validation), stored with it in the stage cache.
    extras: dict | None = None

    @property
    def selection(self) -> dict | None:
        """How this model's recipe was chosen: the probe or training, by CV or on val."""
        stage = {"teacher": self.training, "student": self.training.get("distillation"), "baseline": self.training.get("labels_only")}.get(self.role)
        return (stage or {}).get("selection")

    def summary(self, y_test, classes, test_held_out: bool = True, y_train=None) -> dict:
        from edgetl.models import count_macs

        summary = {
            "model": self.name,
            "input_size": self.input_size,
            "params": int(self.model.count_params()),
            "macs": count_macs(self.model),
            "preprocessing": self.config.preprocessing + " (inside the exported graphs)",
            "training": self.training,
            "cached": self.cached,
            "test": classification_metrics(y_test, self.test_probs, classes) if test_held_out else None,
        }
        selection = self.selection
        if selection and selection.get("oof_pred") is not None and y_train is not None:
            # Cross-validated estimate: every labelled image scored by a fold model that did not train on it.
            oof = np.eye(len(classes))[np.asarray(selection["oof_pred"], np.int64)]
            cv = classification_metrics(y_train, oof, classes)
            summary["cv"] = {**cv, "n": cv["images"], "folds": int(selection["method"].split("-")[0]),
                             "chose": "the linear probe" if selection["probe_kept"] else f"{selection['chosen_epochs']} epochs of training"}
        return summary


def compile_model(config: CompileConfig, dry_run: bool = False, trust_model: bool = False) -> dict:
    """Run the whole pipeline; return the report (also written to `config.out/report.json`).

    dry_run: only resolve the recipe and say which stages would run (and which are cached).
    trust_model: accept weights files that are full Keras models holding code (Lambda layers,
    bytecode); without it they are refused before any work (runtime/model_safety.py).
    """
    start = time.perf_counter()
    timer = StageTimer()
    # `config` was checked when it was built (CompileConfig validates itself, whatever its source).
    config, backup_root = _for_this_worker(config)
    _check_weights_files(config, trust_model)
    config = config.resolved()
    target = get_target(config.target) if config.target else None
    teacher_config = get_config(config.teacher)  # unknown names fail before any work
    student_config = get_config(config.student) if config.distills else None
    source = None
    # Inputs first, and nothing is created in --out before they have passed: the folder
    # itself, then the data (which must not hold an edgetl build), then every image.
    build = BuildOutput(config.out, config.overwrite, run_id(config), announce=console.print)
    build.check()  # a dry run refuses what the run would refuse, and creates nothing either
    _check_inputs(config)
    if config.model is not None:  # its contract is checked before the data: a wrong option fails at once
        from edgetl.compiler.training.source_model import load_source

        source = load_source(config, trust_model)
        teacher_config = source.config(int(source.model.count_params()))
    if dry_run:
        return plan(config)

    stages = StageSequence(config, timer)  # held to the declaration --dry-run lists (compiler/stages.py)
    data_stage = stages.stage("data", f"checking images in {config.data}")
    with data_stage, _large_images_noted(), activity("decode-check images", unit="files") as advance:
        dataset = scan_dataset(
            config.data, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed,
            selection="cv" if source else config.selection, cv_below=config.cv_below, progress=advance,
        )
        if source is not None:
            dataset = _source_dataset(dataset, source, config)
        elif dataset.selection == "cv":
            console.print(
                f"    {len(dataset.splits['train'])} labelled training images: choices by {config.folds}-fold cross-validation, "
                "then one refit on all of them" + ("" if dataset.splits["test"] else " (no test split is carved)")
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
            report = _run_stages(config, out, stages, start, target, teacher_config, student_config, dataset, unlabeled, unlabeled_skipped, source, backup_root)
        build.publish()
    except BaseException:
        build.fail()
        raise
    finally:
        build.close()
        if not distribution.is_chief():  # a non-chief worker's build was only ever temporary
            shutil.rmtree(config.out, ignore_errors=True)
    if distribution.is_chief():
        print_summary(report)
    return report


def _for_this_worker(config: CompileConfig) -> tuple[CompileConfig, Path | None]:
    """Under --strategy multi-worker: a worker that is not the chief builds into a temporary
    folder and nobody uses the stage cache (every worker must run every training step in step
    with the others, so none may skip a stage the others train). Also the BackupAndRestore
    folder of this run (None under --strategy one), named after the chief's run so a restarted
    worker finds it."""
    import tempfile

    distribution.check(config.strategy)
    backup = None
    if config.strategy != "one":
        # The same folder on every worker: tf_keras' BackupAndRestore has the chief write it and
        # every worker restore from it (on several machines: --cache-dir on storage they share).
        backup = Path(config.cache_dir or default_cache_root()) / "backup" / run_id(config)
    if config.strategy == "multi-worker":
        config = dataclasses.replace(config, use_cache=False)
        if not distribution.is_chief():
            config = dataclasses.replace(config, out=Path(tempfile.mkdtemp(prefix="edgetl-worker-")) / "build")
    return config, backup


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
    images = len({s.path for samples in dataset.splits.values() for s in samples}) + len(unlabeled)
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


def _run_stages(config, out: Path, stages: StageSequence, start, target, teacher_config, student_config, dataset, unlabeled, unlabeled_skipped, source=None, backup_root=None) -> dict:
    """Every stage after the data check, writing into `out` (the staging folder)."""
    # The strategy first: MultiWorkerMirroredStrategy must be made before TensorFlow starts.
    strategy = distribution.make_strategy(config.strategy)
    # Backups only when training is distributed: the one-device path stays as it always was.
    distribution.set_backup(None if distribution.is_default(strategy) else backup_root)
    # Decoded images go to a hidden folder of the staging folder (never published, removed at the end).
    images = ImageCache(dataset, unlabeled, out / ".images")
    try:
        report = _run_stages_on(config, out, stages, start, target, teacher_config, student_config, dataset, unlabeled, unlabeled_skipped, source, images, strategy)
    finally:
        images.close()
        distribution.set_backup(None)
    distribution.clear_backup_folder(backup_root)  # finished: nothing left to resume
    return report


def _plain_copies(config: CompileConfig, num_classes: int, *trained) -> None:
    """Trained models rebuilt outside the distribution strategy, same weights, for everything
    after training (export, checks, quantization): a model built under MultiWorkerMirroredStrategy
    reads its batch-norm statistics through cross-worker collectives, which then end up in the
    exported graphs (and ONNX Runtime refuses them)."""
    from edgetl.compiler.spec.precision import float32_copy

    done = set()
    for t in trained:
        if t is None or id(t) in done or t.role == "source":
            continue
        done.add(id(t))
        t.model = float32_copy(t.model, t.name, num_classes, t.input_size, config.dropout)


def _scaled_for(strategy, config: CompileConfig) -> CompileConfig:
    """The settings training uses with R replicas in sync: --batch-size per replica (global batch
    R times larger) and every learning rate times R (linear scaling). R = 1: unchanged."""
    replicas = int(strategy.num_replicas_in_sync)
    if replicas == 1:
        return config
    rates = ("finetune_learning_rate", "distill_learning_rate", "qat_learning_rate", "prune_learning_rate", "cluster_learning_rate")
    return config.for_training(batch_size=config.batch_size * replicas, **{r: getattr(config, r) * replicas for r in rates})


def _run_stages_on(config, out: Path, stages: StageSequence, start, target, teacher_config, student_config, dataset, unlabeled, unlabeled_skipped, source, images, strategy) -> dict:
    given = config  # what the recipe and the report record
    config = _scaled_for(strategy, config)
    classes = dataset.classes
    cache = StageCache((config.cache_dir or default_cache_root()) if config.use_cache else None)
    keys = stage_keys(config, dataset, unlabeled)

    from edgetl._compat import keras

    keras.utils.set_random_seed(config.seed)
    if strategy.num_replicas_in_sync > 1 or config.strategy == "multi-worker":
        d = distribution.describe(strategy)
        console.print(f"    training on {d['replicas']} replicas ({d['strategy']}, {d['workers']} worker(s)): global batch "
                      f"{config.batch_size}, learning rates x{d['replicas']}")

    if source is not None:  # --model: nothing to train; the given model is the teacher and the deployed one
        with stages.stage("source", f"{source.name}: raw RGB pixels in, its preprocessing inside the graph ({teacher_config.input_size} px)"):
            teacher = _source_stage(config, source, teacher_config, images, out)
    else:
        with stages.stage("teacher", f"fine-tuning teacher {config.teacher} ({teacher_config.input_size} px)"):
            teacher = _cached(cache, "teacher", keys["teacher"], lambda: _in_training_precision(
                config, teacher_config, len(classes), lambda: _train_teacher(config, teacher_config, images, len(classes), strategy, dataset.selection)))
            _save_keras(teacher.model, out / TEACHER_FILE)

    deployed, baseline = teacher, None
    if config.distills:
        size = config.student_size or student_config.input_size
        with stages.stage("student", f"distilling {config.teacher} into {config.student} ({size} px)"):
            head = _cached(
                cache, "student_head", keys["student_head"], lambda: _train_student_head(config, student_config, size, images, len(classes), strategy)
            )
            deployed = _cached(
                cache, "student", keys["student"], lambda: _distil(config, student_config, head, teacher, images, len(classes), strategy, dataset.selection)
            )
            _save_keras(deployed.model, out / STUDENT_FILE)
        if config.baseline:
            with stages.stage("baseline", f"baseline: {config.student} on the labels alone (no teacher)"):
                baseline = _cached(
                    cache, "baseline", keys["baseline"], lambda: _train_baseline(config, student_config, head, images, len(classes), strategy, dataset.selection)
                )

    if not distribution.is_default(strategy):
        _plain_copies(config, len(classes), teacher, deployed, baseline)

    adaptation = None
    if config.unlabeled and config.adapt != "none":
        with stages.stage("adapt", f"adapting {deployed.name} to the {len(unlabeled)} unlabelled images (--adapt {config.adapt})"):
            adaptation = _adapt_deployed(config, deployed, images, dataset, out, cache, keys)

    # The float exports depend only on the deployed model: a replay that changes only the
    # quantization takes them (already verified once) from the cache.
    export_key = keys["export"]
    exported = cache.load_files("export", export_key, list(EXPORT_FILES))
    with stages.stage("export", f"exporting {deployed.name} to TFLite and ONNX (float32)" + (" (cached)" if exported else "")):
        from edgetl.compiler.export.convert import export_onnx, export_tflite

        if exported:
            unverified = {fmt: out / f"model.unverified.{fmt}" for fmt in ("tflite", "onnx")}
            for fmt, path in unverified.items():
                shutil.copyfile(exported[f"model.fp32.{fmt}"], path)
        else:
            with activity("convert to TFLite"), _conversion_errors(deployed, "the float TFLite conversion"):
                tflite_file = export_tflite(deployed.model, out / "model.unverified.tflite")
            with activity("convert to ONNX"), _conversion_errors(deployed, "the ONNX conversion"):
                onnx_file = export_onnx(deployed.model, out / "model.unverified.onnx")
            unverified = {"tflite": tflite_file, "onnx": onnx_file}

    with stages.stage("verify", "checking the float exports against their Keras model on the test split"):
        _predict_keras(config, images, teacher, deployed, baseline)
        float_files = _verify_float(out, deployed, unverified, images, config.batch_size)
        if not exported:
            cache.store_files("export", export_key, {f"model.fp32.{fmt}": path for fmt, path in float_files.items()})

    with stages.stage("optimize", "quantization and pruning: building, measuring and choosing"):
        with _conversion_errors(deployed, "building the quantized files", "--quantize fp16 or fp32 still works, and int8 without --qat/--prune"):
            optimizer = _optimize(config, target, out, teacher, deployed, images, float_files, _target_calibration(config, adaptation, images, deployed), strategy)

    with stages.stage("package", "deployed files, metadata, app handoff"):
        deployed_files = _package(config, target, out, deployed, optimizer, classes, images)

    robustness = None
    if config.robustness:
        with stages.stage("robustness", "scoring the deployed files on camera corruptions"):
            robustness = _robustness(config, out, deployed, optimizer, deployed_files, images)

    stages.finish()
    artifacts = assemble.artifacts(out, teacher, deployed, optimizer, deployed_files, images, classes)
    deployed_artifact = next(a for a in artifacts if a["file"] == TFLITE_FILE)
    report = assemble.build_report(given, dataset, unlabeled_skipped, images, teacher, deployed, baseline, artifacts, stages.timer, start)
    report["distribution"] = distribution.describe(strategy)
    deployed_cv = report["models"][deployed.role].get("cv")
    if deployed_artifact["test"] is not None or deployed_cv is None:
        metrics = assemble.scored(deployed_artifact)
        where = "on the test split" if deployed_artifact["test"] is not None else "on the training images (no test split)"
        title = f"{TFLITE_FILE} ({deployed.name}, {deployed_artifact['precision']}) {where}: accuracy {metrics['accuracy']:.1%}"
    else:
        metrics = deployed_cv
        title = f"{deployed.name} (float), {deployed_cv['folds']}-fold cross-validation: accuracy {metrics['accuracy']:.1%}"
    plot_confusion_matrix(metrics["confusion_matrix"], classes, title, out / CONFUSION_PNG)
    report["deployed"].update(deployed_files["deployed"])
    report["target"] = target.to_json() if target else None
    report["optimization"] = {"trained": optimizer.trained, "calibration_images": optimizer.calibration_images, "calibration_size": config.calibration_size, "threads": optimizer.threads}
    report["app"] = deployed_files.get("app")
    report["adaptation"] = adaptation
    report["robustness"] = robustness
    report["deployed"]["test_predictions"] = assemble.test_predictions(dataset, optimizer, deployed_files, teacher, deployed, baseline)
    write_report(report, out)
    write_html_report(report, out)
    write_recipe(given, out)
    write_manifest(out, dataset, keys, keys["data_content"])
    return report


def plan(config: CompileConfig) -> dict:
    """The resolved recipe and the stages a compile would run (compiler/stages.py, the declaration
    the run itself is held to), with what the cache already holds.

    What would make the real run fail before any training is an error here too: an output folder
    it would refuse, a weights file that is not there, weights that cannot be had at all. Weights
    that the run downloads on first use are named as needing the network (whether there is one
    is not knowable without trying)."""
    from edgetl.compiler.progress import summary_console

    dataset = scan_dataset(
        config.data, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed,
        selection="cv" if config.model else config.selection, cv_below=config.cv_below,
    )
    unlabeled = scan_unlabeled(config.unlabeled)[0] if config.unlabeled else []
    keys = stage_keys(config, dataset, unlabeled)
    cache = StageCache((config.cache_dir or default_cache_root()) if config.use_cache else None)
    stages = [{"stage": s.name, "does": s.does, "cached": s.cached(cache, keys), "keys": {e: keys[e] for e in s.caches}}
              for s in stages_for(config)]
    cached = {entry for s in stages if s["cached"] for entry in s["keys"]}
    needs = [] if config.model else _weights_needed(config, cached)
    summary_console.print(recipe_text(config), markup=False, highlight=False)
    summary_console.print("stages:")
    for s in stages:
        summary_console.print(f"  {s['stage']:<11} {'cached, reused' if s['cached'] else 'would run':<15} {s['does']}", highlight=False)
    for need in needs:
        summary_console.print(f"needs network: {need}", highlight=False)
    return {"config": config.to_json(), "stages": stages, "dataset": dataset.to_report(), "needs_network": needs}


def _weights_needed(config: CompileConfig, cached: set[str]) -> list[str]:
    """Raise when the weights a stage to run needs cannot be had; list those that need a download."""
    from edgetl.errors import ModelNotFoundError, WeightsUnavailableError
    from edgetl.models._registry import get_registered

    needs = []
    models = [("teacher", config.teacher, config.teacher_weights, "teacher")]
    if config.distills:
        models.append(("student", config.student, config.student_weights, "student_head"))
    for role, name, weights, stage in models:
        if stage in cached or weights.lower() == "none":
            continue  # a cached stage loads no pretrained weights
        if weights != "imagenet":
            if not Path(weights).is_file():
                raise WeightsUnavailableError(f"--{role}-weights {weights}: weights file not found")
            continue
        provider = get_registered(name).weights
        if provider is None:
            raise ModelNotFoundError(f"model {name!r} has no pretrained weights; pass --{role}-weights none or a weights file")
        if provider.available_offline():
            continue
        if getattr(provider, "downloads_on_first_use", False):
            needs.append(
                f"{role} {name}: its ImageNet weights are not on this machine, so the compile downloads them "
                f"first; without network it fails (pass --{role}-weights FILE, or an offline model: `edgetl models`)"
            )
        else:
            raise WeightsUnavailableError(f"--{role}-weights imagenet for {name}: {provider.describe_missing()}")
    return needs


def _train_teacher(config: CompileConfig, model_config: ModelConfig, images: ImageCache, num_classes: int, strategy, selection: str = "holdout"):
    from edgetl.models import create_model

    size = model_config.input_size
    with strategy.scope():
        model = create_model(
            config.teacher, weights=config.weights_arg(config.teacher_weights), num_classes=num_classes, dropout=config.dropout
        )
    if selection == "cv":
        return _train_teacher_cv(config, model_config, model, images, num_classes, strategy)
    from edgetl.compiler.training.finetune import finetune

    training = finetune(model, model_config.unfreeze_from, config, images.get("train", size), images.get("val", size), strategy)
    record = training.to_json()
    record["selection"] = _holdout_selection(record["head"]["val_accuracy"], record["top"], images.samples["val"])
    _say_holdout_choice("teacher", record["selection"])
    return TrainedModel("teacher", config.teacher, model_config, model, size, record)


def _in_training_precision(config: CompileConfig, model_config: ModelConfig, num_classes: int, train) -> TrainedModel:
    """Run `train` (a teacher stage) in bf16 mixed precision when --mixed-precision decides so
    (compiler/spec/precision.py); what comes back is always a float32 model."""
    from edgetl.compiler.spec.precision import MIXED_POLICY, float32_copy, training_policy, use_bf16

    bf16, why = use_bf16(config.mixed_precision, model_config)
    if bf16:
        console.print(f"    training in bf16 mixed precision: {why}")
    with training_policy(bf16):
        trained = train()
    if bf16:
        trained.model = float32_copy(trained.model, trained.name, num_classes, trained.input_size, config.dropout)
    trained.training = {**trained.training, "precision": {"policy": MIXED_POLICY if bf16 else "float32", "why": why}}
    return trained


def _holdout_selection(probe_val: float | None, stage: dict, val_samples) -> dict:
    """What the val split chose between the probe and the trained model, in the CV record's terms."""
    from edgetl.compiler.evaluation.stats import Accuracy

    n = len(val_samples)
    kept = stage["best_epoch"] == 0
    chosen = probe_val if kept else stage["best_val_accuracy"]
    return {
        "method": f"held-out validation split ({n} images)",
        "chosen_epochs": stage["best_epoch"],
        "probe_kept": kept,
        "estimate": Accuracy(round((chosen or 0.0) * n), n).to_json(),
        "probe": Accuracy(round((probe_val or 0.0) * n), n).to_json(),
        "versus_probe": stage.get("versus_start"),
    }


def _say_holdout_choice(role: str, selection: dict) -> None:
    versus = selection.get("versus_probe")
    if versus and selection["probe_kept"]:
        console.print(f"    {role}: the linear probe is kept on val: {versus['verdict']}, not beyond noise")
    elif versus:
        console.print(f"    {role}: {selection['chosen_epochs']} epochs chosen on val; {versus['verdict']}")


def _train_teacher_cv(config: CompileConfig, model_config: ModelConfig, model, images: ImageCache, num_classes: int, strategy):
    """Teacher on small data: probe, cross-validated fine-tuning curve, refit on all images."""
    import time

    from edgetl._compat import keras
    from edgetl.compiler.training.cv_training import finetune_cv, fit_fixed
    from edgetl.compiler.training.finetune import extract_features, set_trainable_top, train_head, training_dataset
    from edgetl.compiler.training.probe import set_head

    start = time.perf_counter()
    size = model_config.input_size
    x, y = images.get("train", size)
    pretrained = model.get_weights()
    features = extract_features(model, x, config.batch_size, "teacher: features")
    head, probe = train_head(model, config, (x, y), (x[:0], y[:0]), strategy, label="teacher", features=features)
    # The backbone as pretrained plus each fold's probe is where each fold starts.
    model.set_weights(pretrained)
    choice, fold_weights, _ = finetune_cv(
        model, unfreeze_from=model_config.unfreeze_from, x=x, y=y, features=features, probe=probe,
        num_classes=num_classes, epochs=config.finetune_epochs, learning_rate=config.finetune_learning_rate,
        batch_size=config.batch_size, folds=config.folds, seed=config.seed, label="teacher: cross-validation", strategy=strategy,
    )
    set_head(model, probe)
    _say_choice("teacher", choice)
    if choice.epochs:
        set_trainable_top(model, model_config.unfreeze_from)
        with strategy.scope():
            model.compile(keras.optimizers.Adam(config.finetune_learning_rate), keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
        fit_fixed(model, training_dataset(x, y, config.batch_size, config.seed), choice.epochs, f"teacher: refit on all {len(y)} images")
    record = {
        "head": dataclasses.asdict(head),
        "selection": choice.to_json(),
        "seconds": time.perf_counter() - start,
    }
    trained = TrainedModel("teacher", config.teacher, model_config, model, size, record)
    trained.extras = {"fold_weights": fold_weights}
    return trained


def _say_choice(role: str, choice) -> None:
    curve = " ".join(f"{a:.1%}" for a in choice.accuracy_by_epoch)
    console.print(f"    {role}: out-of-fold accuracy by epoch (0 = probe): {curve}")
    if choice.probe_kept:
        if choice.versus_probe["best_epochs"] == 0:
            console.print(f"    {role}: the linear probe is kept ({choice.estimate.describe()}): no number of epochs beat it out of fold")
        else:
            console.print(f"    {role}: the linear probe is kept ({choice.estimate.describe()}): {choice.versus_probe['verdict']}, not beyond noise")
    else:
        console.print(f"    {role}: {choice.epochs} epochs chosen, {choice.estimate.describe()}; {choice.versus_probe['verdict']}")


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
        x, y = x.concat(xu), np.concatenate([y, yu])
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
    """The student headed by its linear probe (cached features): where distillation and the
    baseline both start from."""
    from edgetl.compiler.training.finetune import train_head

    student = _new_student(config, size, num_classes, strategy)
    x, y = images.get("train", size)
    val = images.get("val", size) if images.held_out["val"] else (x[:0], y[:0])  # no val split under cross-validation
    head, _ = train_head(student, config, (x, y), val, strategy, label="student")
    return TrainedModel("student", config.student, model_config, student, size, {"head": dataclasses.asdict(head)})


def _from_head(head: TrainedModel, config, num_classes, strategy):
    """A fresh student with the head stage's weights (the cached head model stays untouched)."""
    from edgetl.models import create_model

    with strategy.scope():
        model = create_model(config.student, weights=None, num_classes=num_classes, dropout=config.dropout, input_size=head.input_size)
    model.set_weights(head.model.get_weights())
    return model


def _distil(config, model_config, head: TrainedModel, teacher: TrainedModel, images: ImageCache, num_classes, strategy, selection="holdout"):
    return _train_from_head(config, model_config, head, teacher, images, num_classes, strategy, selection)


def _train_baseline(config, model_config, head: TrainedModel, images: ImageCache, num_classes, strategy, selection="holdout"):
    return _train_from_head(config, model_config, head, None, images, num_classes, strategy, selection)


def _train_from_head(config, model_config, head: TrainedModel, teacher: TrainedModel | None, images: ImageCache, num_classes, strategy, selection):
    """Distillation (teacher given) or the labels-only baseline (teacher None), from the probe head."""
    from edgetl.compiler.training.distill import train_student

    role, key = ("student", "distillation") if teacher is not None else ("baseline", "labels_only")
    description = "student: distillation" if teacher is not None else "baseline: labels only"
    student = _from_head(head, config, num_classes, strategy)
    if selection == "cv":
        record = _train_from_head_cv(config, model_config, head, student, teacher, images, num_classes, strategy, description)
        training = {**head.training, key: record}
        return TrainedModel(role, config.student, model_config, student, head.input_size, training)
    result = train_student(
        student,
        teacher.model if teacher is not None else None,
        train_views=_student_views(config, teacher, head.input_size, images),
        val=images.get("val", head.input_size),
        alpha=config.alpha if teacher is not None else 0.0,
        label=description,
        strategy=strategy,
        **_student_kwargs(config, model_config),
    )
    record = result.to_json()
    record["selection"] = _holdout_selection(head.training["head"]["val_accuracy"], record["stage"], images.samples["val"])
    _say_holdout_choice(role, record["selection"])
    training = {**head.training, key: record}
    return TrainedModel(role, config.student, model_config, student, head.input_size, training)


def _train_from_head_cv(config, model_config, head: TrainedModel, student, teacher: TrainedModel | None, images: ImageCache, num_classes, strategy, description):
    """Cross-validated distillation curve from the probe head, then the refit on all images."""
    import time

    from edgetl._compat import keras
    from edgetl.compiler.training.cv_training import distill_cv, fit_fixed
    from edgetl.compiler.training.distill import Distiller, distillation_dataset, logits_model
    from edgetl.compiler.training.finetune import extract_features, set_trainable_top
    from edgetl.compiler.training.crossval import stratified_folds
    from edgetl.compiler.training.probe import fit_probe_at
    from edgetl.models import get_config as model_config_of

    start = time.perf_counter()
    size = head.input_size
    x, y = images.get("train", size)
    features = extract_features(student, x, config.batch_size, f"{description}: features")
    probe = fit_probe_at(features, y, num_classes, head.training["head"]["C"])  # C as the head stage chose it
    view_size = max(size, teacher.input_size) if teacher is not None else size
    x_views, _ = images.get("train", view_size)
    unlabeled = images.get("unlabeled", view_size)[0] if (teacher is not None and images.samples["unlabeled"]) else None
    fold_weights = (teacher.extras or {}).get("fold_weights") if teacher is not None else None
    if teacher is not None and fold_weights is None:
        raise RuntimeError("the teacher's fold models are missing: its stage must run (or be cached) in cross-validation mode")
    splits = stratified_folds(y, config.folds, config.seed)
    alpha = config.alpha if teacher is not None else 0.0
    choice = distill_cv(
        student, teacher.model if teacher is not None else None,
        unfreeze_from=model_config.unfreeze_from,
        teacher_unfreeze_from=model_config_of(teacher.name).unfreeze_from if teacher is not None else None,
        teacher_fold_weights=fold_weights, splits=splits, x_student=x, x_views=x_views, y=y, unlabeled_views=unlabeled,
        features=features, probe=probe, num_classes=num_classes, epochs=config.distill_epochs,
        learning_rate=config.distill_learning_rate, batch_size=config.batch_size, temperature=config.temperature,
        alpha=alpha, seed=config.seed, label=f"{description}: cross-validation", strategy=strategy,
    )
    _say_choice(description.split(":")[0], choice)
    if choice.epochs:
        keras.utils.set_random_seed(config.seed)
        distiller = Distiller(logits_model(student), logits_model(teacher.model) if teacher is not None else None, config.temperature, alpha)
        set_trainable_top(student, model_config.unfreeze_from)
        with strategy.scope():
            distiller.compile(optimizer=keras.optimizers.Adam(config.distill_learning_rate))
        xv, yv = _student_views(config, teacher, size, images)
        fit_fixed(distiller, distillation_dataset(xv, yv, config.batch_size, config.seed), choice.epochs,
                  f"{description}: refit on all {len(y)} images")
    return {"selection": choice.to_json(), "temperature": config.temperature, "alpha": alpha,
            "labelled_images": int(len(y)), "unlabelled_images": 0 if unlabeled is None else int(len(unlabeled)),
            "seconds": time.perf_counter() - start}


def _check_weights_files(config: CompileConfig, trust_model: bool) -> None:
    """Refuse a weights file that is a full Keras model holding code, unless trusted.

    Loading weights reads tensors only, but a file that carries code is not what a weights
    option should be given, and predict/bench refuse the same file: one rule everywhere."""
    from edgetl.runtime.model_safety import refuse_code_in_model_file

    for weights in (config.teacher_weights, config.student_weights if config.distills else None):
        if weights and weights.lower() not in ("imagenet", "none") and Path(weights).exists():
            refuse_code_in_model_file(Path(weights), trust_model)
    if config.model is not None and Path(config.model).exists():  # --model: the same rule, before any work
        refuse_code_in_model_file(Path(config.model), trust_model)


def _cached(cache: StageCache, stage: str, key: str, train) -> TrainedModel:
    """Train, or reuse the stage's cached result when its inputs are unchanged."""
    hit = cache.load(stage, key)
    if hit is not None:
        model, record, arrays = hit
        console.print(f"    reusing cached {stage} ({key}) from {cache.root}")
        return TrainedModel(
            record["role"], record["name"], get_config(record["name"]), model, record["input_size"], record["training"],
            cached=True, extras=_extras_from_arrays(arrays),
        )
    trained = train()
    record = {"role": trained.role, "name": trained.name, "input_size": trained.input_size, "training": trained.training}
    cache.store(stage, key, trained.model, record, _extras_to_arrays(trained.extras))
    return trained


def _extras_to_arrays(extras: dict | None) -> dict:
    """Fold models as flat named arrays (w<fold>_<index>), for the stage cache."""
    if not extras or not extras.get("fold_weights"):
        return {}
    return {f"w{f}_{i}": w for f, weights in enumerate(extras["fold_weights"]) for i, w in enumerate(weights)}


def _extras_from_arrays(arrays: dict) -> dict | None:
    if not arrays:
        return None
    folds: dict[int, dict[int, np.ndarray]] = {}
    for name, value in arrays.items():
        fold, index = name[1:].split("_")
        folds.setdefault(int(fold), {})[int(index)] = value
    return {"fold_weights": [[ws[i] for i in sorted(ws)] for _, ws in sorted(folds.items())]}


def _predict_keras(config, images: ImageCache, *trained_models) -> None:
    """Each Keras model's probabilities on the test split, at its own input size."""
    from edgetl.runtime.keras_model import KerasSession

    for trained in filter(None, trained_models):
        if trained.test_probs is None:
            x_test, _ = images.get("test", trained.input_size)
            trained.test_probs = KerasSession(model=trained.model).predict(x_test, config.batch_size)


def _verify_float(out: Path, deployed: TrainedModel, unverified: dict, images: ImageCache, batch_size: int) -> dict:
    """Run each float export in its runtime against the Keras model; a miss fails the compile."""
    from edgetl.compiler.compression.optimize import VARIANTS_DIR
    from edgetl.compiler.export.verify import compare
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


def _optimize(config: CompileConfig, target, out: Path, teacher: TrainedModel, deployed: TrainedModel, images: ImageCache, float_files: dict, calibration=None, strategy=None):
    from edgetl.compiler.compression.optimize import Optimizer
    from edgetl.runtime.measure import default_threads

    distilled = deployed is not teacher
    threads = config.threads or default_threads(target.threads if target else 4)
    optimizer = Optimizer(
        float_model=deployed.model,
        teacher_model=teacher.model if distilled else None,
        train_views=_student_views(config, teacher if distilled else None, deployed.input_size, images),
        config=config,
        images=images,
        size=deployed.input_size,
        out=out,
        threads=threads,
        calibration=calibration,
        strategy=strategy,  # QAT, pruning and clustering train under it, like the training stages
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
            why_not = _why_no_fine_tuning(deployed)
            if why_not:
                console.print(f"    post-training int8 {int8.gate}; quantization-aware training cannot run: {why_not}")
            else:
                console.print(f"    post-training int8 {int8.gate}: trying quantization-aware training")
                optimizer.ensure("int8-qat")
    elif mode != "fp32":
        optimizer.settle(mode)
        if config.qat and mode == "int8":
            optimizer.ensure("int8-qat")
    if config.prune > 0:
        compressed = optimizer.pruned_model()
        if config.cluster:
            compressed = optimizer.clustered_model(compressed)
        optimizer.add_ptq(compressed, precisions=("fp32",))
        if mode in ("auto", "int8"):
            optimizer.ensure("int8-qat", compressed)  # PQAT, or PCQAT when clustered
            optimizer.add_onnx_compressed(compressed)
        elif mode in ("fp16", "dynamic"):
            optimizer.add_ptq(compressed, precisions=(mode,))
    if mode in ("auto", "int8"):
        optimizer.add_onnx_int8(float_files["onnx"])
    if mode == "fp16" or (target and target.onnx_precision == "fp16"):
        optimizer.add_onnx_fp16(float_files["onnx"])
    optimizer.apply_gate()
    optimizer.time_all()
    return optimizer


def _adapt_deployed(config: CompileConfig, deployed: TrainedModel, images: ImageCache, dataset: Dataset, out: Path, cache, keys) -> dict:
    """Replace the deployed model by its adaptation to the unlabelled images (compiler/training/adapt.py),
    in place, so everything downstream (export, int8, checks) works on the adapted model; its
    Keras file is saved again, as the reference the exports are checked against."""
    from edgetl.compiler.training.adapt import choose_and_adapt

    size = deployed.input_size
    target_val = _load_target_val(config, dataset, size) if config.target_val else None
    key = keys["adapt"]
    record_key = "adaptation"
    hit = cache.load("adapt", key)
    if hit is not None:
        model, record = hit
        console.print(f"    reusing cached adaptation ({key}) from {cache.root}")
        report = record["training"][record_key]
    else:
        model, report = choose_and_adapt(
            deployed.model,
            config.adapt,
            images.get("unlabeled", size)[0],
            source=_adaptation_source(config, images, size),
            labelled=images.get("train", size),
            clean_val=images.get("val", size),
            target_val=target_val,
            max_drop=config.max_accuracy_drop,
            batch_size=config.batch_size,
            seed=config.seed,
            epochs=config.adapt_epochs,
        )
        cache.store("adapt", key, model, {"role": deployed.role, "name": deployed.name, "input_size": size, "training": {record_key: report}})
    console.print(f"    adaptation: {report['method']} ({report['why']})")
    camera = next((r.get("camera") for r in report["tried"] if r["method"] == report["method"]), None)
    if camera is not None:
        from edgetl.compiler.data.corruptions import describe_steps

        fitted = describe_steps(camera["steps"])
        console.print(f"    fitted camera: {fitted}; {camera.get('blend_share', 1.0):.0%} of the trained weights kept" if fitted
                      else "    the device images fit no camera: nothing trained")
    report = {**report, "key": key}
    deployed.model = model
    deployed.training = {**deployed.training, record_key: report}
    _save_keras(model, out / (STUDENT_FILE if config.distills else TEACHER_FILE))
    return report


def _adaptation_source(config: CompileConfig, images: ImageCache, size: int):
    """Clean training images, class-balanced: what the model's batch-norm statistics are
    matched from when it is adapted."""
    from edgetl.compiler.compression.quantize import calibration_sample

    x, y = images.get("train", size)
    return calibration_sample(x, y, 192, config.seed)


def _load_target_val(config: CompileConfig, dataset: Dataset, size: int):
    """--target-val DIR/<class>/*: labelled target images, classes matched to the training's by name."""
    from edgetl.errors import DataError

    target = scan_dataset(config.target_val, val_fraction=0.0, test_fraction=0.0, seed=config.seed)
    samples = [s for split in target.splits.values() for s in split]
    unknown = sorted(set(target.classes) - set(dataset.classes))
    if unknown:
        raise DataError(f"--target-val {config.target_val}: class folder(s) {', '.join(unknown[:5])} are not classes of the training data")
    index = {name: i for i, name in enumerate(dataset.classes)}
    x, y = load_images(samples, size)
    return x, np.array([index[target.classes[label]] for label in y], dtype=np.int64)


def _target_calibration(config: CompileConfig, adaptation: dict | None, images: ImageCache, deployed: TrainedModel):
    """int8 ranges from the target images when the model was adapted to them (else None: the
    optimizer's class-balanced training sample)."""
    if adaptation is None or adaptation["method"] == "none":
        return None
    from edgetl.compiler.training.adapt import calibration_images

    return calibration_images(images.get("unlabeled", deployed.input_size)[0], config.calibration_size, config.seed)


def _robustness(config: CompileConfig, out: Path, deployed: TrainedModel, optimizer, deployed_files: dict, images: ImageCache) -> dict:
    """The float export, the deployed TFLite (and a pruned one) on the corruption suite
    (compiler/evaluation/robustness.py), on the test split, or the training images when there is none."""
    from edgetl.compiler.evaluation.robustness import score_robustness, session_predictor
    from edgetl.runtime import open_session

    split = "test" if images.samples.get("test") else "train"
    images_from = "the test split" if split == "test" else "the labelled training images (there is no test split)"
    x, y = images.get(split, deployed.input_size)
    by_file = {c.file: c for c in optimizer.candidates}
    chosen = by_file[deployed_files["deployed"]["tflite_variant"]]
    files = {"fp32 (float export)": out / VARIANTS_FP32_TFLITE}
    pruned = [c for c in optimizer.candidates if c.format == "tflite" and c.pruned and c is not chosen and c.precision == chosen.precision]
    if pruned:
        files[f"{pruned[0].name} (not deployed)"] = pruned[0].path
    if chosen.name != "fp32":
        files[f"{chosen.name} ({TFLITE_FILE})"] = out / TFLITE_FILE
    predictors = {name: session_predictor(open_session(path, threads=optimizer.threads), config.batch_size) for name, path in files.items()}
    section = score_robustness(predictors, x, y, images_from=images_from, seed=config.seed)
    section["files"] = {name: Path(path).relative_to(out).as_posix() for name, path in files.items()}
    if section["available"] > section["images"]:
        section["note"] = (f"A class-balanced, seeded subsample of {section['images']} of the {section['available']} images, "
                           "to keep the suite to a small share of the compile.")
    w = section["weakest"]
    console.print(f"    weakest corruption for {w['model']}: {w['corruption']} ({w['accuracy']:.1%}, {w['drop_from_clean'] * 100:.1f} points below clean; {section['seconds']:.0f} s)")
    return section


def _package(config, target, out: Path, deployed: TrainedModel, optimizer, classes, images: ImageCache) -> dict:
    """Copy the chosen files to model.tflite / model.onnx with metadata; check the target; app handoff."""
    from edgetl.atomic import atomic_write_bytes
    from edgetl.compiler.spec.constraints import check_target
    from edgetl.compiler.export.handoff import write_handoff
    from edgetl.compiler.export.metadata import add_onnx_metadata, add_tflite_metadata, onnx_classifier_props

    pinned = None if config.quantize == "auto" else config.quantize
    tflite, why_tflite = optimizer.choose("tflite", pinned, prefer_pruned=config.prune > 0)
    onnx_pinned = target.onnx_precision if target and target.onnx_precision else (
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
    onnx_props = onnx_classifier_props(labels=list(classes), input_size=deployed.input_size, model_info=info.to_json(), **common)
    shutil.copyfile(onnx_choice.path, out / ".model.onnx.tmp")
    add_onnx_metadata(out / ".model.onnx.tmp", onnx_props)
    os.replace(out / ".model.onnx.tmp", out / ONNX_FILE)
    # Every candidate in variants/ carries the same labels and input contract, so `edgetl predict`
    # and `edgetl bench` name the classes of any of them, not class_0, class_1, ...
    for candidate in optimizer.candidates:
        if candidate.format == "tflite":
            data = add_tflite_metadata(candidate.path.read_bytes(), labels=list(classes), model_info=info.to_json(), **common)
            atomic_write_bytes(candidate.path, data)
        else:
            add_onnx_metadata(candidate.path, onnx_props)

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
        if target.fastest_format:
            chosen_file = primary[fastest.format]
            reason = f"{chosen_file} measured faster here ({fastest.latency_p50_ms:.2f} ms p50)"
        else:
            chosen_file = primary[target.formats[0]]
            reason = f"the file its runtime takes: {target.runtime}"
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


def _save_keras(model, path: Path) -> None:
    from edgetl._compat import keras
    from edgetl.atomic import atomic_path

    with atomic_path(path) as tmp:
        # Saved through an uncompiled twin (same layers) so no optimizer state is written:
        # the file is a reference model, not a training checkpoint.
        keras.Model(model.inputs, model.outputs, name=model.name).save(tmp)


# --------------------------------------------------------------------------------------------
# --model: a classifier trained elsewhere (compiler/training/source_model.py)
# --------------------------------------------------------------------------------------------


def _source_dataset(dataset: Dataset, source, config: CompileConfig) -> Dataset:
    """DATA's classes matched to the model's outputs, and which images do what (nothing trains)."""
    from edgetl.compiler.training.source_model import evaluation_dataset, match_classes

    dataset = evaluation_dataset(match_classes(dataset, source, config.labels))
    train, test = dataset.splits["train"], dataset.splits["test"]
    if test is train:
        console.print(f"    {len(train)} images: all of them calibrate int8, feed the accuracy gate and score the files (nothing is trained)")
    else:
        console.print(f"    {len(train)} images calibrate int8 and feed the accuracy gate; the {len(test)} of test/ score the files")
    return dataset


def _source_stage(config: CompileConfig, source, model_config: ModelConfig, images: ImageCache, out: Path) -> TrainedModel:
    """Wrap the user's model as an edgetl graph and check it against the user's model fed the
    user's preprocessing in NumPy: that reference is what every export is then verified against."""
    from edgetl.compiler.compression.quantize import calibration_sample
    from edgetl.compiler.training.source_model import WRAP_ATOL, reference_probs, wrap_source
    from edgetl.compiler.export.verify import compare
    from edgetl.runtime.keras_model import KerasSession

    size = model_config.input_size
    x_train, y_train = images.get("train", size)
    wrapped = wrap_source(source, calibration_sample(x_train, y_train, 64, config.seed), config.model_output)
    why_not = wrapped.fine_tunable
    if why_not and (config.qat or config.prune):
        asked = "--qat" if config.qat else "--prune"
        raise SettingError(f"{asked} cannot run on {source.path}: {why_not}; post-training int8, fp16 and fp32 still work: drop {asked}")
    x_test, _ = images.get("test", size)
    reference = reference_probs(source, x_test, softmax=wrapped.output == "logits", batch_size=config.batch_size)
    mine = KerasSession(model=wrapped.model).predict(x_test, config.batch_size)
    check = compare(SOURCE_FILE, "keras", mine, reference, WRAP_ATOL)
    if not check.passed:
        raise ExportMismatchError(f"{check.describe_failure()}: the wrapped model does not compute what {source.path} computes with "
                                  "the preprocessing given; please report this with the model")
    if source.edgetl_model:
        how = "an edgetl model: used as it is"
    elif wrapped.output == "logits":
        how = f"it outputs logits ({'--model-output logits' if config.model_output == 'logits' else 'rows that are not probabilities on DATA'}): a Softmax was appended"
    else:
        how = "it outputs probabilities" + (f"; its softmax was split from layer {wrapped.logits_from!r} (now 'logits')" if wrapped.logits_from else "")
    record = {"source": {
        "file": str(source.path),
        "edgetl_model": source.edgetl_model,
        "preprocessing": source.contract.describe(),
        "output": wrapped.output,
        "softmax_appended": wrapped.output == "logits",
        "how": how,
        "logits_layer": wrapped.logits_from,
        "flattened": wrapped.flat,
        "qat_unavailable": why_not,
        "reference_check": {**check.to_json(), "against": "the given model fed its preprocessing in NumPy, on the images that score the files"},
    }}
    console.print(f"    {source.name}: {how}; preprocessing {source.contract.describe()}")
    console.print(f"    wrapped model vs the given one: top-1 agreement {check.top1_agreement:.2%}, max |dp| {check.max_abs_diff:.2g} on {check.images} images")
    config_with_params = dataclasses.replace(model_config, params=int(wrapped.model.count_params()))
    trained = TrainedModel("source", source.name, config_with_params, wrapped.model, size, record, test_probs=reference)
    _save_keras(wrapped.model, out / SOURCE_FILE)
    return trained


def _why_no_fine_tuning(deployed: TrainedModel) -> str | None:
    """Why QAT cannot run on the deployed model (a --model edgetl cannot flatten), or None."""
    return (deployed.training.get("source") or {}).get("qat_unavailable")


@contextlib.contextmanager
def _conversion_errors(deployed: TrainedModel, what: str, still_works: str = "nothing can be exported until it converts"):
    """A converter's failure on a model the user brought, as one line naming the op or layer.

    edgetl's own models convert by construction; a user's may hold ops TFLite or tf2onnx lack."""
    if deployed.role != "source":
        yield
        return
    try:
        yield
    except (ExportMismatchError, SettingError, ResourceError):
        raise
    except Exception as exc:  # noqa: BLE001 - converter errors come in many types, all mean "cannot convert"
        import re

        text = " ".join(str(exc).split())
        named = re.findall(r"'(tf\.[A-Za-z0-9_]+|tfl\.[A-Za-z0-9_]+)' op|layer[ \"']+([A-Za-z0-9_./-]+)", text)
        where = next((a or b for a, b in named), None)
        detail = f"at {where}" if where else f"({type(exc).__name__}: {text[:200]})"
        raise ModelFileError(f"{deployed.name}: {what} failed {detail}; {still_works}") from None
