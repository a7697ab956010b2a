"""Why edgetl's probe is fitted the way it is: its choices against the plain alternative.

    python -m edgetl.benchmarks.probe_ablations --data ../shared/datasets/flowers12 --work /tmp/probe-ablations
        [--shots 5,10,20,all] [--seeds 0,1,2] [--model efficientnet_lite0]

On frozen ImageNet features of `--model` (global average pool, cached in WORK as the few-shot
benchmark caches them), for N training images per class drawn with each seed ("all": the whole
of train/, one seed), compiler/training/probe.py's `fit_probe` is run as the compile runs it and
with one choice changed at a time:

- `final map`: on the final feature map's pooled channels (plain feature extraction's
  features), C chosen by pooled out-of-fold cross-entropy; each feature scaled by its spread,
  but never by less than the median spread;
- `edgetl`: the compile's probe: the same fit, offered the model's pooled block's features too
  (ModelConfig.pooled_block), cross-validation choosing with or without them jointly with C;
- `C by accuracy`: as `final map`, C chosen by out-of-fold accuracy (ties to the smaller C);
- `plain scaling`: as `final map`, every feature scaled by its own spread (StandardScaler), in
  the folds too, C chosen the same way (by cross-entropy), so it may differ.

With `--probe-views`, also `views by CV` (tried and not offered): the same fit offered `--views`
augmented views of every training image (below), cross-validation choosing with or without
them jointly with C (compiler/training/probe.py's `views`).

With `--soft-labels`, also the head distilled on cached features (a direction of the
transfer-quality work, tried and not offered): `--views` augmented views of every training
image (compiler/training/finetune.py's `augment`: crop, flip, light jitter), the `--teacher`'s
probe (fitted on the same N images) labels each view, and the student's head is fitted on the
original images' features plus the views' to `alpha` x the teacher's probabilities at
temperature T + (1 - alpha) x the label, at the `edgetl` probe's C, for each T in 1, 2 and alpha
in 0.5, 1 (`soft T=..., a=...`). The views' features are cached in WORK too.

The views and soft-label variants are fitted on the final map's features, like `final map`.

With `--holdout-refit K`, also what the compile's refit of a kept probe on train + val gains
(compiler/stages/trained.py's `refit_kept_probe`): K seeded stratified carvings of 15% of all of
train/ as a val split, the `edgetl` probe fitted on the other 85% (what a held-out compile's val
kept) against the same probe fitted on all of train/ (what it deploys since the refit), both
scored on test/: accuracy and cross-entropy per carving, their means, and how often each won.

Each probe is scored on the full test/ as it is (float) and with its weights rounded to int8
per output class, as an int8 TFLite head holds them. Printed: per setting, the mean test
accuracy over the seeds of each variant, float and int8, and each variant's mean difference
from `final map`. Everything is also written to WORK/probe_ablations.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import numpy as np

from edgetl.benchmarks.fewshot import block_features, probe_features, subset
from edgetl.compiler.evaluation.stats import describe_accuracy, widest_half_interval

REFERENCE = "final map"
VARIANTS = (REFERENCE, "edgetl", "C by accuracy", "plain scaling")
VIEWS_VARIANT = "views by CV"
SOFT_SETTINGS = ((1.0, 0.5), (1.0, 1.0), (2.0, 0.5), (2.0, 1.0))  # (temperature, alpha)


def view_features(data: Path, names: tuple[str, str], views: int, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """(teacher, student) pooled features of `views` augmented views of every train/ image,
    shaped (views, images, features); one crop per view feeds both, as in a distillation step."""
    cache = work / f"views-{views}-{names[0]}-{names[1]}.npz"
    if cache.is_file():
        with np.load(cache) as d:
            return d["teacher"], d["student"]
    from edgetl._compat import keras, tf
    from edgetl.compiler.data.datasets import load_images, scan_dataset
    from edgetl.compiler.training.finetune import augment
    from edgetl.models import create_model, final_pool_output

    dataset = scan_dataset(data, selection="holdout", val_fraction=0.0, test_fraction=0.0)
    nets = [create_model(n, weights="imagenet", num_classes=len(dataset.classes)) for n in names]
    sizes = [m.input_shape[1] for m in nets]
    extractors = [keras.Model(m.input, final_pool_output(m)) for m in nets]
    x, _ = load_images(dataset.splits["train"], max(sizes))
    tf.random.set_seed(0)
    out = [[], []]
    for v in range(views):
        per_net = [[], []]
        for i in range(0, len(x), 32):
            batch = tf.stack([augment(image, 0)[0] for image in tf.constant(x[i : i + 32], tf.float32)])
            for k, (extract, size) in enumerate(zip(extractors, sizes)):
                per_net[k].append(extract(tf.image.resize(batch, (size, size)), training=False).numpy())
        for k in range(2):
            out[k].append(np.concatenate(per_net[k]))
        print(f"view {v + 1}/{views} extracted", flush=True)
    teacher, student = np.stack(out[0]), np.stack(out[1])
    np.savez(cache, teacher=teacher, student=student)
    return teacher, student


def soft_label_head(f_student: np.ndarray, y: np.ndarray, views_student: np.ndarray, teacher_probs: np.ndarray,
                    num_classes: int, C: float, temperature: float, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The student's head fitted on its own features plus the views', to soft targets, at C."""
    from threadpoolctl import threadpool_limits

    from edgetl.compiler.training import probe

    onehot = np.eye(num_classes)[y]
    x = np.concatenate([f_student, *views_student])
    targets = np.concatenate([onehot] + [alpha * p + (1 - alpha) * onehot for p in teacher_probs])
    with threadpool_limits(1):
        standardise = probe._Standardiser(x)
        fitter = probe._PathFitter(standardise(x), np.tile(y, len(teacher_probs) + 1), num_classes)
        fitter.onehot = targets.astype(np.float32)  # the cross-entropy and its gradient take soft targets as they are
        return standardise.fold_into(*fitter.fit(C))


