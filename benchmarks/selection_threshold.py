"""Where cross-validation stops paying: held-out selection vs k-fold selection by data size.

    python -m edgetl.benchmarks.selection_threshold --features WORK/features-efficientnet_lite0.npz
        [--sizes 60,120,240,360,480,600,720] [--seeds 10]

Uses the pooled features that `benchmarks/fewshot.py` caches (frozen EfficientNet-Lite0 on
flowers12's train/ and test/), so each trial is a logistic-regression probe: seconds, not a
training run. For each size N (a class-balanced subset of train/, several seeds) it compares
the two ways edgetl can choose a model on N labelled images:

- holdout: carve a 15% validation split (as edgetl does above --cv-below), choose C on it by
  accuracy, train on the other 85%;
- cv: choose C by 5-fold cross-validation on all N (compiler/training/probe.py), train on all N;

and scores both on the full test/ split (each column is a mean over the seeds, and its 95%
interval is the spread of that mean over the seeds, as for the gap; the header gives the widest
Wilson interval of any one seed's accuracy on the n test images). The gap is what a held-out split costs at that size
(the images it holds back plus the noise of choosing on a few dozen). The README quotes the
table; CompileConfig.cv_below is where the gap falls within the noise.
"""

from __future__ import annotations

import argparse

import numpy as np

from edgetl.compiler.evaluation.stats import widest_half_interval
from edgetl.compiler.training.probe import C_GRID, fit_probe, fit_probe_at


def carve_val(y, seed: int, val_fraction: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows): a seeded stratified share of each class held out, at least one."""
    rng = np.random.default_rng(seed)
    val = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: max(1, round(val_fraction * np.sum(y == c)))] for c in np.unique(y)])
    return np.setdiff1d(np.arange(len(y)), val), val


def holdout_choice(x, y, seed: int, val_fraction: float = 0.15) -> tuple[np.ndarray, np.ndarray, float]:
    train, val = carve_val(y, seed, val_fraction)
    k = int(y.max()) + 1
    scores = {}
    for C in sorted(C_GRID):
        p = fit_probe_at(x[train], y[train], k, C)
        scores[C] = np.mean(p.predict_proba(x[val]).argmax(1) == y[val])
    best = max(scores, key=lambda c: (scores[c], -c))
    return train, val, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", required=True)
    parser.add_argument("--sizes", default="60,120,240,360,480,600,720")
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    with np.load(args.features) as d:
        f_train, y_train, f_test, y_test = d["f_train"], d["y_train"], d["f_test"], d["y_test"]
    k = int(y_train.max()) + 1
    print(f"test n={len(y_test)}, {args.seeds} seeds per size; 95% intervals over the seeds")
    print(f"{'N':>5} {'holdout':>22} {'cv':>22} {'cv - holdout (mean, 95% CI over seeds)':>42}")
    widest = []
    for n in (int(s) for s in args.sizes.split(",")):
        per_class = n // k
        gaps, hold, cv = [], [], []
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            idx = np.concatenate([rng.choice(np.flatnonzero(y_train == c), per_class, replace=False) for c in range(k)])
            x, y = f_train[idx], y_train[idx]
            train, _, C = holdout_choice(x, y, seed)
            h = np.mean(fit_probe_at(x[train], y[train], k, C).predict_proba(f_test).argmax(1) == y_test)
            c = np.mean(fit_probe(x, y, k, seed=seed).predict_proba(f_test).argmax(1) == y_test)
            hold.append(h)
            cv.append(c)
            gaps.append(c - h)
        gaps = np.array(gaps)
        widest.append(widest_half_interval(hold + cv, len(y_test)))
        print(f"{per_class * k:>5} {over_seeds(hold):>22} {over_seeds(cv):>22} "
              f"{gaps.mean() * 100:>+18.2f} pt ({(gaps.mean() - half_width(gaps)) * 100:+.2f} to "
              f"{(gaps.mean() + half_width(gaps)) * 100:+.2f})", flush=True)
    if widest:
        print(f"one seed's test accuracy, n={len(y_test)}: 95% Wilson interval within ±{max(widest):.1%}")


def half_width(values) -> float:
    """Half the 95% normal interval of a mean over seeds (nan with one seed)."""
    values = np.asarray(values, dtype=float)
    return 1.96 * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")


def over_seeds(accuracies) -> str:
    """'96.42% (96.10-96.74)': a mean accuracy over seeds with its 95% interval over them."""
    mean, half = float(np.mean(accuracies)), half_width(accuracies)
    return f"{mean:.2%} ({(mean - half) * 100:.2f}-{(mean + half) * 100:.2f})"


if __name__ == "__main__":
    main()
