"""The optimize stage: the quantized (and pruned, clustered) candidates built, measured and put
through the accuracy gate (compiler/compression/optimize.py does the work; this says which)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from edgetl.compiler.data.image_store import ImageCache
from edgetl.compiler.progress import console
from edgetl.compiler.spec.config import CompileConfig
from edgetl.compiler.stages.source import why_no_fine_tuning
from edgetl.compiler.stages.student import student_views
from edgetl.compiler.stages.trained import TrainedModel


def optimize(config: CompileConfig, target, out: Path, teacher: TrainedModel, deployed: TrainedModel, images: ImageCache, float_files: dict, calibration=None, strategy=None):
    """Every candidate file the settings ask for (PTQ precisions, QAT when int8 misses the gate or
    --qat asks, the pruned and clustered ones, ONNX int8/fp16), through the gate and timed: the
    Optimizer that the package stage chooses the deployed files from."""
    from edgetl.compiler.compression.optimize import Optimizer
    from edgetl.runtime.measure import default_threads

    distilled = deployed is not teacher
    threads = config.threads or default_threads(target.threads if target else 4)
    # A head refit on train + val: the pruned, clustered and QAT candidates fine-tune on val too,
    # as the float model was fit on it, so the gate on val compares like with like.
    val_seen = deployed.head_refit is not None
    views = student_views(config, teacher if distilled else None, deployed.input_size, images)
    if val_seen:
        x_val, y_val = images.get("val", views[0].size)
        views = views[0].concat(x_val), np.concatenate([views[1], y_val])
    optimizer = Optimizer(
        float_model=deployed.model,
        teacher_model=teacher.model if distilled else None,
        train_views=views,
        val_seen=val_seen,
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
            why_not = why_no_fine_tuning(deployed)
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

