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


def test_an_interrupted_demo_resumes_without_overwrite_and_anything_else_is_kept(tmp_path, monkeypatch, capsys):
    """A demo killed mid-compile leaves its images and an unfinished compile: the same command
    goes on (a newcomer's first demo died of the host's thread limit and the rerun was refused).
    A folder holding anything else, or a finished demo, still needs --overwrite."""
    from edgetl.compiler import pipeline
    from edgetl.compiler.outputs import RUN_MARKER

    calls = []
    monkeypatch.setattr(pipeline, "compile_model", lambda config: calls.append(config))
    out = tmp_path / "demo"
    (out / "data").mkdir(parents=True)
    (out / "compiled").mkdir()
    (out / "compiled" / RUN_MARKER).write_text("run\n")
    assert run(["demo", "--out", str(out)]) == 0 and len(calls) == 1
    assert "resuming the interrupted demo" in capsys.readouterr().err
    (out / "compiled" / RUN_MARKER).unlink()  # finished: kept unless asked
    assert run(["demo", "--out", str(out)]) == 1 and len(calls) == 1
    (out / "compiled" / RUN_MARKER).write_text("run\n")
    (out / "notes.txt").write_text("mine")  # the user's file beside it: kept unless asked
    assert run(["demo", "--out", str(out)]) == 1 and len(calls) == 1
    assert (out / "notes.txt").read_text() == "mine"
