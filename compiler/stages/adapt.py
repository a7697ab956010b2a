"""The adapt stage: the deployed model adapted to the --unlabeled images from the device's camera
(compiler/training/adapt.py), in place, so export, int8 and every check work on the adapted model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.compiler.data.datasets import Dataset, load_images, scan_dataset
from edgetl.compiler.data.image_store import ImageCache
from edgetl.compiler.outputs import STUDENT_FILE, TEACHER_FILE
from edgetl.compiler.progress import console
from edgetl.compiler.spec.config import CompileConfig
from edgetl.compiler.stages.trained import TrainedModel, save_keras


def adapt_deployed(config: CompileConfig, deployed: TrainedModel, images: ImageCache, dataset: Dataset, out: Path, cache, keys) -> dict:
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
            source=adaptation_source(config, images, size),
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
    save_keras(model, out / (STUDENT_FILE if config.distills else TEACHER_FILE))
    return report


def adaptation_source(config: CompileConfig, images: ImageCache, size: int):
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


def target_calibration(config: CompileConfig, adaptation: dict | None, images: ImageCache, deployed: TrainedModel):
    """int8 ranges from the target images when the model was adapted to them (else None: the
    optimizer's class-balanced training sample)."""
    if adaptation is None or adaptation["method"] == "none":
        return None
    from edgetl.compiler.training.adapt import calibration_images

    return calibration_images(images.get("unlabeled", deployed.input_size)[0], config.calibration_size, config.seed)

