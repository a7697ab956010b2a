"""The accuracy gate and the choice among candidates, on candidates with known figures."""

from __future__ import annotations

from pathlib import Path

from edgetl.compiler.spec.config import CompileConfig
from edgetl.compiler.compression.optimize import Candidate, Optimizer


def make_optimizer(tmp_path, rows, **config):
    """An Optimizer holding fake measured candidates: (name, format, val accuracy, p50 ms, sparsity)."""
    opt = Optimizer(
        float_model=None, teacher_model=None, train_views=None, images=None, size=32, out=tmp_path, threads=1,
        config=CompileConfig(data=tmp_path, out=tmp_path, **config),
    )
    for name, fmt, val, p50, sparsity in rows:
        path = tmp_path / f"model.{name}.{fmt}"
        path.write_bytes(b"x" * (1000 if "fp32" in name else 300))
        opt.candidates.append(Candidate(name, fmt, name.split("-")[0], Path(path), "test", sparsity, val, None, p50))
    opt.apply_gate()
    return opt


def test_a_broken_calibration_is_rejected_and_the_fastest_good_file_deployed(tmp_path):
    opt = make_optimizer(
        tmp_path,
        [
            ("fp32", "tflite", 0.98, 2.7, None),
            ("fp16", "tflite", 0.98, 2.7, None),
            ("dynamic", "tflite", 0.975, 9.5, None),
            ("int8", "tflite", 0.083, 1.0, None),  # calibrated on black images: chance accuracy
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
        [("fp32", "tflite", 0.98, 2.7, None), ("int8", "tflite", 0.95, 1.0, None), ("int8-qat", "tflite", 0.978, 1.0, None)],
    )
    chosen, why = opt.choose("tflite", pinned="int8", prefer_pruned=False)
    assert chosen.name == "int8-qat"
    assert "int8 was asked for" in why and "failed" in why


def test_the_gate_is_measured_in_points_of_validation_accuracy(tmp_path):
    rows = [("fp32", "tflite", 0.98, 2.7, None), ("int8", "tflite", 0.972, 1.0, None)]
    assert make_optimizer(tmp_path, rows, max_accuracy_drop=1.0).candidates[1].gate == "passed"
    assert make_optimizer(tmp_path, rows, max_accuracy_drop=0.5).candidates[1].gate.startswith("failed")


def test_pruning_asked_for_prefers_a_pruned_file_that_passes(tmp_path):
    opt = make_optimizer(
        tmp_path,
        [
            ("fp32", "tflite", 0.98, 2.7, None),
            ("int8", "tflite", 0.98, 1.0, None),
            ("int8-qat-pruned50", "tflite", 0.975, 1.05, 0.5),
        ],
    )
    chosen, why = opt.choose("tflite", pinned="int8", prefer_pruned=True)
    assert chosen.name == "int8-qat-pruned50" and "as asked for" in why


def test_latencies_within_noise_go_to_the_smaller_file(tmp_path):
    opt = make_optimizer(tmp_path, [("fp32", "tflite", 0.98, 1.72, None), ("int8", "tflite", 0.976, 1.95, None)])
    chosen, why = opt.choose("tflite", pinned=None, prefer_pruned=False)
    assert chosen.name == "int8" and "smallest" in why
    opt = make_optimizer(tmp_path, [("fp32", "tflite", 0.98, 1.0, None), ("int8", "tflite", 0.976, 1.95, None)])
    assert opt.choose("tflite", pinned=None, prefer_pruned=False)[0].name == "fp32"


def test_a_latency_budget_keeps_only_the_files_that_meet_it(tmp_path):
    rows = [("fp32", "tflite", 0.98, 2.7, None), ("fp16", "tflite", 0.98, 2.6, None), ("int8", "tflite", 0.976, 1.4, None),
            ("int8-qat", "tflite", 0.95, 0.9, None)]  # the fastest fails the accuracy gate
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
