"""The package stage: the chosen candidates copied to model.tflite and model.onnx with their
metadata, the target's checks, and the app handoff (snippets and golden vectors)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from edgetl import __version__
from edgetl.compiler.data.datasets import RESIZE_POLICY
from edgetl.compiler.data.image_store import ImageCache
from edgetl.compiler.outputs import ONNX_FILE, TFLITE_FILE
from edgetl.compiler.stages.trained import TrainedModel
from edgetl.runtime.model_info import ModelInfo


def package(config, target, out: Path, deployed: TrainedModel, optimizer, classes, images: ImageCache) -> dict:
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

