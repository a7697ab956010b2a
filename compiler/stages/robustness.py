"""The robustness stage: the deployed files scored on camera corruptions
(compiler/evaluation/robustness.py)."""

from __future__ import annotations

from pathlib import Path

from edgetl.compiler.data.image_store import ImageCache
from edgetl.compiler.outputs import TFLITE_FILE, VARIANTS_FP32_TFLITE
from edgetl.compiler.progress import console
from edgetl.compiler.spec.config import CompileConfig
from edgetl.compiler.stages.trained import TrainedModel


def robustness(config: CompileConfig, out: Path, deployed: TrainedModel, optimizer, deployed_files: dict, images: ImageCache) -> dict:
    """The float export, the deployed TFLite (and a pruned one) on the corruption suite
    (compiler/evaluation/robustness.py), on the test split, or the training images when there is none."""
    from edgetl.compiler.evaluation.robustness import score_robustness, session_predictor
    from edgetl.compiler.evaluation.stats import describe_accuracy
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
    console.print(f"    weakest corruption for {w['model']}: {w['corruption']} ({describe_accuracy(w['accuracy'], section['images'])}, "
                  f"{w['drop_from_clean'] * 100:.1f} points below clean; {section['seconds']:.0f} s)")
    return section

