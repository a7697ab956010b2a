"""Honest figures and small-data selection: intervals, folds, the probe, the epoch choice. No TensorFlow
(KeepBest, the held-out epoch choice inside Keras training, is tested in tests/test_finetune.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from edgetl.compiler.training.crossval import choose_epochs, choose_recipe, fold_choices, fold_count, held_fold_of, stratified_folds
from edgetl.compiler.training.probe import fit_probe, fit_probe_at
from edgetl.compiler.evaluation.stats import Accuracy, accuracy_span, describe_accuracy, paired_difference, points_span, wilson_interval


@pytest.mark.parametrize(
    "correct, n, low, high",
    [
        # Published values: Newcombe (1998), Table I, and Brown, Cai and DasGupta (2001).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        (10, 10, 0.7225, 1.0),
    ],
)
def test_wilson_interval_matches_published_values(correct, n, low, high):
    got = wilson_interval(correct, n)
    assert got == pytest.approx((low, high), abs=5e-4)


def test_wilson_interval_is_inside_unit_range_and_narrows_with_n():
    for n in (1, 5, 37, 240, 10_000):
        for k in sorted({0, n // 3, n}):
            low, high = wilson_interval(k, n)
            assert 0.0 <= low <= k / n <= high <= 1.0
    assert np.diff([np.subtract(*wilson_interval(n * 9 // 10, n)[::-1]) for n in (10, 100, 1000)]).max() < 0
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_accuracy_describes_itself_with_interval_and_n():
    text = describe_accuracy(0.975, 240)
    assert text.startswith("97.5% (95% CI ") and text.endswith("n=240)")
    assert Accuracy(234, 240).to_json()["ci95"] == list(wilson_interval(234, 240))


def test_table_cells_show_the_figure_and_its_interval():
    # The benchmarks' table cells: one formatter each, so a fix reaches every script.
    assert accuracy_span(0.9583, wilson_interval(230, 240)) == "95.8% (92.5%-97.7%)"
    a = [True] * 48 + [False] * 2
    b = [True] * 36 + [False] * 12 + [True] * 2
    d = paired_difference(a, b)
    assert points_span(d.difference, (d.low, d.high)) == "+20.0 pt (+5.7 to +34.0)"
    assert points_span(-0.004, (-0.033, 0.024)) == "-0.4 pt (-3.3 to +2.4)"


def test_paired_difference_matches_newcombe_example():
    # Newcombe (1998) Table II, example (a): 36 both, 12 A only, 2 B only, 0 neither: method 10 gives
    # +0.0569 to +0.3404 for the difference 0.2.
    a = [True] * 48 + [False] * 2
    b = [True] * 36 + [False] * 12 + [True] * 2
    d = paired_difference(a, b)
    assert d.difference == pytest.approx(0.2)
    assert (d.low, d.high) == pytest.approx((0.0569, 0.3404), abs=5e-4)
    assert d.significant and "better" in d.verdict("A", "B")


def test_one_image_of_a_hundred_is_noise():
    a = [True] * 95 + [False] * 5
    b = [True] * 94 + [False] * 6
    d = paired_difference(a, b)
    assert not d.significant and "within noise" in d.verdict("A", "B")


@pytest.mark.parametrize("k", [2, 3, 5])
def test_folds_are_disjoint_cover_everything_stratified_and_seeded(k):
    labels = np.repeat(np.arange(4), [10, 23, 7, 40])
    folds = stratified_folds(labels, k, seed=3)
    assert len(folds) == k
    held = np.concatenate([h for _, h in folds])
    assert sorted(held.tolist()) == list(range(len(labels)))  # every image held out exactly once
    for train, h in folds:
        assert not set(train) & set(h) and len(train) + len(h) == len(labels)
        # Each class's share of a held-out fold is within one image of its share overall.
        for cls, total in enumerate(np.bincount(labels)):
            assert abs((labels[h] == cls).sum() - total / k) <= 1
    again = stratified_folds(labels, k, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    other = stratified_folds(labels, k, seed=4)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, other))


def test_folds_shrink_to_the_smallest_class():
    labels = np.array([0] * 3 + [1] * 30)
    folds = stratified_folds(labels, 5, seed=0)
    assert len(folds) == 3  # every fold's training part keeps class 0
    assert all((labels[train] == 0).any() for train, _ in folds)
    # What the compile says and reports is what ran (a newcomer's report read "3-fold" over 2 folds).
    for counts, k in (([3, 30], 5), ([2, 9], 3), ([10, 10], 3), ([1, 9], 3)):
        labels = np.repeat(np.arange(len(counts)), counts)
        assert fold_count(labels, k) == len(stratified_folds(labels, k, seed=0)) == max(2, min(k, min(counts)))


def test_epoch_choice_keeps_the_probe_unless_training_is_better_beyond_noise():
    probe_row = np.array([True] * 80 + [False] * 20)
    worse = np.array([True] * 70 + [False] * 30)
    tie = probe_row.copy()
    choice = choose_epochs(np.stack([probe_row, worse, tie]), folds=5)
    assert choice.probe_kept and choice.epochs == 0
    # Two more images right of 100 is noise: the probe stays.
    slightly = np.array([True] * 82 + [False] * 18)
    choice = choose_epochs(np.stack([probe_row, slightly]), folds=5)
    assert choice.probe_kept and choice.versus_probe["best_epochs"] == 1 and not choice.versus_probe["significant"]
    # Ten more, none lost: a real gain; the fewest epochs among the best win.
    better = np.array([True] * 90 + [False] * 10)
    choice = choose_epochs(np.stack([probe_row, worse, better, better]), folds=5)
    assert choice.epochs == 2 and choice.versus_probe["significant"]
    assert choice.estimate.correct == 90 and choice.probe.correct == 80


def test_the_rule_ablation_takes_the_point_estimate_even_within_noise():
    probe_row = np.array([True] * 80 + [False] * 20)
    slightly = np.array([True] * 82 + [False] * 18)
    choice = choose_epochs(np.stack([probe_row, probe_row, slightly]), folds=5, gain_beyond_noise=False)
    assert choice.epochs == 2 and not choice.versus_probe["significant"]
    assert choice.estimate.correct == 82
    # Nothing better than the probe: it is still kept.
    choice = choose_epochs(np.stack([probe_row, probe_row]), folds=5, gain_beyond_noise=False)
    assert choice.probe_kept



def test_recipe_choice_takes_the_best_recipe_and_epochs_and_keeps_the_rule():
    probe_row = np.array([True] * 80 + [False] * 20)
    slightly = np.array([True] * 82 + [False] * 18)
    better = np.array([True] * 90 + [False] * 10)
    names = ["learning rate 0.0001", "learning rate 0.0003"]
    # The second recipe beats the probe beyond noise at 1 epoch; the first never does.
    choice = choose_recipe(np.stack([np.stack([probe_row, slightly, probe_row]),
                                     np.stack([probe_row, better, better])]), folds=3, names=names)
    assert (choice.recipe, choice.recipe_index, choice.epochs) == ("learning rate 0.0003", 1, 1)
    assert choice.estimate.correct == 90 and choice.accuracy_by_epoch == [0.8, 0.9, 0.9]
    assert set(choice.to_json()["recipes"]) == set(names) and choice.to_json()["recipe"] == names[1]
    assert "learning rate 0.0003" in choice.versus_probe["verdict"]
    # A tie between recipes goes to the first (the flags' own values).
    choice = choose_recipe(np.stack([np.stack([probe_row, better]), np.stack([probe_row, better])]), folds=3, names=names)
    assert choice.recipe_index == 0 and choice.recipe == names[0]
    # The best recipe only within noise of the probe: the probe is kept, and no recipe is named.
    choice = choose_recipe(np.stack([np.stack([probe_row, probe_row]), np.stack([probe_row, slightly])]), folds=3, names=names)
    assert choice.probe_kept and choice.recipe is None and choice.recipe_index == 0
    assert choice.versus_probe["best_recipe"] == names[1] and choice.estimate.correct == 80
    # One recipe: the record is choose_epochs' own.
    assert "recipes" not in choose_recipe(np.stack([probe_row, better])[None], folds=3).to_json()


def test_the_recipe_grid_is_searched_only_under_cross_validation():
    from edgetl.compiler.spec.config import SEARCH_DISTILLATION, CompileConfig

    config = CompileConfig(data=Path("d"), out=Path("o"))
    recipes = config.finetune_recipes(cross_validated=True)
    assert [r.learning_rate for r in recipes.values()] == pytest.approx([1e-4, 3e-4, 1e-4])
    assert [r.depth for r in recipes.values()] == ["top", "top", "deeper"]
    assert list(recipes) == ["top, learning rate 0.0001", "top, learning rate 0.0003", "deeper, learning rate 0.0001"]
    # A model with nothing deeper to fine-tune (a student trained from its stem) is searched in rate only.
    assert [r.depth for r in config.finetune_recipes(cross_validated=True, deeper=False).values()] == ["top", "top"]
    assert list(config.distill_recipes(cross_validated=True).values()) == [(2.0, 0.5), SEARCH_DISTILLATION]
    assert len(config.finetune_recipes(cross_validated=False)) == len(config.distill_recipes(cross_validated=False)) == 1
    off = dataclasses.replace(config, search=False)
    assert len(off.finetune_recipes(cross_validated=True)) == len(off.distill_recipes(cross_validated=True)) == 1
    # The flags already at the searched setting: it is tried once.
    same = dataclasses.replace(config, temperature=SEARCH_DISTILLATION[0], alpha=SEARCH_DISTILLATION[1])
    assert list(same.distill_recipes(cross_validated=True).values()) == [SEARCH_DISTILLATION]

def _blobs(n_per_class: int, classes: int, dim: int, seed: int, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, dim)) * 3
    y = np.repeat(np.arange(classes), n_per_class)
    x = centres[y] + rng.normal(0, spread, (len(y), dim)) * 4 + 50  # an offset: weights must absorb it
    return x.astype(np.float32), y


def test_probe_learns_separable_features_and_its_weights_work_on_raw_features():
    x, y = _blobs(30, 4, 16, seed=0, spread=0.3)
    probe = fit_probe(x, y, 4, folds=5, seed=0)
    assert probe.cv_accuracy[probe.C] > 0.95 and probe.oof_probs.shape == (len(y), 4)
    xt, yt = _blobs(30, 4, 16, seed=0, spread=0.3)
    assert np.mean((xt @ probe.kernel + probe.bias).argmax(1) == yt) > 0.95
    assert probe.kernel.shape == (16, 4) and probe.kernel.dtype == np.float32


def test_probe_regularises_more_when_features_are_noise():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (60, 200)).astype(np.float32)
    y = np.repeat(np.arange(3), 20)
    probe = fit_probe(x, y, 3, folds=5, seed=0)
    # Nothing to learn: out-of-fold accuracy stays near chance whatever C is.
    assert max(probe.cv_accuracy.values()) < 0.6
    separable, ys = _blobs(20, 3, 200, seed=2, spread=0.2)
    assert fit_probe(separable, ys, 3, folds=5, seed=0).cv_accuracy[fit_probe(separable, ys, 3).C] > 0.9


def test_probe_handles_two_classes_and_a_class_missing_from_a_fold_part():
    x, y = _blobs(10, 2, 8, seed=3, spread=0.3)
    probe = fit_probe(x, y, 2, folds=5, seed=0)
    assert probe.cv_accuracy[probe.C] > 0.9
    # A fit without class 2 never predicts it.
    at = fit_probe_at(x, y, 3, C=1.0)
    assert (at.predict_proba(x).argmax(1) != 2).all()


def test_probe_weights_survive_int8_per_channel_rounding_despite_near_constant_features():
    """Near-constant features must not blow up the folded weights (an int8 file's per-channel
    scale would then round the informative weights to zero)."""
    x, y = _blobs(10, 4, 64, seed=5, spread=1.0)
    rng = np.random.default_rng(0)
    x[:, :8] = 3.0 + rng.normal(0, 1e-3, (len(y), 8))  # near-constant features, as real backbones have
    probe = fit_probe(x, y, 4, folds=5, seed=0)
    scale = np.abs(probe.kernel).max(0, keepdims=True) / 127
    rounded = np.round(probe.kernel / scale) * scale
    assert np.mean(rounded == 0) < 0.2
    xt, _ = _blobs(10, 4, 64, seed=6, spread=1.0)
    xt[:, :8] = 3.0 + rng.normal(0, 1e-3, (len(xt), 8))
    assert np.mean((xt @ rounded + probe.bias).argmax(1) == (xt @ probe.kernel + probe.bias).argmax(1)) >= 0.95


def _views_of(x, y, views: int, seed: int, informative: bool, spread: float):
    """Augmented views' features: fresh draws around each image's class centre (informative:
    what a crop of the same flower adds) or pure noise carrying the image's label."""
    rng = np.random.default_rng(seed)
    if informative:
        centres = np.stack([x[y == k].mean(0) for k in range(y.max() + 1)])
        return (centres[y][None] + rng.normal(0, spread, (views, *x.shape))).astype(np.float32)
    return (x.mean(0) + rng.normal(0, x.std(), (views, *x.shape))).astype(np.float32)


