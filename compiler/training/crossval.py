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
The best of several curves' points leans optimistic by the search itself (24 noisy points
by default: 3 fine-tuning recipes of 8 epochs, or 2 distillation settings of 12), while the probe's
figure is honest (its C is chosen inside each fold). So the comparison is also made as it would
be without the search's luck: for each fold, the (recipe, epochs) pair that scores best on the
other folds' images is read on that fold's images: the selection step of nested
cross-validation (Varma & Simon, BMC Bioinformatics 2006; Cawley & Talbot, JMLR 2010) without
its inner training runs, so it costs no training. (It is an approximation: the other folds'
models did train on the fold's images; only their scores, not the fold's, choose.) Training replaces the
probe only when both comparisons put it beyond noise, and the estimate a trained winner reports
is the nested one.

This module holds the fold logic and the choice; it imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from edgetl.compiler.evaluation.stats import Accuracy, paired_difference


def fold_count(labels, k: int) -> int:
    """The folds `stratified_folds` makes of `labels` when asked for k: k, lowered to the smallest
    class's size, and never below 2. What the compile says and reports, as well as what it runs."""
    y = np.asarray(labels)
    counts = np.bincount(y) if len(y) else np.array([0])
    smallest = int(counts[counts > 0].min()) if (counts > 0).any() else 0
    return max(2, min(k, smallest)) if smallest >= 2 else 2


def stratified_folds(labels, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """k disjoint held-out folds covering every index once, each class spread evenly, seeded.

    A class with fewer than k images lands in fewer folds; k is lowered to the smallest class
    size when that is below k (a fold must leave each class in its training part), and never
    below 2.
    """
    y = np.asarray(labels)
    if len(y) < 2:
        raise ValueError("cross-validation needs at least two images")
    k = fold_count(y, k)
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
                  gain_beyond_noise: bool = True, held_fold: np.ndarray | None = None) -> CurveChoice:
    """oof_correct: (epochs + 1, images) booleans, row e = out-of-fold correctness after e epochs;
    oof_pred: the predicted classes, same shape (kept for the chosen row: the estimate's
    confusion matrix). One recipe: `choose_recipe` with a single curve."""
    pred = None if oof_pred is None else np.asarray(oof_pred)[None]
    return choose_recipe(np.asarray(oof_correct, bool)[None], folds, pred, gain_beyond_noise=gain_beyond_noise,
                         held_fold=held_fold)


def _best_pair(counts: np.ndarray) -> tuple[int, int]:
    """Row-major argmax of (recipes, epochs + 1) counts: the first recipe, then the fewest
    epochs, among the most accurate."""
    recipe, epochs = np.unravel_index(int(np.argmax(counts)), counts.shape)
    return int(recipe), int(epochs)


