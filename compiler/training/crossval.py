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
whole curve costs k runs, not k per candidate. The probe is replaced only when the best number
of epochs beats it beyond noise: the paired 95% interval of their out-of-fold difference
(compiler/evaluation/stats.py) excludes zero. Against the point estimate (the most accurate
row, by any margin) on flowers12 at 5, 10 and 20 images per class, three seeds each
(benchmarks/selection_rule.py, README "Small data"), the rule made no difference beyond noise
on test, and the point estimate's picks did not repeat from one run to the next: a gain within
noise out of fold is not one a user can count on, and the rule spends no training on it.

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
    """The out-of-fold curve of one training recipe and what was chosen from it."""

    accuracy_by_epoch: list[float]  # index 0: the probe (no fine-tuning)
    epochs: int  # chosen; 0 means the probe is kept
    estimate: Accuracy  # pooled out-of-fold accuracy at the chosen epoch
    probe: Accuracy
    versus_probe: dict  # paired difference of the chosen recipe minus the probe
    folds: int
    oof_pred: list[int] | None = None  # out-of-fold predicted class of every image at the chosen epoch

    @property
    def probe_kept(self) -> bool:
        return self.epochs == 0

    def to_json(self) -> dict:
        return {
            "method": f"{self.folds}-fold cross-validation",
            "accuracy_by_epoch": [round(a, 4) for a in self.accuracy_by_epoch],
            "chosen_epochs": self.epochs,
            "probe_kept": self.probe_kept,
            "estimate": self.estimate.to_json(),
            "probe": self.probe.to_json(),
            "versus_probe": self.versus_probe,
            "oof_pred": self.oof_pred,
        }


def choose_epochs(oof_correct: np.ndarray, folds: int, oof_pred: np.ndarray | None = None,
                  gain_beyond_noise: bool = True) -> CurveChoice:
    """oof_correct: (epochs + 1, images) booleans, row e = out-of-fold correctness after e epochs;
    oof_pred: the predicted classes, same shape (kept for the chosen row: the estimate's
    confusion matrix).

    The most accurate row (fewest epochs on ties) replaces the probe only when its paired
    difference from the probe is significant; otherwise the probe (row 0) is kept.
    gain_beyond_noise=False takes the most accurate row whatever the noise: the rule's ablation
    (benchmarks/selection_rule.py), not a compile setting.
    """
    correct = np.asarray(oof_correct, bool)
    n = correct.shape[1]
    counts = correct.sum(1)
    best = int(np.argmax(counts))  # argmax returns the first, i.e. fewest epochs, on ties
    diff = paired_difference(correct[best].tolist(), correct[0].tolist())
    if best and gain_beyond_noise and not (diff.significant and diff.difference > 0):
        best = 0
    return CurveChoice(
        accuracy_by_epoch=(counts / max(n, 1)).tolist(),
        epochs=best,
        estimate=Accuracy(int(counts[best]), n),
        probe=Accuracy(int(counts[0]), n),
        versus_probe=diff.to_json() | {"best_epochs": int(np.argmax(counts)), "verdict": diff.verdict(f"{int(np.argmax(counts))} epochs of training", "the probe")},
        folds=folds,
        oof_pred=None if oof_pred is None else [int(v) for v in np.asarray(oof_pred)[best]],
    )