def test_cross_validation_fits_the_probe_on_views_only_when_they_help():
    x, y = _blobs(4, 3, 40, seed=7, spread=1.5)  # few, noisy images: more draws of each class help
    helpful = fit_probe(x, y, 3, views=_views_of(x, y, 6, 0, True, 6.0), seed=0)
    assert helpful.views == 6 and helpful.log_loss_by_views[6] < helpful.log_loss_by_views[0]
    noise = fit_probe(x, y, 3, views=_views_of(x, y, 6, 1, False, 6.0), seed=0)
    assert noise.views == 0 and noise.log_loss_by_views[6] > noise.log_loss_by_views[0]
    plain = fit_probe(x, y, 3, seed=0)
    # Without views the probe is the one it always was; with rejected views, the same one.
    assert plain.views == 0 and plain.log_loss_by_views.keys() == {0}
    np.testing.assert_allclose(noise.kernel, plain.kernel)



def test_cross_validation_reads_the_pooled_block_only_when_it_helps():
    """The features are the final map's columns, then a pooled block's: the probe reads the
    block's columns only when the out-of-fold cross-entropy says they help, and the columns it
    does not read get zero weights (the model's head layer keeps its shape either way)."""
    x, y = _blobs(6, 3, 24, seed=8, spread=3.0)  # a weak final map: its classes overlap
    sharp, _ = _blobs(6, 3, 8, seed=9, spread=0.2)  # a block whose features separate them
    rng = np.random.default_rng(10)
    helpful = fit_probe(np.concatenate([x, sharp], 1), y, 3, first_columns=24, seed=0)
    assert helpful.columns is None and helpful.log_loss_by_columns[None] < helpful.log_loss_by_columns[24]
    noise = rng.normal(0, 1, (len(y), 8)).astype(np.float32)
    x, y = _blobs(6, 3, 24, seed=8, spread=0.5)
    rejected = fit_probe(np.concatenate([x, noise], 1), y, 3, first_columns=24, seed=0)
    assert rejected.columns == 24 and rejected.log_loss_by_columns[24] <= rejected.log_loss_by_columns[None]
    assert rejected.kernel.shape == (32, 3) and not rejected.kernel[24:].any()
    # Reading the final map alone is exactly the plain probe on those columns.
    plain = fit_probe(x, y, 3, seed=0)
    np.testing.assert_allclose(rejected.kernel[:24], plain.kernel)
    np.testing.assert_allclose(rejected.bias, plain.bias)
    # A fold's refit at the chosen C keeps the chosen columns.
    refit = fit_probe_at(np.concatenate([x, noise], 1), y, 3, rejected.C, columns=rejected.columns)
    assert not refit.kernel[24:].any() and refit.columns == 24
    np.testing.assert_allclose(refit.kernel, rejected.kernel, rtol=1e-5, atol=1e-6)


