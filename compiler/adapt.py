"""Adaptation to the deployment camera from unlabelled target images (`--unlabeled DIR`).

Methods (`--adapt`), each a function from a float Keras model to a new one (the input model is
never changed), so the adapted model is what gets exported, quantized and checked:

  none  the model as trained.
  bn    AdaBN (Li et al., 2016): every batch-norm layer's moving mean and variance re-estimated
        on the target images; nothing else changes. In the exported graph batch norm is folded
        into the convolutions, so the adapted file costs nothing extra at inference, and its
        int8 ranges are calibrated on target images too (`calibration_images`).
  shot  AdaBN, then SHOT's objective (Liang et al., ICML 2020): information maximisation (each
        prediction confident, the predictions together diverse) plus cross-entropy on
        pseudo-labels from class centroids in feature space, the classifier kept fixed
        ("hypothesis transfer"). Only the batch-norm scale and shift are trained (as TENT does),
        with the batch-norm layers in inference mode: on a few hundred images this cannot
        wander far from the source model, and it folds into the int8 file like AdaBN.

Moving statistics are pooled exactly over all target images, one forward pass per batch in
training mode (as PyTorch's SWA `update_bn`), not blended with the source statistics by a
momentum: the target images are the device's own.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from edgetl._compat import keras, tf
from edgetl.models import FEATURES_LAYER, LOGITS_LAYER

METHODS = ("none", "bn", "shot")
# Cheapest first: a tie on the labelled target set goes to the cheaper method.
COST_ORDER = {"none": 0, "bn": 1, "shot": 2}


@dataclasses.dataclass
class AdaptResult:
    method: str
    images: int
    seconds: float
    bn_layers: int = 0
    epochs: int = 0
    pseudo_label_agreement: list[float] = dataclasses.field(default_factory=list)  # with the model's own argmax, per epoch

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def batch_norm_layers(model) -> list:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def copy_model(model):
    """New layers, same weights and trainable flags: nothing done to the copy reaches `model`."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for src, dst in zip(model.layers, clone.layers):
        dst.trainable = src.trainable
    return clone


