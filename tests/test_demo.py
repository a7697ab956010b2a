"""`edgetl demo`: the offline first run a newcomer makes (textures made from numpy, offline
Lite0 weights, one truncated JPEG). Minutes; run in CI. Apart from the flowers12 module so
pytest-xdist (--dist loadfile) can run the two on different workers."""

from __future__ import annotations

import json

import pytest

from edgetl.cli import main

pytestmark = pytest.mark.slow


def run(args):
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code


def test_demo_runs_offline_and_reports_the_broken_upload(tmp_path):
    out = tmp_path / "demo"
    assert run(["demo", "--out", str(out)]) == 0
    report = json.loads((out / "compiled" / "report.json").read_text())
    assert [s["path"] for s in report["dataset"]["skipped"]] == ["stripes/truncated_upload.jpg"]
    by_file = {a["file"]: a for a in report["artifacts"]}
    # 160 images: below --cv-below, so nothing is held out; the estimate is cross-validated and
    # the deployed file is checked for fidelity on the training images.
    assert report["dataset"]["selection"] == "cv" and by_file["model.tflite"]["test"] is None
    assert report["models"]["student"]["cv"]["accuracy"] >= 0.9  # four distinct textures
    assert by_file["model.tflite"]["training_images"]["accuracy"] >= 0.9
