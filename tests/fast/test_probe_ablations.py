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
        kernel, bias, C = A.fit_variant(variant, f, y, 3, seed=0)
        assert kernel.shape == (8, 3) and C in probe.C_GRID
        assert np.mean((f @ kernel + bias).argmax(1) == y) == 1.0, variant