def adapt_batch_norm(model, images: np.ndarray, batch_size: int = 32):
    """AdaBN: a copy of `model` whose batch-norm moving statistics are those of `images`.

    Each batch runs in training mode (every batch-norm layer normalises with the batch's own
    statistics, so a layer sees its inputs as they will be once its predecessors are adapted);
    momentum 0 makes each layer's moving variables hold that batch's mean and variance, which
    are read back and pooled: mean = sum n_b mu_b / N, var = sum n_b (var_b + mu_b^2) / N - mean^2.
    Returns (adapted copy, AdaptResult). Only moving_mean and moving_variance differ.
    """
    start = time.perf_counter()
    if len(images) == 0:
        raise ValueError("batch-norm adaptation needs at least one target image")
    adapted = copy_model(model)
    layers = batch_norm_layers(adapted)
    saved = [(layer.momentum, layer.trainable) for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
        layer.trainable = True  # a frozen tf_keras batch norm would ignore training=True
    forward = tf.function(lambda x: adapted(x, training=True))
    sums = [np.zeros(layer.moving_mean.shape, np.float64) for layer in layers]
    squares = [np.zeros(layer.moving_mean.shape, np.float64) for layer in layers]
    # A batch of one image on a 1x1 feature map has no variance: keep batches of two or more.
    step = max(2, batch_size)
    for i in range(0, len(images), step):
        batch = images[i : i + step]
        forward(tf.constant(batch, tf.float32))
        for j, layer in enumerate(layers):
            mu = layer.moving_mean.numpy().astype(np.float64)
            var = layer.moving_variance.numpy().astype(np.float64)
            sums[j] += len(batch) * mu
            squares[j] += len(batch) * (var + mu * mu)
    n = len(images)
    for j, layer in enumerate(layers):
        mean = sums[j] / n
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(np.maximum(squares[j] / n - mean * mean, 0.0).astype(np.float32))
    for layer, (momentum, trainable) in zip(layers, saved):
        layer.momentum, layer.trainable = momentum, trainable
    return adapted, AdaptResult("bn", n, time.perf_counter() - start, bn_layers=len(layers))


def _entropy(p, axis=-1):
    return -tf.reduce_sum(p * tf.math.log(p + 1e-6), axis=axis)


def centroid_pseudo_labels(features: np.ndarray, probs: np.ndarray, rounds: int = 2) -> np.ndarray:
    """SHOT's self-supervised pseudo-labels: class centroids in (L2-normalised) feature space,
    weighted by the predicted probabilities, then refined with hard assignments; each image
    gets its nearest centroid by cosine distance."""
    f = features / (np.linalg.norm(features, axis=1, keepdims=True) + 1e-8)
    weights = probs
    labels = probs.argmax(1)
    for _ in range(rounds):
        centroids = weights.T @ f / (weights.sum(0)[:, None] + 1e-8)
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-8
        labels = (f @ centroids.T).argmax(1)
        weights = np.eye(probs.shape[1])[labels]
    return labels


def self_train(model, images: np.ndarray, *, epochs: int = 3, learning_rate: float = 1e-3, beta: float = 0.3,
               batch_size: int = 32, seed: int = 0):
    """SHOT's loss on the batch-norm scale and shift of a copy of `model` (AdaBN it first).

    loss = mean entropy of the predictions - entropy of their mean + beta * CE(centroid
    pseudo-labels), with pseudo-labels recomputed at the start of each epoch. Batch norm runs
    in inference mode, so the moving statistics stay those of the target images.
    Returns (adapted copy, AdaptResult).
    """
    start = time.perf_counter()
    adapted = copy_model(model)
    heads = keras.Model(adapted.input, [adapted.get_layer(FEATURES_LAYER).output, adapted.get_layer(LOGITS_LAYER).output])
    layers = batch_norm_layers(adapted)
    variables = [v for layer in layers for v in (layer.gamma, layer.beta) if v is not None]
    optimizer = keras.optimizers.Adam(learning_rate)
    infer = tf.function(lambda x: heads(x, training=False))

    @tf.function
    def train_step(x, pseudo):
        with tf.GradientTape() as tape:
            _, logits = heads(x, training=False)
            p = tf.nn.softmax(logits)
            confident = tf.reduce_mean(_entropy(p))
            diverse = _entropy(tf.reduce_mean(p, axis=0))
            ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=pseudo, logits=logits))
            loss = confident - diverse + beta * ce
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    rng = np.random.default_rng(seed)
    agreement = []
    for _ in range(epochs):
        features, logits = [], []
        for i in range(0, len(images), batch_size):
            f, z = infer(tf.constant(images[i : i + batch_size], tf.float32))
            features.append(f.numpy())
            logits.append(z.numpy())
        probs = tf.nn.softmax(np.concatenate(logits)).numpy()
        pseudo = centroid_pseudo_labels(np.concatenate(features), probs)
        agreement.append(float(np.mean(pseudo == probs.argmax(1))))
        order = rng.permutation(len(images))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            if len(idx) < 2:  # the diversity term needs a batch
                continue
            train_step(tf.constant(images[idx], tf.float32), tf.constant(pseudo[idx], tf.int32))
    result = AdaptResult("shot", len(images), time.perf_counter() - start, bn_layers=len(layers), epochs=epochs,
                         pseudo_label_agreement=agreement)
    return adapted, result


def adapt(model, method: str, images: np.ndarray, *, batch_size: int = 32, seed: int = 0, epochs: int = 3,
          learning_rate: float = 1e-3):
    """The model adapted by `method` on the target `images` (a new model; "none" returns `model`)."""
    if method not in METHODS:
        raise ValueError(f"unknown adaptation {method!r}; one of {', '.join(METHODS)}")
    if method == "none":
        return model, AdaptResult("none", len(images), 0.0)
    adapted, bn = adapt_batch_norm(model, images, batch_size)
    if method == "bn":
        return adapted, bn
    tuned, result = self_train(adapted, images, epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, seed=seed)
    result.seconds += bn.seconds
    return tuned, result


