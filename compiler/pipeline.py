"""`compile_model`: from a folder of labelled images to checked TFLite and ONNX files.

The CLI builds a CompileConfig and calls this; so can any Python program. This module is the
spine: it checks the inputs, opens the staging folder, and calls the stages in the order
compiler/stages/__init__.py declares them (data, teacher, student, baseline, adapt, export,
verify, optimize, package, robustness), each run by its own module there; then it assembles
the report (compiler/report/).

Everything is written into a hidden staging folder inside `config.out` (compiler/outputs.py)
and moved into place only when every check has passed; a file that fails its check keeps an
`.unverified` (or `.unchecked`) name. One compile at a time holds `config.out`'s lock.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import shutil
import time
import warnings
from pathlib import Path

from PIL import Image

from edgetl.compiler.training import distribution
from edgetl.compiler.cache import StageCache, default_cache_root, stage_key
from edgetl.compiler.spec.config import CompileConfig
from edgetl.compiler.outputs import RUN_MARKER  # noqa: F401 (importable from here, as before)
from edgetl.compiler.outputs import BuildOutput, check_data_holds_no_build, check_location, environment_errors
from edgetl.compiler.outputs import STUDENT_FILE, TEACHER_FILE, TFLITE_FILE
from edgetl.compiler.spec.recipe import recipe_text, write_manifest, write_recipe
from edgetl.compiler.spec.targets import get_target
from edgetl.compiler.data.datasets import Dataset, check_data_folder, scan_dataset, scan_unlabeled, unlabeled_overlap_warnings
from edgetl.compiler.progress import StageTimer, activity, console, silenced
from edgetl.compiler.stages import EXPORT_FILES, StageSequence, stage_keys, stages_for
from edgetl.compiler.stages.adapt import adapt_deployed, target_calibration
from edgetl.compiler.stages.export import conversion_errors, export_float, predict_keras, verify_float
from edgetl.compiler.stages.optimize import optimize
from edgetl.compiler.stages.package import package
from edgetl.compiler.stages.robustness import robustness
from edgetl.compiler.stages.source import source_dataset, source_stage
from edgetl.compiler.stages.resolution import candidate_sizes, choose_student_size, narrower_students
from edgetl.compiler.stages.slim import try_slim_student
from edgetl.compiler.stages.student import distil, train_baseline, train_student_head
from edgetl.compiler.stages.teacher import in_training_precision, train_teacher
from edgetl.compiler.stages.trained import cached, refit_kept_probe, save_keras
from edgetl.compiler.training.crossval import fold_count
from edgetl.compiler.data.image_store import ImageCache
from edgetl.compiler.report import assemble
from edgetl.compiler.report.html import write_html_report
from edgetl.compiler.report.summary import CONFUSION_PNG, plot_confusion_matrix, print_summary, write_report
from edgetl.errors import ResourceError
from edgetl.models import get_config


# From this many images cross-validation's fold trainings cost many times one held-out training
# (672 photos: 2,519 s alone against 340 s, README "Real use", the 672-photo table), so the plan says so.
SLOW_CV_IMAGES = 300

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


def compile_model(config: CompileConfig, dry_run: bool = False, trust_model: bool = False, quiet: bool = False) -> dict:
    """Run the whole pipeline; return the report (also written to `config.out/report.json`).

    dry_run: only resolve the recipe and say which stages would run (and which are cached).
    trust_model: accept weights files that are full Keras models holding code (Lambda layers,
    bytecode); without it they are refused before any work (runtime/model_safety.py).
    quiet: print nothing (no progress, no summary); errors are still raised.
    """
    with silenced(quiet):
        return _compile(config, dry_run, trust_model)


def _compile(config: CompileConfig, dry_run: bool, trust_model: bool) -> dict:
    start = time.perf_counter()
    timer = StageTimer()
    # `config` was checked when it was built (CompileConfig validates itself, whatever its source).
    config, backup_root = _for_this_worker(config)
    _check_weights_files(config, trust_model)
    if not config.distills and config.student_size is not None and config.model is None:
        # Not refused: a recipe replayed with --student none carries its student's size.
        console.print(f"[yellow]note:[/] --student-size {config.student_size} is not used: with --student none the teacher "
                      "is deployed at its own input size")
    config = config.resolved()
    if config.distils_into_itself():
        # Not changed behind the user's back (self-distillation can help, and the selection keeps
        # it only beyond noise), but its cost is said before it is spent.
        console.print(f"[yellow]note:[/] the student is the teacher's own network ({config.student} at {config.student_size} px, "
                      "both from ImageNet weights): distilling trains the same model a second time, kept only when it "
                      "beats the student's linear probe beyond noise. --student none deploys the teacher and skips that "
                      "stage; a smaller student (e.g. --student-size 160) makes distillation buy speed")
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

    stages = StageSequence(config, timer)  # held to the declaration --dry-run lists (compiler/stages/__init__.py)
    data_stage = stages.stage("data", f"checking images in {config.data}")
    with data_stage, _large_images_noted(), activity("decode-check images", unit="files") as advance:
        dataset = scan_dataset(
            config.data, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed,
            selection="cv" if source else config.selection, cv_below=config.cv_below, progress=advance,
        )
        if source is not None:
            dataset = source_dataset(dataset, source, config)
        elif dataset.selection == "cv":
            folds = fold_count([s.label for s in dataset.splits["train"]], config.folds)  # a small class lowers it
            console.print(
                f"    {len(dataset.splits['train'])} labelled training images: choices by {folds}-fold cross-validation, "
                "then one refit on all of them" + ("" if dataset.splits["test"] else " (no test split is carved)")
                + ("; recipes searched too (--no-search: the flags' own only)" if config.search else "")
                # The cost a user should see before it is spent: every recipe trains once per fold.
                + ("; each recipe trains once per fold, so this is the slow way on a few hundred images"
                   " (--selection holdout: one training, a val split chooses)"
                   if config.selection == "auto" and len(dataset.splits["train"]) >= SLOW_CV_IMAGES else "")
            )
        from edgetl.compiler.stages.student import selection_note

        note = selection_note(student_config, dataset.selection, len(dataset.splits.get("val", [])))  # None: no student
        if note:
            console.print(f"[yellow]note:[/] {note}")
        unlabeled, unlabeled_skipped = scan_unlabeled(config.unlabeled) if config.unlabeled else ([], [])
        dataset.warnings.extend(unlabeled_overlap_warnings(unlabeled, dataset))
        for warning in dataset.warnings:
            console.print(f"[yellow]warning:[/] {warning}")
        if dataset.skipped or unlabeled_skipped:
            n = len(dataset.skipped) + len(unlabeled_skipped)
            console.print(f"[yellow]skipping {n} unreadable file{'s' if n != 1 else ''} (listed in the report)")
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
            # A non-chief worker's files are never read: they go when its process ends.
            scratch = tempfile.mkdtemp(prefix="edgetl-worker-")
            atexit.register(shutil.rmtree, scratch, ignore_errors=True)
            config = dataclasses.replace(config, out=Path(scratch) / "build")
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
    check_data_folder(config.data)  # before the data stage prints its first line
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
    if config.chooses_student_size:
        sizes.update(candidate_sizes(student_config.input_size))
    elif config.distills:
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
            teacher = source_stage(config, source, teacher_config, images, out)
    else:
        with stages.stage("teacher", f"fine-tuning teacher {config.teacher} ({teacher_config.input_size} px)"):
            teacher = cached(cache, "teacher", keys["teacher"], lambda: in_training_precision(
                config, teacher_config, len(classes), lambda: train_teacher(config, teacher_config, images, len(classes), strategy, dataset.selection)))
            if not config.distills:  # deployed itself; a teacher distilled from keeps the fit its student was chosen with
                teacher = refit_kept_probe(teacher, images, config)
            save_keras(teacher.model, out / TEACHER_FILE)

    deployed, baseline = teacher, None
    if config.distills:
        if config.chooses_student_size:
            size_text = "input size chosen among " + ", ".join(f"{s}" for s in candidate_sizes(student_config.input_size)) + " px"
            train_head = lambda: choose_student_size(config, student_config, images, len(classes), strategy)  # noqa: E731
        else:
            size = config.student_size or student_config.input_size
            size_text = f"{size} px"
            train_head = lambda: train_student_head(config, student_config, size, images, len(classes), strategy)  # noqa: E731
        with stages.stage("student", f"distilling {config.teacher} into {config.student} ({size_text})"):
            head = cached(cache, "student_head", keys["student_head"], train_head)
            if config.chooses_student_size:
                keys = keys_at_kept_size(config, keys, head.input_size, dataset, unlabeled)
            deployed = cached(
                cache, "student", keys["student"], lambda: distil(config, student_config, head, teacher, images, len(classes), strategy, dataset.selection)
            )
            # The size search's record is this run's (a cached student may come from a compile with
            # other budgets, or from one of a fixed size, which has none).
            deployed.training = {k: v for k, v in deployed.training.items() if k != "resolution"}
            if "resolution" in head.training:
                deployed.training["resolution"] = head.training["resolution"]
            student_run = config  # the settings the deployed student was trained with
            if config.chooses_student_size:  # no size met --max-latency-ms: the channel-pruned student that does, gated
                slim = try_slim_student(config, head, deployed, teacher, images, len(classes), strategy, dataset.selection, cache,
                                        lambda c: stage_keys(c, dataset, unlabeled))
                if slim is not None and slim.deployed:
                    student_run, student_config, head, deployed = slim.config, slim.model_config, slim.head, slim.student
                    keys = stage_keys(student_run, dataset, unlabeled)  # the baseline and the exports follow the slim student
            deployed = refit_kept_probe(deployed, images, config)
            save_keras(deployed.model, out / STUDENT_FILE)
        if config.baseline:
            with stages.stage("baseline", f"baseline: {deployed.name} on the labels alone (no teacher)"):
                baseline = cached(
                    cache, "baseline", keys["baseline"], lambda: train_baseline(student_run, student_config, head, images, len(classes), strategy, dataset.selection)
                )
                if deployed.head_refit:  # on the same footing as the student it is compared with
                    baseline = refit_kept_probe(baseline, images, config, like=deployed)

    if not distribution.is_default(strategy):
        _plain_copies(config, len(classes), teacher, deployed, baseline)

    adaptation = None
    if config.adapts:
        with stages.stage("adapt", f"adapting {deployed.name} to the {len(unlabeled)} unlabelled images (--adapt {config.adapt})"):
            adaptation = adapt_deployed(config, deployed, images, dataset, out, cache, keys)

    # The float exports depend only on the deployed model: a replay that changes only the
    # quantization takes them (already verified once) from the cache.
    export_key = keys["export"]
    exported = cache.load_files("export", export_key, list(EXPORT_FILES))
    with stages.stage("export", f"exporting {deployed.name} to TFLite and ONNX (float32)" + (" (cached)" if exported else "")):
        unverified = export_float(deployed, out, exported)

    own_test = images.held_out["test"] and dataset.splits["test"] is not dataset.splits["train"]  # --model without test/: the same images
    checked_on = "the test split" if own_test else "the training images (no test split)"
    with stages.stage("verify", f"checking the float exports against their Keras model on {checked_on}"):
        predict_keras(config, images, teacher, deployed, baseline)
        float_files = verify_float(out, deployed, unverified, images, config.batch_size)
        if not exported:
            cache.store_files("export", export_key, {f"model.fp32.{fmt}": path for fmt, path in float_files.items()})

    with stages.stage("optimize", "quantization and pruning: building, measuring and choosing"):
        with conversion_errors(deployed, "building the quantized files", "--quantize fp16 or fp32 still works, and int8 without --qat/--prune"):
            optimizer = optimize(config, target, out, teacher, deployed, images, float_files, target_calibration(config, adaptation, images, deployed), strategy)

    with stages.stage("package", "deployed files, metadata, app handoff"):
        deployed_files = package(config, target, out, deployed, optimizer, classes, images)

    robustness_report = None
    if config.robustness:
        with stages.stage("robustness", "scoring the deployed files on camera corruptions"):
            robustness_report = robustness(config, out, deployed, optimizer, deployed_files, images)

    stages.finish()
    artifacts = assemble.artifacts(out, teacher, deployed, optimizer, deployed_files, images, classes)
    deployed_artifact = next(a for a in artifacts if a["file"] == TFLITE_FILE)
    report = assemble.build_report(given, dataset, unlabeled_skipped, images, teacher, deployed, baseline, artifacts, stages.timer, start)
    report["distribution"] = distribution.describe(strategy)
    deployed_cv = report["models"][deployed.role].get("cv")
    if deployed_artifact["test"] is not None or deployed_cv is None:
        metrics = assemble.scored(deployed_artifact)
        where = "on the test split" if deployed_artifact["test"] is not None else "on the training images (no test split)"
        title = f"{TFLITE_FILE} ({deployed.name}, {deployed_artifact['precision']}) {where}: accuracy {_with_interval(metrics)}"
    else:
        metrics = deployed_cv
        title = f"{deployed.name} (float), {deployed_cv['folds']}-fold cross-validation: accuracy {_with_interval(metrics)}"
    plot_confusion_matrix(metrics["confusion_matrix"], classes, title, out / CONFUSION_PNG)
    report["deployed"].update(deployed_files["deployed"])
    report["target"] = target.to_json() if target else None
    report["optimization"] = {"trained": optimizer.trained, "calibration_images": optimizer.calibration_images, "calibration_size": config.calibration_size, "threads": optimizer.threads}
    report["app"] = deployed_files.get("app")
    report["adaptation"] = adaptation
    report["robustness"] = robustness_report
    report["deployed"]["test_predictions"] = assemble.test_predictions(dataset, optimizer, deployed_files, teacher, deployed, baseline)
    report["deployed"]["cv_predictions"] = assemble.cv_predictions(dataset, deployed)
    write_report(report, out)
    write_html_report(report, out)
    write_recipe(given, out)
    write_manifest(out, dataset, keys, keys["data_content"])
    return report


def keys_at_kept_size(config: CompileConfig, keys: dict[str, str], size: int, dataset, unlabeled) -> dict[str, str]:
    """--student-size auto, once the search kept `size`: the distillation, the baseline and the
    exports depend on that size, not on the budgets that chose it, so they take the keys of a
    compile of that size (a budget that keeps the same size, or `--student-size N`, reuses them);
    the search's own entry stays keyed by its budgets."""
    sized = dataclasses.replace(config, student_size=size)
    return {**stage_keys(sized, dataset, unlabeled), "student_head": keys["student_head"]}


