"""bf16 mixed precision for the teacher's training: who gets it, and that nothing downstream sees it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgetl.compiler.spec import precision
from edgetl.models import get_config


def test_auto_follows_the_family_flag_and_the_cpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.use_bf16("auto", get_config("resnet50"))[0] is True
    # Measured: no gain for EfficientNet-Lite (depthwise convolutions), so float32.
    on, why = precision.use_bf16("auto", get_config("efficientnet_lite0"))
    assert on is False and "does not train faster" in why
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    on, why = precision.use_bf16("auto", get_config("resnet50"))
    assert on is False and "no native bf16" in why
    assert precision.use_bf16("bf16", get_config("tiny_cnn"))[0] is True
    assert precision.use_bf16("off", get_config("resnet50"))[0] is False


def test_policy_is_restored_and_the_float32_copy_computes_the_same():
    from edgetl._compat import keras
    from edgetl.models import create_model

    with precision.training_policy(True):
        mixed = create_model("tiny_cnn", weights=None, num_classes=3)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert precision.is_mixed(mixed) and mixed.output.dtype == "float32"  # probabilities stay float32
    copy = precision.float32_copy(mixed, "tiny_cnn", 3, 32, 0.2)
    assert not precision.is_mixed(copy)
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    for a, b in zip(mixed.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(a, b)
    # bf16 keeps 8 significant bits: close, not equal; the float32 copy is what gets exported.
    assert np.abs(mixed.predict(x, verbose=0) - copy.predict(x, verbose=0)).max() < 0.05


@pytest.mark.slow
def test_a_bf16_teacher_is_exported_and_verified_in_float32(tmp_path):
    from conftest import write_color_dataset

    from edgetl.compiler.spec.config import CompileConfig
    from edgetl.compiler.pipeline import compile_model
    from edgetl.runtime.keras_model import load_keras_model

    data = write_color_dataset(tmp_path / "data", per_class=20)
    report = compile_model(CompileConfig(
        data=data, out=tmp_path / "out", use_cache=False, selection="holdout", quantize="fp32", teacher="tiny_cnn",
        teacher_weights="none", finetune_epochs=2, student="none", mixed_precision="bf16", robustness=False,
    ))
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert "mixed_bfloat16" in json.dumps(saved)  # the report says how the teacher was trained
    teacher = load_keras_model(tmp_path / "out" / "teacher.keras")
    assert not precision.is_mixed(teacher)
    # The float exports passed their parity check against that float32 model (else no build).
    assert (tmp_path / "out" / "model.tflite").is_file() and (tmp_path / "out" / "variants" / "model.fp32.tflite").is_file()


def test_a_bf16_copy_of_the_teacher_distils_into_a_float32_student():
    """benchmarks/bf16_training.py times distillation from a bf16 copy of the teacher: the copy
    has the teacher's weights, computes in bf16, and a distillation step with it trains the
    float32 student without a dtype error (its logits are cast for the loss)."""
    from edgetl._compat import keras
    from edgetl.compiler.training.distill import Distiller, logits_model
    from edgetl.models import create_model

    float_teacher = create_model("tiny_cnn", weights=None, num_classes=3)
    copy = precision.bf16_copy(float_teacher, "tiny_cnn", 3, 32, 0.2)
    assert precision.is_mixed(copy) and not precision.is_mixed(float_teacher)
    x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype(np.float32)
    assert np.abs(copy.predict(x, verbose=0) - float_teacher.predict(x, verbose=0)).max() < 0.05

    student = create_model("tiny_cnn", weights=None, num_classes=3)
    distiller = Distiller(logits_model(student), logits_model(copy), temperature=2.0, alpha=0.5)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = [w.copy() for w in student.get_weights()]
    logs = distiller.fit(x, np.array([0, 1, 2, 0, 1, 2, 0, 1]), epochs=1, batch_size=4, verbose=0).history
    assert np.isfinite(logs["loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, student.get_weights()))