def calibration_images(target: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """A seeded sample of `n` target images (all when fewer) for int8 ranges: the deployed file
    sees the device's pixels, so its activation ranges should come from them."""
    rng = np.random.default_rng(seed)
    if len(target) <= n:
        return target
    return target[np.sort(rng.choice(len(target), n, replace=False))]


# The method `--adapt auto` uses without a labelled target set: set from
# benchmarks/domain_shift.py (README, "Deploying behind another camera").
ADAPT_DEFAULT = "bn"


def _accuracy(model, x: np.ndarray, y: np.ndarray, batch_size: int) -> float | None:
    from edgetl.runtime.keras_model import KerasSession

    if len(y) == 0:
        return None
    return float(np.mean(KerasSession(model=model).predict(x, batch_size).argmax(1) == y))


def choose_and_adapt(model, method: str, target: np.ndarray, *, clean_val, target_val=None, max_drop: float = 1.0,
                     batch_size: int = 32, seed: int = 0, epochs: int = 3):
    """Adapt `model` to the unlabelled `target` images by `method` ("auto" chooses); a new model.

    clean_val: (x, y) labelled source images (the validation split), to check that adaptation
    keeps what the model knew; target_val: (x, y) labelled target images or None.
    auto with target_val: every method is tried and the most accurate there wins (a tie goes
    to the cheaper one). auto without: ADAPT_DEFAULT, unless it costs more than `max_drop`
    points of clean validation accuracy, then the next cheaper method (the only label-free
    check there is: a collapse to a few classes shows up there first).
    Returns (model, report dict).
    """
    from edgetl.compiler.stats import describe_accuracy

    if method == "auto":
        tried = list(METHODS) if target_val is not None else [ADAPT_DEFAULT] + [m for m in ("bn", "none") if COST_ORDER[m] < COST_ORDER[ADAPT_DEFAULT]]
    else:
        tried = [method]
    rows, models = [], {}
    base_clean = _accuracy(model, *clean_val, batch_size)
    for name in tried:
        adapted, result = adapt(model, name, target, batch_size=batch_size, seed=seed, epochs=epochs)
        row = {**result.to_json(), "clean_val_accuracy": _accuracy(adapted, *clean_val, batch_size)}
        if target_val is not None:
            row["target_val_accuracy"] = _accuracy(adapted, *target_val, batch_size)
            row["target_val"] = describe_accuracy(row["target_val_accuracy"], len(target_val[1]))
        rows.append(row)
        models[name] = adapted
        keeps_source = base_clean is None or row["clean_val_accuracy"] is None or row["clean_val_accuracy"] + 1e-9 >= base_clean - max_drop / 100
        if method == "auto" and target_val is None and keeps_source:
            break  # the default (or the first cheaper fallback) holds: nothing more to try
    if method != "auto":
        chosen, why = method, f"{method} as asked for"
    elif target_val is not None:
        best = max(rows, key=lambda r: (r["target_val_accuracy"], -COST_ORDER[r["method"]]))
        chosen = best["method"]
        why = (f"most accurate on the {len(target_val[1])} labelled target images (--target-val): "
               + ", ".join(f"{r['method']} {r['target_val_accuracy']:.1%}" for r in rows) + "; a tie goes to the cheaper method")
    else:
        chosen = rows[-1]["method"]
        why = f"the measured default ({ADAPT_DEFAULT}; no --target-val to choose with)"
        if chosen != ADAPT_DEFAULT:
            why += (f"; {ADAPT_DEFAULT} cost more than {max_drop:g} points of clean validation accuracy "
                    f"({rows[0]['clean_val_accuracy']:.1%} vs {base_clean:.1%}), so {chosen}")
    report = {
        "method": chosen,
        "asked": method,
        "why": why,
        "target_images": int(len(target)),
        "clean_val_accuracy_before": base_clean,
        "tried": rows,
        "int8_calibration": "target images" if chosen != "none" else "training images",
    }
    return models[chosen], report
