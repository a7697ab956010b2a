"""The accuracy gate and the choice among candidates, on candidates with known figures."""

from __future__ import annotations

from pathlib import Path

from edgetl.compiler.spec.config import CompileConfig
from edgetl.compiler.compression.optimize import Candidate, Optimizer


def row(precision, val, p50, fmt="tflite", **fields) -> dict:
    """A measured candidate: its precision and fields (qat, sparsity, clusters), val accuracy, p50 ms."""
    return dict(format=fmt, precision=precision, val_accuracy=val, latency_p50_ms=p50, **fields)


def make_optimizer(tmp_path, rows, **config):
    """An Optimizer holding fake measured candidates (`row`s)."""
    opt = Optimizer(
        float_model=None, teacher_model=None, train_views=None, images=None, size=32, out=tmp_path, threads=1,
        config=CompileConfig(data=tmp_path, out=tmp_path, **config),
    )
    for fields in rows:
        candidate = Candidate(path=Path("unset"), origin="test", **fields)
        candidate.path = tmp_path / f"model.{candidate.name}.{candidate.format}"
        candidate.path.write_bytes(b"x" * (1000 if candidate.precision == "fp32" else 300))
        opt.candidates.append(candidate)
    opt.apply_gate()
    return opt


def test_a_broken_calibration_is_rejected_and_the_fastest_good_file_deployed(tmp_path):
    opt = make_optimizer(
        tmp_path,
        [
            row("fp32", 0.98, 2.7),
            row("fp16", 0.98, 2.7),
            row("dynamic", 0.975, 9.5),
            row("int8", 0.083, 1.0),  # calibrated on black images: chance accuracy
        ],
        max_accuracy_drop=1.0,
    )
    gates = {c.name: c.gate for c in opt.candidates}
    assert gates["int8"].startswith("failed") and gates["dynamic"] == "passed"
    chosen, why = opt.choose("tflite", pinned=None, prefer_pruned=False)
    assert chosen.name in ("fp32", "fp16") and "int8" in why and "rejected" in why


def test_a_pinned_precision_that_fails_falls_back_and_says_why(tmp_path):
    opt = make_optimizer(
        tmp_path,
        [row("fp32", 0.98, 2.7), row("int8", 0.95, 1.0), row("int8", 0.978, 1.0, qat=True)],
    )
    chosen, why = opt.choose("tflite", pinned="int8", prefer_pruned=False)
    assert chosen.name == "int8-qat"
    assert "int8 was asked for" in why and "failed" in why


def test_the_gate_is_measured_in_points_of_validation_accuracy(tmp_path):
    rows = [row("fp32", 0.98, 2.7), row("int8", 0.972, 1.0)]
    assert make_optimizer(tmp_path, rows, max_accuracy_drop=1.0).candidates[1].gate == "passed"
    assert make_optimizer(tmp_path, rows, max_accuracy_drop=0.5).candidates[1].gate.startswith("failed")


def test_pruning_asked_for_prefers_a_pruned_file_that_passes(tmp_path):
    opt = make_optimizer(
        tmp_path,
        [
            row("fp32", 0.98, 2.7),
            row("int8", 0.98, 1.0),
            row("int8", 0.975, 1.05, qat=True, sparsity=0.5),
        ],
    )
    chosen, why = opt.choose("tflite", pinned="int8", prefer_pruned=True)
    assert chosen.name == "int8-qat-pruned50" and "the precision set for this build" in why


def test_latencies_within_noise_go_to_the_smaller_file(tmp_path):
    opt = make_optimizer(tmp_path, [row("fp32", 0.98, 1.72), row("int8", 0.976, 1.95)])
    chosen, why = opt.choose("tflite", pinned=None, prefer_pruned=False)
    assert chosen.name == "int8" and "smallest" in why
    opt = make_optimizer(tmp_path, [row("fp32", 0.98, 1.0), row("int8", 0.976, 1.95)])
    assert opt.choose("tflite", pinned=None, prefer_pruned=False)[0].name == "fp32"


def test_a_latency_budget_keeps_only_the_files_that_meet_it(tmp_path):
    rows = [row("fp32", 0.98, 2.7), row("fp16", 0.98, 2.6), row("int8", 0.976, 1.4),
            row("int8", 0.95, 0.9, qat=True)]  # the fastest fails the accuracy gate
    # Without a budget, the tie rule may take a smaller file up to 15% slower; with one, only
    # files at most that slow count, and the fastest of them that passes the gate is deployed.
    chosen, why = make_optimizer(tmp_path, rows, max_latency_ms=2.0).choose("tflite", pinned=None, prefer_pruned=False)
    assert chosen.name == "int8" and "within the 2 ms p50 budget" in why and "fp32 2.70 ms" in why
    # Nothing within the gate meets it: the fastest within the gate, and the report says so loudly.
    chosen, why = make_optimizer(tmp_path, rows, max_latency_ms=1.0).choose("tflite", pinned=None, prefer_pruned=False)
    assert chosen.name == "int8" and why.startswith("NO file within the accuracy gate meets the 1 ms p50 budget")
    # A pinned precision is not overridden by the budget; the report says whether it meets it.
    chosen, why = make_optimizer(tmp_path, rows, max_latency_ms=2.0).choose("tflite", pinned="fp16", prefer_pruned=False)
    assert chosen.name == "fp16" and "OVER the 2 ms budget" in why


def test_candidates_are_named_from_their_fields_and_chosen_by_them(tmp_path):
    from edgetl.compiler.spec.modes import Precision

    c = Candidate("tflite", "int8", Path("x"), "test", qat=True, sparsity=0.503, clusters=16)
    assert (c.name, c.kind, c.pruned, c.precision) == ("int8-qat-pruned50-clustered16", "int8-qat", True, Precision.INT8)
    assert (Candidate("onnx", "fp16", Path("x"), "test").name, Candidate("tflite", "fp32", Path("x"), "test", sparsity=0.0).name) == ("fp16", "fp32-pruned0")
    rows = [row("fp32", 0.96, 2.5, sparsity=0.5, clusters=16), row("fp32", 0.98, 2.7), row("fp16", 0.98, 2.0),
            row("fp16", 0.975, 1.9, sparsity=0.5, clusters=16)]
    opt = make_optimizer(tmp_path, rows)
    assert opt.float_val_accuracy("tflite") == 0.98  # the unpruned float file, wherever it is in the list
    assert opt.candidates[0].gate.startswith("failed") and opt.has("fp16") and not opt.has("int8")
    # A pruned, clustered file counts as the precision it computes in when that is pinned.
    chosen, why = opt.choose("tflite", pinned="fp16", prefer_pruned=True)
    assert chosen.name == "fp16-pruned50-clustered16" and "the precision set for this build" in why
    assert opt.choose("tflite", pinned="fp16", prefer_pruned=False)[0].name == "fp16-pruned50-clustered16"  # faster


def test_under_cross_validation_the_gate_does_not_call_the_training_images_val(tmp_path):
    """Cross-validated compiles carve no val split: the gate scores the training images, and its
    verdict must say so rather than "val accuracy"."""
    from types import SimpleNamespace

    opt = make_optimizer(tmp_path, [row("fp32", 0.98, 2.7), row("int8", 0.90, 1.0)])
    assert "val accuracy" in opt.candidates[1].gate  # a val split (the default here)
    opt.images = SimpleNamespace(held_out={"val": False})  # what a cross-validated compile holds
    opt.apply_gate()
    gate = opt.candidates[1].gate
    assert gate.startswith("failed") and "val accuracy" not in gate and "training images" in gate
