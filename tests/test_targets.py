"""Targets as data, their constraint checks on real converted files, and the app handoff."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from edgetl.compiler.spec.config import CompileConfig
from edgetl.compiler.spec.constraints import TargetConstraintError, check_target
from edgetl.compiler.spec.targets import TARGETS, get_target
from edgetl.errors import EdgetlError
from edgetl.runtime.measure import usable_cores


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    """A tiny classifier as float TFLite, full-integer uint8 TFLite and float ONNX."""
    from edgetl.compiler.export.convert import export_onnx, export_tflite
    from edgetl.compiler.compression.quantize import convert_tflite
    from edgetl.models import create_model

    folder = tmp_path_factory.mktemp("targets")
    model = create_model("tiny_cnn", weights=None, num_classes=3)
    calibration = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3)).astype(np.uint8)
    (folder / "int8.tflite").write_bytes(convert_tflite(model, "int8", calibration=calibration, io_dtype="uint8"))
    return {
        "fp32": export_tflite(model, folder / "fp32.tflite"),
        "int8": folder / "int8.tflite",
        "onnx": export_onnx(model, folder / "fp32.onnx"),
        "model": model,
    }


def test_every_target_resolves_to_a_complete_recipe(tmp_path):
    for name, target in TARGETS.items():
        config = CompileConfig(data=tmp_path, out=tmp_path / "o", target=name).resolved()
        assert config.quantize == target.quantize and config.io_dtype == target.io_dtype
        # threads: the target's, capped by this machine's cores (the count the run measures with)
        assert config.student_size == target.student_size and config.threads == min(target.threads, len(usable_cores()))
    # What the user says wins over the profile.
    config = CompileConfig(data=tmp_path, out=tmp_path / "o", target="raspberry-pi", quantize="fp16", student_size=128)
    assert config.resolved().quantize == "fp16" and config.resolved().student_size == 128
    with pytest.raises(EdgetlError, match="android-npu"):
        get_target("android-npu")


def test_benchmark_threads_never_exceed_the_cores_present_unless_asked(tmp_path, monkeypatch):
    """A 4-thread target on a machine (or container) that lets this process use 2 cores of 64."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert get_target("android-cpu").threads == 4
    assert CompileConfig(data=tmp_path, out=tmp_path / "o", target="android-cpu").resolved().threads == 2
    assert CompileConfig(data=tmp_path, out=tmp_path / "o").resolved().threads == 2  # no target: 4, capped
    # What the user asks for is what is measured, even beyond the cores.
    assert CompileConfig(data=tmp_path, out=tmp_path / "o", target="android-cpu", threads=8).resolved().threads == 8


def test_edgetpu_rejects_a_float_op_and_names_it(tiny_files):
    edgetpu = get_target("edgetpu")
    with pytest.raises(TargetConstraintError, match="computes in float32") as info:
        check_target(edgetpu, tiny_files["fp32"], tiny_files["onnx"])
    # Named: the first float op of every edgetl graph, the in-graph preprocessing's (x - mean).
    assert "op SUB computes in float32" in str(info.value) and "the Edge TPU would run them on the CPU" in str(info.value)
    checked = check_target(edgetpu, tiny_files["int8"], tiny_files["onnx"])
    assert "CONV_2D" in checked["ops"]


def test_gpu_target_rejects_an_int8_file_and_tensorrt_accepts_opset_17(tiny_files):
    with pytest.raises(TargetConstraintError, match="int8"):
        check_target(get_target("android-gpu"), tiny_files["int8"], tiny_files["onnx"])
    check_target(get_target("android-gpu"), tiny_files["fp32"], tiny_files["onnx"])
    assert check_target(get_target("jetson"), tiny_files["fp32"], tiny_files["onnx"])["onnx_opset"] <= 17


def test_handoff_snippets_use_the_files_real_quantization(tiny_files, tmp_path):
    from edgetl.compiler.export.handoff import write_handoff
    from edgetl.compiler.compression.quantize import tflite_io_details
    from edgetl.runtime import open_session

    io = tflite_io_details(tiny_files["int8"])
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    probs = open_session(tiny_files["int8"]).run(images)
    written = write_handoff(
        tmp_path, model_file="model.tflite", model="tiny_cnn", target="android-cpu", threads=4, size=32,
        resize="stretch", io=io, golden_images=images, golden_labels=["a", "b", "c"], golden_probs=probs,
        labels=["a", "b", "c"],
    )
    assert written["golden_images"] == 3
    kotlin = (tmp_path / "app" / "Classifier.kt").read_text()
    swift = (tmp_path / "app" / "Classifier.swift").read_text()
    out = io["output"]
    assert f"- ({out['zero_point']})) * {out['scale']:.9g}f" in kotlin  # dequantized with the file's own figures
    assert "ByteArray(3)" in kotlin and "UInt8" in swift and "size = 32" in kotlin
    expected = json.loads((tmp_path / "app" / "golden" / "expected.json").read_text())
    for vector, p in zip(expected["vectors"], probs):
        assert vector["expected_top1"] == ["a", "b", "c"][int(np.argmax(p))]
        np.testing.assert_allclose(vector["probabilities"], p, atol=1e-6)
        from PIL import Image

        pixels = np.asarray(Image.open(tmp_path / "app" / "golden" / vector["image"]))
        assert pixels.shape == (32, 32, 3)
    # The golden PNGs are lossless: the same pixels give the same outputs.
    reloaded = np.stack([np.asarray(Image.open(tmp_path / "app" / "golden" / v["image"])) for v in expected["vectors"]])
    np.testing.assert_array_equal(reloaded, images)