def _folds_of(n: int, k: int) -> np.ndarray:
    return np.arange(n) % k


def test_held_fold_of_names_the_fold_holding_each_image_out():
    labels = np.repeat(np.arange(3), 10)
    splits = stratified_folds(labels, 3, seed=1)
    fold = held_fold_of(splits, len(labels))
    for f, (_, held) in enumerate(splits):
        assert (fold[held] == f).all()
    with pytest.raises(ValueError, match="every image"):
        held_fold_of(splits[:2], len(labels))


def test_a_gain_each_fold_owes_to_its_own_luck_keeps_the_probe():
    """Each epoch fixes the probe's errors in one fold only: the best point leads beyond noise,
    but an epoch chosen on the other folds gains nothing on the fold left out."""
    n, k = 120, 3
    fold = _folds_of(n, k)
    probe_row = np.ones(n, bool)
    wrong = np.concatenate([np.flatnonzero(fold == f)[:10] for f in range(k)])
    probe_row[wrong] = False  # 90 of 120, 10 wrong in each fold
    rows = [probe_row]
    for f in range(k):
        row = probe_row.copy()
        row[wrong[fold[wrong] == f]] = True
        rows.append(row)
    curve = np.stack(rows)
    old = choose_epochs(curve, folds=k)
    assert old.epochs == 1 and old.versus_probe["significant"]  # without the nested check: trained
    choice = choose_epochs(curve, folds=k, held_fold=fold)
    assert choice.probe_kept and choice.versus_probe["best_epochs"] == 1
    nested = choice.versus_probe["nested"]
    assert nested["difference"] == 0 and not nested["significant"]
    assert [p["epochs"] for p in nested["per_fold"]] == [2, 1, 1]
    assert "chosen on the other folds" in choice.versus_probe["verdict"]


