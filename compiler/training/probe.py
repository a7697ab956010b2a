"""The linear probe: logistic regression on frozen, pooled backbone features.

Feature extraction is the first technique of transfer learning and, on a few hundred images,
often the strongest: fine-tuning can only replace it when cross-validation says it is better
(compiler/training/crossval.py). The probe is also where fine-tuning starts (LP-FT, Kumar et al., ICLR
2022: a trained linear head first, then the backbone, distorts the features least).

The head is a multinomial logistic regression (L-BFGS) on standardised features,
its inverse regularisation C chosen by stratified k-fold cross-validation on the training
images alone. Standardisation is folded back into the weights, so the result is exactly the
model's own "logits" Dense layer on the raw pooled features: the probe is a deployable model
(the frozen backbone plus this layer), exported and quantized like any other.

Given the features of augmented views of the training images (random crops, flips, light
jitter), the cross-validation also decides whether the probe fits on them too, jointly with C:
each fold trains on its images and their views and scores only the held-out originals. The
compile does not offer views: on flowers12 they lowered the out-of-fold cross-entropy but not
the test error (README, "Small data": benchmarks/probe_ablations.py --probe-views, and the
few-shot benchmark with the compile offering them at commit 318d8e7).

Where the model pools a block's output beside its final feature map (ModelConfig.pooled_block:
"features" is then the final map's channels followed by the block's), the cross-validation
also decides, by the same pooled out-of-fold cross-entropy, whether the probe reads the block's
columns or only the final map's (a tie keeps the final map alone); the columns it does not
read get zero weights, so the model's layer is the same either way.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgetl.compiler.training.crossval import stratified_folds

# Inverse regularisation strengths tried, on standardised features of 1000-2000 dimensions.
C_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0)


@dataclasses.dataclass
class Probe:
    kernel: np.ndarray  # (features, classes): logits = features @ kernel + bias
    bias: np.ndarray  # (classes,)
    C: float
    cv_accuracy: dict[float, float]  # C -> pooled out-of-fold accuracy
    cv_log_loss: dict[float, float]  # C -> pooled out-of-fold cross-entropy: what chooses C
    oof_probs: np.ndarray  # out-of-fold probabilities at the chosen C, one row per image
    folds: int
    views: int = 0  # augmented views per image it was fitted on too (0: the images alone)
    # views -> best pooled out-of-fold cross-entropy over C, for each view count tried
    log_loss_by_views: dict[int, float] = dataclasses.field(default_factory=dict)
    # Leading feature columns the probe reads (the rest have zero weights); None: all of them.
    columns: int | None = None
    # columns read (None: all) -> best pooled out-of-fold cross-entropy over C, for each tried
    log_loss_by_columns: dict[int | None, float] = dataclasses.field(default_factory=dict)

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features @ self.kernel + self.bias

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        z = self.logits(features)
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    def to_json(self) -> dict:
        return {
            "C": self.C,
            "folds": self.folds,
            "cv_accuracy_by_C": {f"{c:g}": round(a, 4) for c, a in self.cv_accuracy.items()},
            "cv_log_loss_by_C": {f"{c:g}": round(v, 4) for c, v in self.cv_log_loss.items()},
            "columns": self.columns,
        }


class _PathFitter:
    """Multinomial logistic regression on standardised x, fitted along an increasing C path.

    Minimises 0.5 * ||W||^2 + C * sum(cross-entropy) (scikit-learn's parametrisation; the bias
    is not penalised) with SciPy's L-BFGS in float32. Each fit starts from the previous
    solution (warm start), so the whole path costs a few times one fit.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, num_classes: int):
        self.x = np.ascontiguousarray(x, np.float32)
        self.onehot = np.eye(num_classes, dtype=np.float32)[y]
        self.present = np.unique(y)
        self.num_classes = num_classes
        self.params = np.zeros((x.shape[1] + 1) * num_classes)

    def _loss_grad(self, params: np.ndarray, C: float) -> tuple[float, np.ndarray]:
        d, k = self.x.shape[1], self.num_classes
        w = params[: d * k].reshape(d, k).astype(np.float32)
        b = params[d * k :].astype(np.float32)
        z = self.x @ w + b
        z -= z.max(1, keepdims=True)
        log_norm = np.log(np.exp(z).sum(1, keepdims=True))
        log_p = z - log_norm
        ce = -float((self.onehot * log_p).sum())
        residual = np.exp(log_p) - self.onehot
        grad_w = w + C * (self.x.T @ residual)
        grad_b = C * residual.sum(0)
        loss = 0.5 * float((w.astype(np.float64) ** 2).sum()) + C * ce
        return loss, np.concatenate([grad_w.ravel(), grad_b]).astype(np.float64)

    def fit(self, C: float) -> tuple[np.ndarray, np.ndarray]:
        """(kernel, bias) over all classes; a class absent from x is never predicted."""
        from scipy.optimize import minimize

        d, k = self.x.shape[1], self.num_classes
        result = minimize(self._loss_grad, self.params, args=(C,), jac=True, method="L-BFGS-B",
                          options={"maxiter": 500, "gtol": 1e-5 * max(1.0, C * len(self.x))})
        self.params = result.x
        kernel, bias = self.params[: d * k].reshape(d, k).copy(), self.params[d * k :].copy()
        absent = np.setdiff1d(np.arange(k), self.present)
        bias[absent] = -1e3
        return kernel, bias


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


