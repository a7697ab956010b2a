"""benchmarks/probe_ablations.py changes one choice of the probe at a time, and only that one."""

from __future__ import annotations

import numpy as np

from edgetl.benchmarks import probe_ablations as A
from edgetl.compiler.training import probe


def test_int8_head_rounds_each_class_column_to_127_steps_of_its_own_scale():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(16, 3)) * np.array([1.0, 1e-3, 50.0])
    rounded = A.int8_head(kernel)
    scale = np.abs(kernel).max(0) / 127
    assert np.allclose(np.abs(rounded).max(0), np.abs(kernel).max(0))
    assert np.all(np.abs(rounded - kernel) <= scale / 2 + 1e-12)
    assert len(np.unique(np.round(rounded[:, 0] / scale[0]))) <= 255


def test_plain_scaling_drops_the_floor_inside_the_context_only():
    x = np.stack([np.linspace(0, 1, 50), np.full(50, 2.0) + np.linspace(0, 1e-3, 50)], axis=1)
    floored = probe._Standardiser(x).scale
    with A.plain_scaling():
        plain = probe._Standardiser(x).scale
    assert probe._Standardiser(x).scale[1] == floored[1] > plain[1]  # restored afterwards
    assert np.isclose(plain[1], x[:, 1].std()) and np.isclose(floored[1], np.median(x.std(0)))


def test_each_variant_fits_a_probe_that_separates_easy_features():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 10)
    f = rng.normal(size=(30, 8)) + 4 * np.eye(3, 8)[y]
    for variant in A.VARIANTS:
        kernel, bias, C, _ = A.fit_variant(variant, f, y, 3, seed=0, final_width=5)
        assert kernel.shape == (8, 3) and C in probe.C_GRID
        assert np.mean((f @ kernel + bias).argmax(1) == y) == 1.0, variant


def test_the_soft_label_head_is_the_probe_when_the_targets_are_the_labels():
    """No views: the edgetl probe at that C. Views whose teacher says exactly the label: the
    probe on the original and view features together, whatever alpha."""
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), 8)
    f = rng.normal(size=(24, 6)) + 3 * np.eye(3, 6)[y]
    reference = probe.fit_probe_at(f, y, 3, 1.0)
    kernel, bias = A.soft_label_head(f, y, np.zeros((0, 24, 6)), np.zeros((0, 24, 3)), 3, 1.0, 1.0, 0.5)
    assert np.allclose(kernel, reference.kernel, atol=1e-3) and np.allclose(bias, reference.bias, atol=1e-3)
    views = f[None] + rng.normal(scale=0.1, size=(2, 24, 6))
    labels = np.broadcast_to(np.eye(3)[y], (2, 24, 3))
    together = probe.fit_probe_at(np.concatenate([f, *views]), np.tile(y, 3), 3, 1.0)
    for alpha in (0.5, 1.0):
        kernel, bias = A.soft_label_head(f, y, views, labels, 3, 1.0, 1.0, alpha)
        assert np.allclose(kernel, together.kernel, atol=1e-3) and np.allclose(bias, together.bias, atol=1e-3)


def test_a_missing_data_folder_is_one_line_and_exit_1(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as exited:
        A.main(["--data", str(tmp_path / "missing"), "--work", str(tmp_path / "work"), "--probe-views"])
    assert str(exited.value).startswith("error: dataset folder") and "\n" not in str(exited.value)


def test_holdout_refit_carves_a_stratified_share_and_scores_both_fits(capsys):
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(3), 20)
    f = rng.normal(size=(60, 6)) + 3 * np.eye(3, 6)[y]
    y_test = np.repeat(np.arange(3), 5)
    f_test = rng.normal(size=(15, 6)) + 3 * np.eye(3, 6)[y_test]
    result = A.holdout_refit(f, y, f_test, y_test, 3, final_width=4, carvings=2)
    assert [r["train_images"] for r in result["carvings"]] == [51, 51]  # 17 of each class's 20
    assert result["all"]["accuracy"] == 1.0 and 0 < result["all"]["log_loss"] < 1
    assert result["refit_better"] + result["refit_worse"] <= 2
    assert "more accurate on" in capsys.readouterr().out