def test_a_gain_that_holds_in_every_fold_is_taken_with_the_nested_estimate():
    n, k = 120, 3
    fold = _folds_of(n, k)
    probe_row = np.ones(n, bool)
    wrong = np.concatenate([np.flatnonzero(fold == f)[:10] for f in range(k)])
    probe_row[wrong] = False
    steady = probe_row.copy()  # epoch 1: 8 of the 10 fixed in every fold
    for f in range(k):
        steady[wrong[fold[wrong] == f][:8]] = True
    lopsided = probe_row.copy()  # epoch 2: all 10 fixed in folds 0 and 1, none in fold 2
    lopsided[wrong[fold[wrong] < 2]] = True
    pred = np.where(np.stack([probe_row, steady, lopsided]), 1, 0)  # class 1 is right everywhere
    choice = choose_epochs(np.stack([probe_row, steady, lopsided]), folds=k, oof_pred=pred, held_fold=fold)
    assert choice.epochs == 1 and choice.versus_probe["nested"]["significant"]
    # Fold 2 is scored at epoch 2, which folds 0 and 1 chose, and gains nothing there.
    assert [p["epochs"] for p in choice.versus_probe["nested"]["per_fold"]] == [1, 1, 2]
    assert choice.estimate.correct == 90 + 8 + 8 and choice.accuracy_by_epoch[1] == (90 + 24) / 120
    assert sum(choice.oof_pred) == choice.estimate.correct  # the report's predictions are the nested ones


