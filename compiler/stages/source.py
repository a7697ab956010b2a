"""The source stage (--model): a classifier trained elsewhere, wrapped so raw pixels go in and its
preprocessing runs inside the graph, checked against the user's model fed the user's
preprocessing in NumPy (compiler/training/source_model.py). Nothing is trained."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgetl.compiler.data.datasets import Dataset
from edgetl.compiler.data.image_store import ImageCache
from edgetl.compiler.outputs import SOURCE_FILE
from edgetl.compiler.progress import console
from edgetl.compiler.spec.config import CompileConfig
from edgetl.compiler.stages.trained import TrainedModel, save_keras
from edgetl.errors import ExportMismatchError, SettingError
from edgetl.models import ModelConfig


def source_dataset(dataset: Dataset, source, config: CompileConfig) -> Dataset:
    """DATA's classes matched to the model's outputs, and which images do what (nothing trains)."""
    from edgetl.compiler.training.source_model import evaluation_dataset, match_classes

    dataset = evaluation_dataset(match_classes(dataset, source, config.labels))
    train, test = dataset.splits["train"], dataset.splits["test"]
    if test is train:
        console.print(f"    {len(train)} images: all of them calibrate int8, feed the accuracy gate and score the files (nothing is trained)")
    else:
        console.print(f"    {len(train)} images calibrate int8 and feed the accuracy gate; the {len(test)} of test/ score the files")
    return dataset


def source_stage(config: CompileConfig, source, model_config: ModelConfig, images: ImageCache, out: Path) -> TrainedModel:
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
    save_keras(wrapped.model, out / SOURCE_FILE)
    return trained


def why_no_fine_tuning(deployed: TrainedModel) -> str | None:
    """Why QAT cannot run on the deployed model (a --model edgetl cannot flatten), or None."""
    return (deployed.training.get("source") or {}).get("qat_unavailable")