def tempered(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities at `temperature`, per view (probe.py's softmax over the last axis)."""
    from edgetl.compiler.training.probe import _softmax

    return np.stack([_softmax(view / temperature) for view in logits])


def int8_head(kernel: np.ndarray) -> np.ndarray:
    """The kernel as an int8 head holds it: symmetric, one scale per output class."""
    scale = np.maximum(np.abs(kernel).max(0, keepdims=True), 1e-12) / 127.0
    return np.round(kernel / scale).clip(-127, 127) * scale


@contextlib.contextmanager
def plain_scaling():
    """compiler/training/probe.py with per-feature standardisation and no floor on the spread."""
    from edgetl.compiler.training import probe

    floored = probe._Standardiser

    class Plain(floored):
        def __init__(self, x):
            self.mean = x.mean(0)
            self.scale = np.maximum(x.std(0), 1e-12)

    probe._Standardiser = Plain
    try:
        yield
    finally:
        probe._Standardiser = floored


def fit_variant(variant: str, f: np.ndarray, y: np.ndarray, num_classes: int, seed: int,
                final_width: int | None = None) -> tuple[np.ndarray, np.ndarray, float, int | None]:
    """(kernel, bias, C, columns read) of one variant's probe on raw features: for `edgetl`, the
    final map's `final_width` columns followed by the pooled block's (columns None: it read
    both); for the others, the final map's."""
    from edgetl.compiler.training.probe import fit_probe, fit_probe_at

    if variant == "edgetl":
        p = fit_probe(f, y, num_classes, seed=seed, first_columns=final_width)
        return p.kernel, p.bias, p.C, p.columns
    if variant == "plain scaling":
        with plain_scaling():
            p = fit_probe(f, y, num_classes, seed=seed)
        return p.kernel, p.bias, p.C, None
    p = fit_probe(f, y, num_classes, seed=seed)
    if variant == "C by accuracy":
        best = max(sorted(p.cv_accuracy), key=lambda c: (p.cv_accuracy[c], -c))
        p = fit_probe_at(f, y, num_classes, best)
    return p.kernel, p.bias, p.C, None


def holdout_refit(f: np.ndarray, y: np.ndarray, f_test: np.ndarray, y_test: np.ndarray, num_classes: int, final_width: int,
                  carvings: int, val_fraction: float = 0.15) -> dict:
    """The probe on 1 - val_fraction of the images (stratified, per carving seed) against the
    probe on all of them, on the test images: accuracy and cross-entropy of each."""
    from edgetl.benchmarks.selection_threshold import carve_val
    from edgetl.compiler.training.probe import fit_probe

    def scored(rows) -> tuple[float, float]:
        probe = fit_probe(f[rows], y[rows], num_classes, seed=0, first_columns=final_width)
        probs = probe.predict_proba(f_test)
        return float(np.mean(probs.argmax(1) == y_test)), float(-np.mean(np.log(probs[np.arange(len(y_test)), y_test] + 1e-12)))

    everything = scored(np.arange(len(y)))
    rows = []
    for seed in range(carvings):
        kept, _ = carve_val(y, seed, val_fraction)
        accuracy, loss = scored(kept)
        rows.append({"seed": seed, "train_images": int(len(kept)), "train_only": {"accuracy": accuracy, "log_loss": loss}})
        print(f"carving {seed}: probe on {len(kept)} images {describe_accuracy(accuracy, len(y_test))} (cross-entropy {loss:.4f}); "
              f"on all {len(y)}: {describe_accuracy(everything[0], len(y_test))} ({everything[1]:.4f})", flush=True)
    diffs = np.array([everything[0] - r["train_only"]["accuracy"] for r in rows])
    summary = {
        "carvings": rows, "all": {"accuracy": everything[0], "log_loss": everything[1]},
        "mean_train_only": {k: float(np.mean([r["train_only"][k] for r in rows])) for k in ("accuracy", "log_loss")},
        "refit_better": int((diffs > 0).sum()), "refit_worse": int((diffs < 0).sum()),
    }
    print(f"refit on train + val: {describe_accuracy(everything[0], len(y_test))} (cross-entropy {everything[1]:.4f}) against "
          f"train alone {summary['mean_train_only']['accuracy']:.2%} ({summary['mean_train_only']['log_loss']:.4f}) on average over "
          f"{carvings} carvings; more accurate on {summary['refit_better']}, less on {summary['refit_worse']}", flush=True)
    return summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--shots", default="5,10,20,all")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--soft-labels", action="store_true", help="also the head distilled on augmented views' cached features")
    parser.add_argument("--teacher", default="efficientnet_lite2", help="the probe that labels the views (--soft-labels)")
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--probe-views", action="store_true", help="also the probe offered --views augmented views, chosen by CV")
    parser.add_argument("--holdout-refit", type=int, default=0, metavar="K",
                        help="also K carvings of a 15%% val split: the probe on the rest against the probe on all of train/")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    dataset, f_train, y_train, f_test, y_test = probe_features(args.data, args.model, args.work)
    b_train, b_test = block_features(args.data, args.model, args.work)
    num_classes = len(dataset.classes)
    variants = list(VARIANTS)
    if args.soft_labels or args.probe_views:
        views_teacher, views_student = view_features(args.data, (args.teacher, args.model), args.views, args.work)
    if args.probe_views:
        variants.append(VIEWS_VARIANT)
    if args.soft_labels:
        _, t_train, _, _, _ = probe_features(args.data, args.teacher, args.work)
        variants += [f"soft T={t:g}, a={a:g}" for t, a in SOFT_SETTINGS]
    rows = []
    for shot in args.shots.split(","):
        per_class = None if shot == "all" else int(shot)
        seeds = [0] if per_class is None else [int(s) for s in args.seeds.split(",")]
        for seed in seeds:
            chosen = subset(y_train, per_class, seed)
            row = {"shots": shot, "seed": seed, "n_train": int(len(chosen))}
            for variant in VARIANTS:
                both = variant == "edgetl"  # the final map's features and the pooled block's
                train = np.concatenate([f_train, b_train], 1) if both else f_train
                test = np.concatenate([f_test, b_test], 1) if both else f_test
                kernel, bias, C, columns = fit_variant(variant, train[chosen], y_train[chosen], num_classes, seed, f_train.shape[1])
                row[variant] = {
                    "C": C,
                    "float": float(np.mean((test @ kernel + bias).argmax(1) == y_test)),
                    "int8": float(np.mean((test @ int8_head(kernel) + bias).argmax(1) == y_test)),
                }
                if both:
                    row[variant]["block"] = columns is None and b_train.shape[1] > 0
            if args.probe_views:
                from edgetl.compiler.training.probe import fit_probe

                p = fit_probe(f_train[chosen], y_train[chosen], num_classes, views=views_student[:, chosen], seed=seed)
                row[VIEWS_VARIANT] = {
                    "C": p.C,
                    "views": p.views,
                    "float": float(np.mean((f_test @ p.kernel + p.bias).argmax(1) == y_test)),
                    "int8": float(np.mean((f_test @ int8_head(p.kernel) + p.bias).argmax(1) == y_test)),
                }
            if args.soft_labels:
                from edgetl.compiler.training.probe import fit_probe

                teacher = fit_probe(t_train[chosen], y_train[chosen], num_classes, seed=seed)
                logits = np.stack([teacher.logits(v[chosen]) for v in views_teacher])
                for (t, a), name in zip(SOFT_SETTINGS, variants[len(VARIANTS):]):
                    kernel, bias = soft_label_head(f_train[chosen], y_train[chosen], views_student[:, chosen], tempered(logits, t),
                                                   num_classes, row[REFERENCE]["C"], t, a)
                    row[name] = {
                        "C": row[REFERENCE]["C"],
                        "float": float(np.mean((f_test @ kernel + bias).argmax(1) == y_test)),
                        "int8": float(np.mean((f_test @ int8_head(kernel) + bias).argmax(1) == y_test)),
                    }
            rows.append(row)
            # Said once per line rather than after each of a dozen figures: on n test images every
            # one of them is this uncertain, so variants closer than that are not told apart.
            half = widest_half_interval([row[v][k] for v in variants for k in ("float", "int8")], len(y_test))
            print(f"{shot:>4}/class seed {seed} (n={len(y_test)}, each 95% CI within ±{half:.1%}): " + "; ".join(
                f"{v} {row[v]['float']:.1%} / {row[v]['int8']:.1%} (C {row[v]['C']:g}"
                + (f", {row[v]['views']} views" if "views" in row[v] else "")
                + ((", with the block" if row[v]["block"] else ", final map alone") if "block" in row[v] else "") + ")"
                for v in variants), flush=True)
    print(f"\nmean test accuracy over the seeds (n_test={len(y_test)} per seed), float / int8 head; in brackets the mean "
          f"difference from {REFERENCE}; a single seed's accuracy has a 95% Wilson interval of up to "
          f"±{widest_half_interval([r[v][k] for r in rows for v in variants for k in ('float', 'int8')], len(y_test)):.1%}")
    summary = {}
    for shot in dict.fromkeys(r["shots"] for r in rows):
        group = [r for r in rows if r["shots"] == shot]
        means = {v: {k: float(np.mean([r[v][k] for r in group])) for k in ("float", "int8")} for v in variants}
        summary[shot] = means
        cells = []
        for v in variants:
            cell = f"{v} {means[v]['float']:.1%} / {means[v]['int8']:.1%}"
            if v != REFERENCE:
                cell += (f" ({100 * (means[v]['float'] - means[REFERENCE]['float']):+.1f} / "
                         f"{100 * (means[v]['int8'] - means[REFERENCE]['int8']):+.1f})")
            cells.append(cell)
        print(f"{shot:>4}/class ({len(group)} seeds): " + "; ".join(cells))
    result = {"model": args.model, "n_test": int(len(y_test)), "rows": rows, "mean": summary}
    if args.holdout_refit:
        print(f"\nheld-out selection's refit ({args.model}, the edgetl probe):")
        result["holdout_refit"] = holdout_refit(np.concatenate([f_train, b_train], 1), y_train, np.concatenate([f_test, b_test], 1),
                                                y_test, num_classes, f_train.shape[1], args.holdout_refit)
    (args.work / "probe_ablations.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
