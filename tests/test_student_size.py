"""--student-size auto through a whole compile: every size measured, one kept, and every later
stage (distillation, the files, their metadata, the report) at the kept size (issue 15)."""

from __future__ import annotations

import json

import pytest
from edgetl.compiler.pipeline import compile_model
from edgetl.compiler.spec.config import CompileConfig
from edgetl.runtime import open_session

AUTO = dict(selection="holdout", teacher="tiny_cnn", teacher_weights="none", finetune_epochs=1, student="tiny_cnn",
            student_weights="none", student_size="auto", distill_epochs=1, baseline=False, robustness=False)


@pytest.fixture(scope="module")
def auto_build(tmp_path_factory):
    from conftest import write_color_dataset

    root = tmp_path_factory.mktemp("auto_size")
    data = write_color_dataset(root / "data", per_class=16)
    cache = root / "cache"
    report = compile_model(CompileConfig(data=data, out=root / "out", cache_dir=cache, **AUTO))
    return root, data, cache, report


def test_every_size_is_measured_and_the_files_are_at_the_kept_one(auto_build):
    root, _, _, report = auto_build
    student = report["models"]["student"]
    choice = student["training"]["resolution"]
    assert [row["size"] for row in choice["sizes"]] == [32, 24, 16]  # tiny_cnn's own size first
    assert all(row["int8_p50_ms"] > 0 and row["accuracy"]["n"] > 0 for row in choice["sizes"])
    assert choice["chosen"] in (32, 24, 16) and choice["why"].startswith(f"{choice['chosen']} px")
    kept = next(row for row in choice["sizes"] if row["size"] == choice["chosen"])
    assert kept["gate"] == "passed"
    # Among sizes that pass, none is faster than the kept one beyond the measurement tie.
    from edgetl.compiler.compression.optimize import LATENCY_TIE

    passing = [row["int8_p50_ms"] for row in choice["sizes"] if row["gate"] == "passed"]
    assert kept["int8_p50_ms"] <= min(passing) * (1 + LATENCY_TIE) + 1e-9
    # The student and everything built from it run at the kept size.
    size = choice["chosen"]
    assert student["input_size"] == size
    out = root / "out"
    assert json.loads((out / "model_info.json").read_text())["input"]["size"] == [size, size]
    for name in ("model.tflite", "model.onnx"):
        assert open_session(out / name).input_size == size, name
    page = (out / "report.html").read_text()
    assert f"Student input size: {size} px" in page
    assert "alt='probe accuracy against int8 p50 for each student input size' src='data:image/png;base64," in page
    assert "student_size: auto" in (out / "recipe.yaml").read_text()


def test_a_replay_takes_the_choice_from_the_cache(auto_build, capsys):
    root, data, cache, report = auto_build
    again = compile_model(CompileConfig(data=data, out=root / "again", cache_dir=cache, **AUTO))
    assert again["models"]["student"]["cached"] and "trying 32 px" not in capsys.readouterr().out
    assert again["models"]["student"]["training"]["resolution"] == report["models"]["student"]["training"]["resolution"]
    # A latency budget is part of the choice: it is not taken from the cache of a compile without one.
    budget = compile_model(CompileConfig(data=data, out=root / "budget", cache_dir=cache, max_latency_ms=1e-6, **AUTO))
    choice = budget["models"]["student"]["training"]["resolution"]
    assert not budget["models"]["student"]["cached"] and "NO size" in choice["why"] and choice["max_latency_ms"] == 1e-6
    # No size meets it, so the channel-pruned variant was timed at every passing size, paired
    # with the own size's file; none is that fast either, and the choice says so.
    passing = [row["size"] for row in choice["sizes"] if row["gate"] == "passed"]
    assert [(o["model"], o["size"]) for o in choice["slim_options"]] == [("tiny_cnn_slim50", s) for s in passing]
    assert all(o["int8_p50_ms"] > 0 and o["int8_mb"] > 0 and o["p50_vs_own_size"] > 0 for o in choice["slim_options"])
    assert "nor does a channel-pruned student: the fastest, tiny_cnn_slim50" in choice["why"] and choice["slim_pick"] is None
    page = (root / "budget" / "report.html").read_text()
    assert "channel-pruned variants were timed too" in page and page.count("<td>tiny_cnn_slim50</td>") == len(passing)
    # Without a budget, or with one a size meets, nothing more is built.
    assert report["models"]["student"]["training"]["resolution"]["slim_options"] == []