def test_each_folds_teacher_is_chosen_without_that_folds_images():
    """The student's fold f is scored through the teacher's fold-f model: the rule picks that
    model from the other folds' scores, so what fold f's images score can never change it."""
    n, k = 120, 3
    fold = _folds_of(n, k)
    probe_row = np.ones(n, bool)
    wrong = np.concatenate([np.flatnonzero(fold == f)[:10] for f in range(k)])
    probe_row[wrong] = False
    trained = probe_row.copy()  # one epoch fixes every error of folds 0 and 1, none of fold 2's
    trained[wrong[fold[wrong] < 2]] = True
    curve = np.stack([probe_row, trained])[None]
    assert choose_recipe(curve, k, held_fold=fold).epochs == 1  # on all images: trained
    # Fold 2, chosen on folds 0 and 1 (each gaining in the other's choice): trained. Folds 0 and
    # 1, chosen on the other two: the gain there comes from one fold's luck, so their probes.
    assert fold_choices(curve, fold) == [(0, 0), (0, 0), (0, 1)]
    rng = np.random.default_rng(0)
    trained_picks = 0
    for _ in range(20):
        correct = rng.random((2, 4, n)) < rng.uniform(0.6, 0.95, (2, 4, 1))
        correct[1, 0] = correct[0, 0]  # every recipe starts from the same probe
        picks = fold_choices(correct, fold, ["a", "b"])
        trained_picks += sum(e > 0 for _, e in picks)
        for f in range(k):
            changed = correct.copy()
            changed[:, :, fold == f] = rng.random((2, 4, int((fold == f).sum()))) < 0.5
            changed[1, 0] = changed[0, 0]
            assert fold_choices(changed, fold, ["a", "b"])[f] == picks[f]
            inner = choose_recipe(correct[:, :, fold != f], k - 1, held_fold=fold[fold != f])
            assert picks[f] == (inner.recipe_index, inner.epochs)
    assert trained_picks >= 10  # the draws exercise trained picks, not only kept probes
