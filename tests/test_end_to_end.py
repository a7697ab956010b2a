"""Real models on real and demo data: the bars the spine must clear. Minutes each; run in CI."""

from __future__ import annotations

import json

import pytest

from conftest import FLOWERS12
from edgetl.cli import main

pytestmark = pytest.mark.slow

# A logistic-regression probe on frozen ImageNet EfficientNet-Lite0 features reaches 95.8% on
# flowers12's test split (shared/datasets/flowers12/README.md): fine-tuning must not do worse.
LINEAR_PROBE_ACCURACY = 0.958


def run(args):
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code


@pytest.mark.skipif(not FLOWERS12.is_dir(), reason=f"flowers12 dataset not found at {FLOWERS12}")
def test_flowers12_with_an_offline_teacher_beats_the_linear_probe(tmp_path):
    out = tmp_path / "flowers"
    assert run(["compile", str(FLOWERS12), "--out", str(out), "--teacher", "efficientnet_lite0"]) == 0
    report = json.loads((out / "report.json").read_text())
    by_file = {a["file"]: a for a in report["artifacts"]}
    assert by_file["model.tflite"]["test"]["accuracy"] >= LINEAR_PROBE_ACCURACY
    assert by_file["model.tflite"]["test"]["images"] == 240
    for name in ("model.tflite", "model.onnx"):
        assert by_file[name]["parity"]["top1_agreement"] >= 0.99
        assert by_file[name]["test"]["accuracy"] == pytest.approx(by_file["teacher.keras"]["test"]["accuracy"], abs=0.01)


def test_demo_runs_offline_and_reports_the_broken_upload(tmp_path):
    out = tmp_path / "demo"
    assert run(["demo", "--out", str(out)]) == 0
    report = json.loads((out / "compiled" / "report.json").read_text())
    assert [s["path"] for s in report["dataset"]["skipped"]] == ["stripes/truncated_upload.jpg"]
    by_file = {a["file"]: a for a in report["artifacts"]}
    assert by_file["model.tflite"]["test"]["accuracy"] >= 0.9  # four distinct textures