class _Standardiser:
    """Centre each feature and scale it by its spread, but never by less than the median
    spread. Plain per-feature standardisation divides near-constant features (spread 0.005
    against a median of 0.2 in Lite0's pooled features) by almost nothing; folded back into the
    raw-feature weights they dwarf the rest, and an int8 file's per-channel weight scale then
    rounds most weights to zero. Measured on flowers12 by benchmarks/probe_ablations.py (Lite0
    features, 5/10/20 images per class over 3 subsets, all of train/; full test/): plain
    standardisation 88.6 / 91.7 / 95.4 / 97.1% float and 84.3 / 62.4 / 94.7 / 97.1% with int8
    head weights; with the floor 90.1 / 94.2 / 95.8 / 97.1% float and 89.9 / 94.2 / 95.7 / 97.1% int8.
    """

    def __init__(self, x: np.ndarray):
        self.mean = x.mean(0)
        spread = x.std(0)
        self.scale = np.maximum(spread, max(float(np.median(spread)), 1e-6))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale

    def fold_into(self, kernel: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weights for raw features equal to (kernel, bias) on standardised ones."""
        raw_kernel = kernel / self.scale[:, None]
        return raw_kernel, bias - self.mean @ raw_kernel


def fit_probe(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    views: np.ndarray | None = None,
    first_columns: int | None = None,
    folds: int = 5,
    seed: int = 0,
    grid: tuple[float, ...] = C_GRID,
    C: float | None = None,
) -> Probe:
    """Logistic regression on `features`, C chosen by stratified `folds`-fold CV (or given).

    views: features of augmented views of the same images, shaped (views, images, features).
    When given, the probe is fitted with and without them, and the pooled out-of-fold
    cross-entropy on the original images chooses, jointly with C.
    first_columns: when fewer than the features' width (the final map's pooled channels, with a
    pooled block's after them), the probe is also fitted on these leading columns alone, and
    the same cross-entropy chooses between the two, jointly with C; a tie reads fewer columns.

    The standardisation is refitted inside each fold, so the out-of-fold scores never see the
    held-out images' statistics. Returns weights for the raw features.
    """
    import scipy.optimize  # noqa: F401  (loads SciPy's own BLAS before the limit below, so it applies)
    from threadpoolctl import threadpool_limits

    # One BLAS thread: these matrices are small, and OpenBLAS' threads contending with
    # TensorFlow's (or another process) made the same fits 20x slower on a 2-core machine.
    with threadpool_limits(1):
        x, y = np.asarray(features, np.float64), np.asarray(labels, np.int64)
        views = None if views is None or not len(views) else np.asarray(views, np.float64)
        counts = (0,) if views is None else (0, len(views))
        widths = (first_columns, None) if first_columns is not None and first_columns < x.shape[1] else (None,)
        fits = [_fit_probe(x, y, num_classes, folds, seed, grid, C, views[:n] if n else None, columns)
                for columns in widths for n in counts]
        # A tie keeps the plain probe: fewer columns, then no views.
        best = min(fits, key=lambda p: (round(p.cv_log_loss[p.C], 10), p.columns is None, p.views))
        best.log_loss_by_views = {p.views: p.cv_log_loss[p.C] for p in fits if p.columns == best.columns}
        best.log_loss_by_columns = {p.columns: p.cv_log_loss[p.C] for p in fits if p.views == best.views}
        return best


def _with_views(x: np.ndarray, y: np.ndarray, views: np.ndarray | None, rows=slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """The training rows' features followed by their views' (each view labelled as its image)."""
    if views is None:
        return x[rows], y[rows]
    return np.concatenate([x[rows], *views[:, rows]]), np.tile(y[rows], len(views) + 1)


def _fit_probe(x, y, num_classes, folds, seed, grid, C, views=None, columns=None) -> Probe:
    if columns is not None:  # fitted on the leading columns; the rest get zero weights below
        width = x.shape[1]
        probe = _fit_probe(x[:, :columns], y, num_classes, folds, seed, grid, C,
                           None if views is None else views[..., :columns])
        probe.kernel = np.pad(probe.kernel, ((0, width - columns), (0, 0)))
        probe.columns = columns
        return probe
    grid = (C,) if C is not None else tuple(sorted(grid))
    splits = stratified_folds(y, folds, seed)
    oof = {c: np.zeros((len(y), num_classes)) for c in grid}
    for train_idx, held_idx in splits:
        xt, yt = _with_views(x, y, views, train_idx)
        standardise = _Standardiser(xt)
        fitter = _PathFitter(standardise(xt), yt, num_classes)
        xh = standardise(x[held_idx])  # scored on the held-out originals only
        for c in grid:
            kernel, bias = fitter.fit(c)
            oof[c][held_idx] = _softmax(xh @ kernel + bias)
    accuracy = {c: float(np.mean(oof[c].argmax(1) == y)) for c in grid}
    # C is chosen by out-of-fold cross-entropy, not accuracy: on a few dozen images accuracy is
    # flat across C (ties everywhere) while the likelihood still ranks them. Measured on
    # flowers12 by benchmarks/probe_ablations.py (5/10/20 images per class over 3 subsets and
    # all of train/, full test/): the log-loss choice scored +1.5, +0.1, +0.3 and +0.4 points
    # above the accuracy choice on the means (below it on 2 of the 10 subsets).
    log_loss = {c: float(-np.mean(np.log(oof[c][np.arange(len(y)), y] + 1e-12))) for c in grid}
    best = min(grid, key=lambda c: (round(log_loss[c], 10), c))
    kernel, bias = _fit_at(x, y, num_classes, best, views)
    return Probe(kernel.astype(np.float32), bias.astype(np.float32), best, accuracy, log_loss, oof[best], len(splits),
                 views=0 if views is None else len(views))


def _fit_at(x, y, num_classes, C, views=None) -> tuple[np.ndarray, np.ndarray]:
    xt, yt = _with_views(x, y, views)
    standardise = _Standardiser(xt)
    return standardise.fold_into(*_PathFitter(standardise(xt), yt, num_classes).fit(C))


def set_head(model, probe: Probe) -> None:
    """Write the probe into the model's "logits" Dense layer (the frozen backbone stays as is)."""
    from edgetl.models import LOGITS_LAYER

    layer = model.get_layer(LOGITS_LAYER)
    kernel, bias = layer.get_weights()
    if kernel.shape != probe.kernel.shape:
        raise ValueError(f"probe of shape {probe.kernel.shape} does not fit layer {LOGITS_LAYER!r} of shape {kernel.shape}")
    layer.set_weights([probe.kernel, probe.bias])


def features_name(columns: int | None) -> str:
    """What a probe reading `columns` leading feature columns reads, in words (None: all of
    them, the final map's pooled channels and the pooled block's)."""
    return "final map" if columns is not None else "final map + block"


def fit_probe_at(features: np.ndarray, labels: np.ndarray, num_classes: int, C: float, views: np.ndarray | None = None,
                 columns: int | None = None) -> Probe:
    """The probe at a given C, without cross-validation (a fold's refit at the chosen C), on the
    images and, when given, their augmented views' features (views, images, features); on the
    leading `columns` feature columns only when given (the rest get zero weights)."""
    import scipy.optimize  # noqa: F401  (see fit_probe)
    from threadpoolctl import threadpool_limits

    x = np.asarray(features, np.float64)
    y = np.asarray(labels, np.int64)
    views = None if views is None else np.asarray(views, np.float64)
    read = slice(None) if columns is None else slice(0, columns)
    with threadpool_limits(1):
        kernel, bias = _fit_at(x[:, read], y, num_classes, C, None if views is None else views[..., read])
    kernel = np.pad(kernel, ((0, x.shape[1] - kernel.shape[0]), (0, 0)))
    return Probe(kernel.astype(np.float32), bias.astype(np.float32), C, {}, {}, np.zeros((0, num_classes)), 0,
                 views=0 if views is None else len(views), columns=columns)
