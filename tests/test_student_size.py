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
    # report.json rounds p50s to 0.001 ms (the choice used them unrounded): half a unit either way.
    half_unit = 0.0005
    assert kept["int8_p50_ms"] - half_unit <= (min(passing) + half_unit) * (1 + LATENCY_TIE) + 1e-9
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
    said = capsys.readouterr()  # progress goes to stderr, the summary to stdout
    assert again["models"]["student"]["cached"] and "trying 32 px" not in said.out + said.err
    assert again["models"]["student"]["training"]["resolution"] == report["models"]["student"]["training"]["resolution"]
    # The dry run reads the size the cached search kept, so it finds the later stages cached too.
    dry = compile_model(CompileConfig(data=data, out=root / "planned", cache_dir=cache, **AUTO), dry_run=True)
    planned = {s["stage"]: s["cached"] for s in dry["stages"]}
    assert planned["student"] and planned["export"], planned
    # A latency budget is part of the choice: it is not taken from the cache of a compile without one.
    budget = compile_model(CompileConfig(data=data, out=root / "budget", cache_dir=cache, max_latency_ms=1e-6, **AUTO))
    choice = budget["models"]["student"]["training"]["resolution"]
    said = capsys.readouterr()
    assert "trying 32 px" in said.out + said.err and "NO size" in choice["why"] and choice["max_latency_ms"] == 1e-6
    # The distillation is keyed by the size kept, not by the budget: the same size reuses it.
    first = report["models"]["student"]["training"]["resolution"]["chosen"]
    assert budget["models"]["student"]["cached"] == (choice["chosen"] == first)
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


def test_a_fixed_size_compile_reuses_the_student_distilled_at_the_size_auto_kept(auto_build):
    """`--student-size N` after an `auto` compile that kept N: the same distillation, from the cache,
    and no size-search record that this compile did not make."""
    root, data, cache, report = auto_build
    size = report["models"]["student"]["training"]["resolution"]["chosen"]
    fixed = compile_model(CompileConfig(data=data, out=root / "fixed", cache_dir=cache, **{**AUTO, "student_size": size}))
    student = fixed["models"]["student"]
    assert student["cached"] and student["input_size"] == size and "resolution" not in student["training"]
    assert student["training"]["distillation"]["selection"] == report["models"]["student"]["training"]["distillation"]["selection"]
    assert "Student input size" not in (root / "fixed" / "report.html").read_text()


def _timed_by_pixels(sessions, chains, label):
    """A stand-in for the interleaved timer: p50 from the input's pixels, a tenth of it for a
    channel-pruned file, so which option meets a budget is known in advance."""
    from pathlib import Path

    return [(s.input_size / 32) ** 2 * (0.1 if "slim" in Path(s.path).name else 1.0) for s, _ in sessions], ""


def test_a_budget_only_a_slim_student_meets_distils_it_and_gates_it(auto_build, monkeypatch):
    from edgetl.compiler.stages import resolution, slim

    root, data, cache, _ = auto_build
    monkeypatch.setattr(resolution, "time_in_size_order", _timed_by_pixels)
    # Every size is over 0.2 ms (16 px: 0.25), the slim variant at 32 px is 0.1: it is the pick.
    settings = {**AUTO, "baseline": True, "max_latency_ms": 0.2, "max_accuracy_drop": 100.0}
    report = compile_model(CompileConfig(data=data, out=root / "slim", cache_dir=cache, **settings))
    student = report["models"]["student"]
    choice = student["training"]["resolution"]
    assert choice["slim_pick"]["model"] == "tiny_cnn_slim50" and choice["slim_pick"]["size"] == 32
    trial = choice["slim_trial"]
    # Any accuracy is within a 100-point budget: the slim student is deployed, and every later
    # stage (the baseline, the files, the report) is of it.
    assert trial["passed"] and trial["deployed"] and trial["accuracy_on"].endswith("val images")
    assert trial["slim"]["n"] == trial["full"]["n"] == trial["difference"]["n"] > 0
    assert student["model"] == "tiny_cnn_slim50" and student["input_size"] == 32
    assert report["models"]["baseline"]["model"] == "tiny_cnn_slim50"
    assert open_session(root / "slim" / "model.tflite").input_size == 32
    page = (root / "slim" / "report.html").read_text()
    assert "Channel-pruned student: tiny_cnn_slim50 at 32 px deployed" in page and "Student: tiny_cnn_slim50 at 32 px" in page
    # The same trial failing the gate (forced): the full student stays, the record says why.
    monkeypatch.setattr(slim, "slim_gate", lambda s, f, d: (False, "failed: forced", {
        "slim": {"accuracy": 0.5, "n": 4, "correct": 2, "ci95": [0.15, 0.85]}, "full": {"accuracy": 1.0, "n": 4, "correct": 4, "ci95": [0.51, 1.0]},
        "difference": {"difference": -0.5, "ci95": [-0.8, 0.0], "n": 4}}))
    kept = compile_model(CompileConfig(data=data, out=root / "slim_failed", cache_dir=cache, **settings))
    student = kept["models"]["student"]
    trial = student["training"]["resolution"]["slim_trial"]
    assert not trial["deployed"] and "forced" in trial["why"]
    assert student["model"] == "tiny_cnn" and student["input_size"] == student["training"]["resolution"]["chosen"]
    assert kept["models"]["baseline"]["model"] == "tiny_cnn"
    assert "Channel-pruned student: tiny_cnn_slim50 at 32 px not deployed" in (root / "slim_failed" / "report.html").read_text()
