"""Channel-pruned students (models/efficientnet_lite.py, `efficientnet_lite0_slim*`).

Built with random weights (no package needed), at a small input size: the narrowing is a
per-block weight operation and does not depend on the pixels' size.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.models import FEATURES_LAYER, create_model, get_config
from edgetl.models import efficientnet_lite as lite

SIZE = 64


def _features(model, x):
    from edgetl._compat import keras

    return keras.Model(model.input, model.get_layer(FEATURES_LAYER).output).predict(x, verbose=0)


def test_inner_channels_are_the_kept_fraction_in_multiples_of_8():
    assert lite._inner_channels(16, 6, 0.5) == 48
    assert lite._inner_channels(40, 6, 0.75) == 176  # 180 -> the nearest multiple of 8
    assert lite._inner_channels(32, 1, 0.5) == 32  # no expansion: nothing private to narrow
    assert lite._inner_channels(4, 6, 0.1) == 8  # never below one vector
    assert lite._inner_channels(16, 6, 1.0) == 96


def test_slim_models_are_narrower_only_inside_the_blocks():
    full = create_model("efficientnet_lite0", weights=None, num_classes=5, input_size=SIZE)
    slim = create_model("efficientnet_lite0_slim50", weights=None, num_classes=5, input_size=SIZE)
    assert [layer.name for layer in slim.layers] == [layer.name for layer in full.layers]
    for a, b in zip(full.layers, slim.layers):
        if b.name.endswith(("_expand_conv", "_dwconv", "_project_conv")) and not b.name.startswith("block1a"):
            assert b.get_weights()[0].size * 2 == a.get_weights()[0].size, b.name
        elif not b.name.endswith(("_expand_bn", "_dw_bn")):
            assert [w.shape for w in a.get_weights()] == [w.shape for w in b.get_weights()], b.name
    assert get_config("efficientnet_lite0_slim50").batch_norm_from_data


def test_narrowing_removes_the_channels_that_carry_nothing_and_keeps_each_block_s_output():
    """In every block, half the inner channels are made constant (depthwise batch norm scale 0,
    shift 3: ReLU6 gives 3 whatever the image). They carry no information, so the ranking must
    drop exactly those, and their constant contribution must move into the projection's batch
    norm: the slim network then computes the full one's features exactly."""
    rng = np.random.default_rng(0)
    full = create_model("efficientnet_lite0", weights=None, num_classes=5, input_size=SIZE)
    slim = create_model("efficientnet_lite0_slim50", weights=None, num_classes=5, input_size=SIZE)
    constant = {}
    for layer in full.layers:
        if layer.name.endswith("_dw_bn") and not layer.name.startswith("block1a"):
            gamma, beta, mean, var = layer.get_weights()
            n = len(gamma)
            dead = rng.permutation(n)[: n // 2]
            gamma = rng.uniform(0.5, 1.5, n).astype(np.float32)
            beta = rng.uniform(-0.5, 0.5, n).astype(np.float32)
            gamma[dead], beta[dead] = 0.0, 3.0
            layer.set_weights([gamma, beta, mean, var])
            constant[layer.name[: -len("_dw_bn")]] = np.setdiff1d(np.arange(n), dead)
    lite._slim_into(full, slim, include_head=False)

    plan = lite._slim_plan(full, slim)
    assert plan.keys() == constant.keys()
    for block, kept in plan.items():
        np.testing.assert_array_equal(kept, constant[block])
    x = rng.uniform(0, 255, (4, SIZE, SIZE, 3)).astype(np.float32)
    expected = _features(full, x)
    np.testing.assert_allclose(_features(slim, x), expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_without_the_mean_fold_the_narrowed_block_would_drift():
    """The check above can fail: the same narrowing with the mean correction switched off
    changes the features (so the fold, not luck, made them equal)."""
    rng = np.random.default_rng(1)
    full = create_model("efficientnet_lite0", weights=None, num_classes=5, input_size=SIZE)
    slim = create_model("efficientnet_lite0_slim50", weights=None, num_classes=5, input_size=SIZE)
    for layer in full.layers:
        if layer.name.endswith("_dw_bn") and not layer.name.startswith("block1a"):
            gamma, beta, mean, var = layer.get_weights()
            n = len(gamma)
            gamma = np.where(np.arange(n) % 2 == 0, 0.0, 1.0).astype(np.float32)
            beta = np.where(np.arange(n) % 2 == 0, 3.0, 0.2).astype(np.float32)
            layer.set_weights([gamma, beta, mean, var])
    original = lite._relu6_moments
    try:
        lite._relu6_moments = lambda g, b: (original(g, b)[0] * 0.0, original(g, b)[1])
        lite._slim_into(full, slim, include_head=False)
    finally:
        lite._relu6_moments = original
    x = rng.uniform(0, 255, (4, SIZE, SIZE, 3)).astype(np.float32)
    expected = _features(full, x)
    assert np.abs(_features(slim, x) - expected).max() > 0.05 * np.abs(expected).max()


def test_relu6_moments_match_sampling():
    gamma, beta = np.array([1.0, 0.5, 0.0, 2.0]), np.array([0.0, 5.5, 3.0, -1.0])
    mean, var = lite._relu6_moments(gamma, beta)
    z = np.random.default_rng(0).standard_normal(400_000)
    a = np.clip(np.outer(gamma, z) + beta[:, None], 0, 6)
    np.testing.assert_allclose(mean, a.mean(1), atol=5e-3)
    np.testing.assert_allclose(var, a.var(1), atol=5e-3)
    assert var[2] == pytest.approx(0.0, abs=1e-9) and mean[2] == pytest.approx(3.0)


def test_the_student_stage_re_estimates_batch_norm_on_the_training_images():
    """After `_batch_norm_from`, the first batch norm's moving mean is its input's mean over the
    training images (plain AdaBN), and nothing but moving statistics changed."""
    from types import SimpleNamespace

    from edgetl._compat import keras
    from edgetl.compiler.stages.student import _batch_norm_from

    model = create_model("efficientnet_lite0_slim50", weights=None, num_classes=5, input_size=SIZE)
    x = np.random.default_rng(2).uniform(0, 255, (24, SIZE, SIZE, 3)).astype(np.float32)
    before = {w.name: w.numpy().copy() for w in model.weights}
    _batch_norm_from(model, x, SimpleNamespace(batch_size=8, seed=0), "student")
    stem_out = keras.Model(model.input, model.get_layer("stem_conv").output).predict(x, verbose=0)
    np.testing.assert_allclose(model.get_layer("stem_bn").moving_mean.numpy(), stem_out.mean((0, 1, 2)), rtol=1e-3, atol=1e-4)
    changed = {w.name for w in model.weights if not np.array_equal(w.numpy(), before[w.name])}
    assert changed and all("moving_" in name for name in changed)


def test_distillation_of_a_slim_student_does_not_stop_at_the_default_patience():
    from types import SimpleNamespace

    from edgetl.compiler.stages.student import _student_kwargs

    config = SimpleNamespace(patience=3, distill_epochs=12, distill_learning_rate=3e-4, batch_size=32, temperature=2.0, seed=0)
    assert _student_kwargs(config, get_config("efficientnet_lite0"))["patience"] == 3
    slim = _student_kwargs(config, get_config("efficientnet_lite0_slim50"))
    assert slim["patience"] == 12 and slim["unfreeze_from"] == "stem_conv"
    config.patience = 20  # a larger --patience still wins
    assert _student_kwargs(config, get_config("efficientnet_lite0_slim75"))["patience"] == 20


def test_a_slim_student_under_held_out_selection_gets_a_note_naming_selection_cv():
    from edgetl.compiler.stages.student import selection_note

    note = selection_note(get_config("efficientnet_lite0_slim75"), "holdout", 108)
    assert "108 val images" in note and "--selection cv" in note
    assert selection_note(get_config("efficientnet_lite0_slim75"), "cv", 0) is None
    assert selection_note(get_config("efficientnet_lite0"), "holdout", 108) is None
    assert selection_note(None, "holdout", 108) is None