def held_fold_of(splits: list[tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    """For each of n images, the index of the fold that holds it out."""
    fold = np.full(n, -1, np.int64)
    for f, (_, held) in enumerate(splits):
        fold[held] = f
    if (fold < 0).any():
        raise ValueError("the folds must hold out every image once")
    return fold


def nested_choice(correct: np.ndarray, held_fold: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Each image's index into the (recipes, epochs + 1) grid when the pair is chosen without its
    fold: for fold f, the most accurate pair on the other folds' images (same ties as the choice),
    read on f's images. Returns (the flat pair index per image, the pair chosen for each fold)."""
    correct = np.asarray(correct, bool)
    held_fold = np.asarray(held_fold)
    _, rows, n = correct.shape
    flat = np.zeros(n, np.int64)
    picks = []
    for f in np.unique(held_fold):
        inside = held_fold == f
        r, e = _best_pair(correct[:, :, ~inside].sum(2))
        flat[inside] = r * rows + e
        picks.append((r, e))
    return flat, picks


def choose_recipe(oof_correct: np.ndarray, folds: int, oof_pred: np.ndarray | None = None,
                  names: list[str] | None = None, gain_beyond_noise: bool = True,
                  held_fold: np.ndarray | None = None) -> CurveChoice:
    """oof_correct: (recipes, epochs + 1, images) booleans, [r, e] = out-of-fold correctness after
    e epochs of recipe r (row 0 of every recipe is the same probe); oof_pred: the predicted
    classes, same shape; held_fold: the fold that holds each image out (`held_fold_of`).

    The most accurate (recipe, epochs) pair wins (on ties the earlier recipe, i.e. the default
    first, and the fewest epochs), and it replaces the probe only when its paired difference
    from the probe is significant and, given held_fold, so is the nested one (each fold scored
    at the pair the other folds chose: `nested_choice`); otherwise the probe is kept. A trained
    winner's estimate and out-of-fold predictions are then the nested ones.
    gain_beyond_noise=False takes the most accurate pair whatever the noise: the rule's ablation
    (benchmarks/selection_rule.py), not a compile setting.
    """
    correct = np.asarray(oof_correct, bool)
    if correct.ndim != 3:
        raise ValueError("oof_correct must be (recipes, epochs + 1, images)")
    recipes, rows, n = correct.shape
    names = list(names) if names is not None else [f"recipe {r}" for r in range(recipes)]
    counts = correct.sum(2)  # (recipes, epochs + 1)
    best_recipe, best_epochs = _best_pair(counts)
    probe = correct[0, 0]
    diff = paired_difference(correct[best_recipe, best_epochs].tolist(), probe.tolist())
    trained = f"{best_epochs} epochs of training" + (f" ({names[best_recipe]})" if recipes > 1 else "")
    versus = diff.to_json() | {"best_epochs": best_epochs, "verdict": diff.verdict(trained, "the probe")}
    nested_correct = nested_pred = None
    if held_fold is not None and best_epochs:
        flat, picks = nested_choice(correct, held_fold)
        nested_correct = correct.reshape(recipes * rows, n)[flat, np.arange(n)]
        if oof_pred is not None:
            nested_pred = np.asarray(oof_pred).reshape(recipes * rows, n)[flat, np.arange(n)]
        nested = paired_difference(nested_correct.tolist(), probe.tolist())
        versus["nested"] = nested.to_json() | {
            "per_fold": [{"recipe": names[r], "epochs": e} if recipes > 1 else {"epochs": e} for r, e in picks],
            "verdict": nested.verdict("training chosen without each fold's images", "the probe"),
        }
        # The verdict a person reads: the honest comparison, beside the best point's.
        versus["verdict"] += f"; with each fold's recipe and epochs chosen on the other folds, {_short(nested)}"
    epochs = best_epochs
    beyond = diff.significant and diff.difference > 0
    if nested_correct is not None:
        beyond = beyond and versus["nested"]["significant"] and versus["nested"]["difference"] > 0
    if best_epochs and gain_beyond_noise and not beyond:
        epochs = 0
    recipe = best_recipe if epochs else 0
    honest = nested_correct is not None and epochs > 0
    return CurveChoice(
        accuracy_by_epoch=(counts[recipe] / max(n, 1)).tolist(),
        epochs=epochs,
        estimate=Accuracy(int(nested_correct.sum()), n) if honest else Accuracy(int(counts[recipe, epochs]), n),
        probe=Accuracy(int(counts[0, 0]), n),
        versus_probe=versus | ({"best_recipe": names[best_recipe]} if recipes > 1 else {}),
        folds=folds,
        oof_pred=None if oof_pred is None else [int(v) for v in (
            nested_pred if honest else np.asarray(oof_pred)[recipe, epochs])],
        recipe=names[recipe] if recipes > 1 and epochs else None,
        recipe_index=recipe,
        recipes={name: (counts[r] / max(n, 1)).tolist() for r, name in enumerate(names)} if recipes > 1 else None,
    )


def fold_choices(oof_correct: np.ndarray, held_fold: np.ndarray, names: list[str] | None = None,
                 gain_beyond_noise: bool = True) -> list[tuple[int, int]]:
    """For each fold f, the (recipe index, epochs) that `choose_recipe`'s rule picks from the other
    folds' images alone (probe kept: (0, 0)).

    A student's fold f is distilled from the teacher's fold-f model, and its held-out images then
    score that student: choosing the teacher's fold model by the rule on all images would let
    those images' labels pick the teacher each of them is scored through. Chosen this way, fold
    f's labels choose nothing in fold f. (The same approximation as `nested_choice`: the other
    folds' models did train on fold f's images; only the scores that choose leave them out.)"""
    correct = np.asarray(oof_correct, bool)
    held_fold = np.asarray(held_fold)
    folds = np.unique(held_fold)
    picks = []
    for f in folds:
        outside = held_fold != f
        inner = held_fold[outside]
        choice = choose_recipe(correct[:, :, outside], len(folds) - 1, names=names, gain_beyond_noise=gain_beyond_noise,
                               held_fold=inner if len(np.unique(inner)) > 1 else None)
        picks.append((choice.recipe_index, choice.epochs))
    return picks


def _short(d) -> str:
    """'+2.1 points, 95% CI -0.4 to +4.6, n=120: within noise', for a verdict's tail."""
    return f"{d.span()}: {'beyond noise' if d.significant else 'within noise'}"


def kept_because(versus: dict) -> str:
    """Why a probe that training led was kept, to follow the verdict."""
    if versus.get("significant") and versus.get("difference", 0) > 0 and versus.get("nested"):
        return "not beyond noise once each fold's choice is made without its images, so the probe is kept"
    return "not beyond noise, so the probe is kept"
