"""Camera corruptions: deterministic for a seed, shape, dtype and range kept, and each one
actually changes the image (more at a higher severity, for the kinds with a monotone effect)."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.compiler.data.corruptions import CORRUPTIONS, SEVERITIES, apply_steps, corrupt, disk_kernel, motion_kernels


def photos(n=4, size=48, seed=0):
    """Smooth gradients with edges and full-range pixels: something for blur and JPEG to act on."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([xx, yy, (xx + yy) / 2], -1)[None] * 255
    squares = (((np.mgrid[0:size, 0:size] // 8).sum(0) % 2) * 60)[None, :, :, None]
    x = base + squares + rng.normal(0, 5, (n, size, size, 3))
    x[:, 0, 0], x[:, -1, -1] = 0, 255
    return np.clip(x, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_each_corruption_is_deterministic_and_keeps_shape_dtype_and_range(kind):
    x = photos()
    before = x.copy()
    for severity in (1, 5):
        a = corrupt(x, kind, severity, seed=3)
        b = corrupt(x, kind, severity, seed=3)
        assert a.shape == x.shape and a.dtype == np.uint8
        assert a.min() >= 0 and a.max() <= 255
        assert np.array_equal(a, b), f"{kind} {severity}: same seed, different bytes"
        assert not np.array_equal(a, x), f"{kind} {severity} left the images unchanged"
    assert np.array_equal(x, before)  # the input is never modified
    single = corrupt(x[0], kind, 3, seed=3)
    assert single.shape == x[0].shape and single.dtype == np.uint8


@pytest.mark.parametrize("kind", ["gaussian_noise", "shot_noise", "motion_blur", "colour_cast"])
def test_random_corruptions_depend_on_the_seed(kind):
    x = photos()
    assert not np.array_equal(corrupt(x, kind, 3, seed=0), corrupt(x, kind, 3, seed=1))


@pytest.mark.parametrize("kind", ["gaussian_noise", "defocus_blur", "brightness", "contrast", "colour_cast", "jpeg", "pixelate"])
def test_heavier_severity_changes_the_image_more(kind):
    x = photos().astype(np.float64)
    if kind == "pixelate":  # the checkerboard of photos() aliases with some block sizes; noise cannot
        x = np.random.default_rng(0).integers(0, 256, x.shape).astype(np.float64)
    change = [np.abs(corrupt(x.astype(np.uint8), kind, s, seed=0) - x).mean() for s in (1, 5)]
    assert change[1] > change[0], f"{kind}: severity 5 changed less than 1 ({change})"


def test_blur_kernels_sum_to_one_and_keep_a_flat_image_flat():
    for kernel in (disk_kernel(4.0), *motion_kernels(9.0, np.array([0.0, 1.0, 2.5]))):
        assert kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
        assert abs(float(kernel.sum()) - 1.0) < 1e-5
    flat = np.full((2, 40, 40, 3), 117, np.uint8)
    for kind in ("defocus_blur", "motion_blur"):
        assert np.array_equal(corrupt(flat, kind, 5), flat)


def test_blur_keeps_a_point_where_it_was():
    point = np.zeros((1, 33, 33, 3), np.uint8)
    point[0, 16, 16] = 255
    blurred = corrupt(point, "defocus_blur", 2)[0, :, :, 0]
    assert np.unravel_index(blurred.argmax(), blurred.shape) == (16, 16)


def test_bad_arguments_are_refused():
    x = photos(1)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "jpeg", 6)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(x.astype(np.float32), "jpeg", 1)
    assert SEVERITIES == (1, 2, 3, 4, 5)


def test_a_camera_chain_is_deterministic():
    steps = [("defocus_blur", 3.0), ("colour_cast", 0.2), ("gaussian_noise", 0.05), ("jpeg", 15)]
    x = photos()
    a, b = apply_steps(x, steps, seed=1), apply_steps(x, steps, seed=1)
    assert np.array_equal(a, b) and a.dtype == np.uint8 and a.shape == x.shape
    assert not np.array_equal(a, apply_steps(x, steps, seed=2))
