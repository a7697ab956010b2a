"""Real models on flowers12 (real photos): the bars the pipeline must clear. Minutes; run in CI."""

from __future__ import annotations

import json

import pytest

from conftest import FLOWERS12
from edgetl.cli import main

pytestmark = pytest.mark.slow
needs_flowers = pytest.mark.skipif(not FLOWERS12.is_dir(), reason=f"flowers12 dataset not found at {FLOWERS12}")

# A logistic-regression probe on frozen ImageNet EfficientNet-Lite0 features reaches 95.8% on
# flowers12's test split (shared/datasets/flowers12/README.md): fine-tuning must not do worse.
LINEAR_PROBE_ACCURACY = 0.958


def run(args):
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code


@pytest.fixture(scope="module")
def android_cpu(tmp_path_factory):
    """flowers12 compiled for android-cpu with an offline teacher deployed as it is."""
    out = tmp_path_factory.mktemp("flowers") / "android-cpu"
    args = ["compile", str(FLOWERS12), "--out", str(out), "--teacher", "efficientnet_lite0", "--student", "none"]
    assert run(args + ["--target", "android-cpu"]) == 0
    return out, json.loads((out / "report.json").read_text())


@needs_flowers
def test_flowers12_fine_tuning_beats_the_linear_probe_and_exports_agree(android_cpu):
    _, report = android_cpu
    by_file = {a["file"]: a for a in report["artifacts"]}
    fp32 = by_file["variants/model.fp32.tflite"]
    assert fp32["test"]["images"] == 240
    assert fp32["test"]["accuracy"] >= LINEAR_PROBE_ACCURACY
    for name in ("variants/model.fp32.tflite", "variants/model.fp32.onnx"):
        assert by_file[name]["parity"]["top1_agreement"] >= 0.99
        assert by_file[name]["test"]["accuracy"] == pytest.approx(by_file["teacher.keras"]["test"]["accuracy"], abs=0.01)


@needs_flowers
def test_android_cpu_deploys_a_checked_int8_file(android_cpu):
    out, report = android_cpu
    by_file = {a["file"]: a for a in report["artifacts"]}
    deployed, fp32 = by_file["model.tflite"], by_file["variants/model.fp32.tflite"]
    assert deployed["precision"] == "int8" and report["deployed"]["io"]["input"]["dtype"] == "uint8"
    assert fp32["size_bytes"] / deployed["size_bytes"] >= 3.5
    assert deployed["test"]["accuracy"] >= fp32["test"]["accuracy"] - 0.01
    int8_onnx = by_file["variants/model.int8.onnx"]
    assert fp32["size_bytes"] / int8_onnx["size_bytes"] >= 3.5
    assert int8_onnx["test"]["accuracy"] >= by_file["variants/model.fp32.onnx"]["test"]["accuracy"] - 0.01
    for name in ("app/Classifier.kt", "app/Classifier.swift", "app/golden/expected.json", "recipe.yaml", "manifest.json", "report.html"):
        assert (out / name).is_file(), name


@needs_flowers
def test_mediapipe_names_the_flowers_as_the_report_scores_them(android_cpu):
    """The real client: MediaPipe Tasks' ImageClassifier on the deployed file, metadata only."""
    mp = pytest.importorskip("mediapipe", reason="mediapipe is installed by a second command (README, Run the tests)")
    from mediapipe.tasks.python import BaseOptions, vision

    out, report = android_cpu
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(out / "model.tflite")), max_results=1)
    photos = sorted((FLOWERS12 / "test").glob("*/*.jpg"))
    correct = 0
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for photo in photos:
            top = classifier.classify(mp.Image.create_from_file(str(photo))).classifications[0].categories[0]
            assert top.category_name  # names come from the file's metadata alone
            correct += top.category_name == photo.parent.name
    deployed = next(a for a in report["artifacts"] if a["file"] == "model.tflite")
    assert len(photos) == 240
    assert correct / len(photos) == pytest.approx(deployed["test"]["accuracy"], abs=1 / 240 + 1e-9)


@needs_flowers
def test_changing_only_the_quantization_reuses_the_training(android_cpu, tmp_path):
    out, _ = android_cpu
    again = tmp_path / "fp16"
    # The corruption suite (not cached, not under test here) would double this test's time.
    assert run(["compile", "--recipe", str(out / "recipe.yaml"), "--quantize", "fp16", "--no-robustness", "--out", str(again)]) == 0
    report = json.loads((again / "report.json").read_text())
    assert report["models"]["teacher"]["cached"]
    assert next(a for a in report["artifacts"] if a["file"] == "model.tflite")["precision"] == "fp16"
