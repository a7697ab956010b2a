"""Choosing by k-fold cross-validation on small data.

On a few hundred images a carved validation split is a few dozen images: one image moves its
accuracy by two or three points, so "the best epoch on val" mostly picks noise. Below a size
threshold (CompileConfig.cv_below) edgetl therefore makes its choices by stratified k-fold
cross-validation on all labelled training images and refits the deployed model once on all
of them with the chosen settings; the estimate it reports is the pooled out-of-fold accuracy,
with its Wilson interval over every labelled image.

What is chosen, for each model trained (teacher, student): the frozen-backbone probe, or
fine-tuning (distillation for the student) from it for e epochs, e = 1..E. One training run
per fold gives the held-out accuracy after every epoch (epoch 0 being the probe itself), so the
whole curve costs k runs, not k per candidate. With several recipes (CompileConfig.search: two
learning rates and two depths for fine-tuning, two distillation settings) each has its curve, k runs each, and the most
accurate (recipe, epochs) pair is the candidate. The probe is replaced only when it beats it
beyond noise: the paired 95% interval of their out-of-fold difference
(compiler/evaluation/stats.py) excludes zero. Against the point estimate (the most accurate
row, by any margin) on flowers12 at 5, 10 and 20 images per class, three seeds each
(benchmarks/selection_rule.py, README "Small data"), the rule made no difference beyond noise
on test, and the point estimate's picks did not repeat from one run to the next: a gain within
noise out of fold is not one a user can count on, and the rule spends no training on it.
The estimate of a trained winner is the best of several curves' points, so it leans optimistic
by the search itself; the rule's margin over the probe, and a test/ folder when given, are the
checks on that.

This module holds the fold logic and the choice; it imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from edgetl.compiler.evaluation.stats import Accuracy, paired_difference


def stratified_folds(labels, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """k disjoint held-out folds covering every index once, each class spread evenly, seeded.

    A class with fewer than k images lands in fewer folds; k is lowered to the smallest class
    size when that is below k (a fold must leave each class in its training part), and never
    below 2.
    """
    y = np.asarray(labels)
    if len(y) < 2:
        raise ValueError("cross-validation needs at least two images")
    counts = np.bincount(y) if len(y) else np.array([])
    smallest = int(counts[counts > 0].min())
    k = max(2, min(k, smallest)) if smallest >= 2 else 2
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), np.int64)
    offset = 0
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        # Deal the class round-robin, starting where the previous class stopped, so fold sizes
        # stay within one image of each other overall.
        fold_of[idx] = (offset + np.arange(len(idx))) % k
        offset = (offset + len(idx)) % k
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(k)]


@dataclasses.dataclass
class CurveChoice:
    """The out-of-fold curves of the training recipes tried and what was chosen from them."""

    accuracy_by_epoch: list[float]  # the chosen recipe's curve; index 0: the probe (no fine-tuning)
    epochs: int  # chosen; 0 means the probe is kept
    estimate: Accuracy  # pooled out-of-fold accuracy at the chosen epoch
    probe: Accuracy
    versus_probe: dict  # paired difference of the chosen recipe minus the probe
    folds: int
    oof_pred: list[int] | None = None  # out-of-fold predicted class of every image at the chosen epoch
    recipe: str | None = None  # the recipe trained (e.g. "learning rate 0.0003"); None: the probe kept, or one recipe tried
    recipe_index: int = 0  # its place in the recipes tried (0 when the probe is kept)
    recipes: dict[str, list[float]] | None = None  # every recipe's curve, when more than one was tried

    @property
    def probe_kept(self) -> bool:
        return self.epochs == 0

    def to_json(self) -> dict:
        out = {
            "method": f"{self.folds}-fold cross-validation",
            "accuracy_by_epoch": [round(a, 4) for a in self.accuracy_by_epoch],
            "chosen_epochs": self.epochs,
            "probe_kept": self.probe_kept,
            "estimate": self.estimate.to_json(),
            "probe": self.probe.to_json(),
            "versus_probe": self.versus_probe,
            "oof_pred": self.oof_pred,
        }
        if self.recipes:
            out["recipe"] = self.recipe
            out["recipes"] = {name: [round(a, 4) for a in curve] for name, curve in self.recipes.items()}
        return out


def choose_epochs(oof_correct: np.ndarray, folds: int, oof_pred: np.ndarray | None = None,
                  gain_beyond_noise: bool = True) -> CurveChoice:
    """oof_correct: (epochs + 1, images) booleans, row e = out-of-fold correctness after e epochs;
    oof_pred: the predicted classes, same shape (kept for the chosen row: the estimate's
    confusion matrix). One recipe: `choose_recipe` with a single curve."""
    pred = None if oof_pred is None else np.asarray(oof_pred)[None]
    return choose_recipe(np.asarray(oof_correct, bool)[None], folds, pred, gain_beyond_noise=gain_beyond_noise)


def choose_recipe(oof_correct: np.ndarray, folds: int, oof_pred: np.ndarray | None = None,
                  names: list[str] | None = None, gain_beyond_noise: bool = True) -> CurveChoice:
    """oof_correct: (recipes, epochs + 1, images) booleans, [r, e] = out-of-fold correctness after
    e epochs of recipe r (row 0 of every recipe is the same probe); oof_pred: the predicted
    classes, same shape.

    The most accurate (recipe, epochs) pair wins (on ties the earlier recipe, i.e. the default
    first, and the fewest epochs), and it replaces the probe only when its paired difference
    from the probe is significant; otherwise the probe is kept. gain_beyond_noise=False takes
    the most accurate pair whatever the noise: the rule's ablation (benchmarks/selection_rule.py),
    not a compile setting.
    """
    correct = np.asarray(oof_correct, bool)
    if correct.ndim != 3:
        raise ValueError("oof_correct must be (recipes, epochs + 1, images)")
    recipes, _, n = correct.shape
    names = list(names) if names is not None else [f"recipe {r}" for r in range(recipes)]
    counts = correct.sum(2)  # (recipes, epochs + 1)
    # Row-major argmax: the first recipe, then the fewest epochs, among the most accurate.
    best_recipe, best_epochs = (int(i) for i in np.unravel_index(int(np.argmax(counts)), counts.shape))
    probe = correct[0, 0]
    diff = paired_difference(correct[best_recipe, best_epochs].tolist(), probe.tolist())
    epochs = best_epochs
    if best_epochs and gain_beyond_noise and not (diff.significant and diff.difference > 0):
        epochs = 0
    recipe = best_recipe if epochs else 0
    trained = f"{best_epochs} epochs of training" + (f" ({names[best_recipe]})" if recipes > 1 else "")
    return CurveChoice(
        accuracy_by_epoch=(counts[recipe] / max(n, 1)).tolist(),
        epochs=epochs,
        estimate=Accuracy(int(counts[recipe, epochs]), n),
        probe=Accuracy(int(counts[0, 0]), n),
        versus_probe=diff.to_json() | {"best_epochs": best_epochs, "verdict": diff.verdict(trained, "the probe")}
        | ({"best_recipe": names[best_recipe]} if recipes > 1 else {}),
        folds=folds,
        oof_pred=None if oof_pred is None else [int(v) for v in np.asarray(oof_pred)[recipe, epochs]],
        recipe=names[recipe] if recipes > 1 and epochs else None,
        recipe_index=recipe,
        recipes={name: (counts[r] / max(n, 1)).tolist() for r, name in enumerate(names)} if recipes > 1 else None,
    )