def plan(config: CompileConfig) -> dict:
    """The resolved recipe and the stages a compile would run (compiler/stages/__init__.py, the declaration
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
    kept = cache.record("student_head", keys["student_head"]) if config.chooses_student_size else None
    if kept is not None:  # the size search is cached: the later stages are keyed by the size it kept
        keys = keys_at_kept_size(config, keys, kept["input_size"], dataset, unlabeled)
    stages = [{"stage": s.name, "does": s.does, "cached": s.cached(cache, keys), "keys": {e: keys[e] for e in s.caches}}
              for s in stages_for(config)]
    if config.chooses_student_size:  # say which sizes the student stage will measure
        sizes = ", ".join(str(size) for size in candidate_sizes(get_config(config.student).input_size))
        for s in stages:
            if s["stage"] == "student":
                s["does"] = f"the student's probe at {sizes} px, each int8 file timed, one size kept; then distillation" + (
                    f" (and, when no size meets {config.max_latency_ms:g} ms, the channel-pruned student that does: "
                    "distilled too, deployed if it passes the accuracy gate)" if config.max_latency_ms is not None and narrower_students(config.student)
                    else "")
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


# --------------------------------------------------------------------------------------------
# --model: a classifier trained elsewhere (compiler/training/source_model.py)
# --------------------------------------------------------------------------------------------


def _with_interval(metrics: dict) -> str:
    """'96.7% (95% CI 88.6%-99.1%, n=60)' for a scored split's metrics (compiler/evaluation)."""
    from edgetl.compiler.evaluation.stats import describe_accuracy

    n = sum(sum(row) for row in metrics["confusion_matrix"])
    return describe_accuracy(metrics["accuracy"], n)
