"""Adaptation to the deployment camera from unlabelled target images (`--unlabeled DIR`).

Methods (`--adapt`), each a function from a float Keras model to a new one (the input model is
never changed), so the adapted model is what gets exported, quantized and checked:

  none  the model as trained.
  bn    AdaBN (Li et al., 2016): every batch-norm layer's moving mean and variance re-estimated
        on the target images (relative to the source images); nothing else changes. In the exported graph batch norm is folded
        into the convolutions, so the adapted file costs nothing extra at inference, and its
        int8 ranges are calibrated on target images too (`calibration_images`).
  shot  AdaBN, then SHOT's objective (Liang et al., ICML 2020): information maximisation (each
        prediction confident, the predictions together diverse) plus cross-entropy on
        pseudo-labels from class centroids in feature space, the classifier kept fixed
        ("hypothesis transfer"). Only the batch-norm scale and shift are trained (as TENT does),
        with the batch-norm layers in inference mode: on a few hundred images this cannot
        wander far from the source model, and it folds into the int8 file like AdaBN.
  camera  a simulated camera (blur, exposure, contrast, white balance, noise, JPEG) fitted to
        the target images without labels, then the model trained on the labelled training
        images, half of each batch through that camera (compiler/training/camera.py). When
        the target images fit no camera, nothing is trained.

The statistics are matched relative to the source (training) images, not replaced by the
target's (adapt_batch_norm says why): on the target images each batch-norm layer then
produces what it produced on the source images, in mean and variance per channel.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from edgetl._compat import keras, tf
from edgetl.compiler.spec.modes import AUTO_WITHOUT_TARGET_VAL
from edgetl.compiler.training.camera import LEARNING_RATE, choose_blend, fit_camera, train_through_camera, training_steps
from edgetl.models import FEATURES_LAYER, LOGITS_LAYER

METHODS = ("none", "bn", "camera", "shot")
# Cheapest first: a tie on the labelled target set goes to the cheaper method.
COST_ORDER = {"none": 0, "bn": 1, "camera": 2, "shot": 3}


@dataclasses.dataclass
class AdaptResult:
    method: str
    images: int
    seconds: float
    bn_layers: int = 0
    epochs: int = 0
    pseudo_label_agreement: list[float] = dataclasses.field(default_factory=list)  # with the model's own argmax, per epoch
    camera: dict | None = None  # camera: the fitted chain (compiler/training/camera.py CameraFit)

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


STATS_IMAGES = 192  # images per statistics pass (one batch: memory, not time, is the limit)


def _sample(images: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(images) <= n:
        return images
    return images[np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))]


def source_statistics(model, images: np.ndarray, batch_size: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per batch-norm layer, the (mean, variance) per channel of its input when `model` runs
    as it is (inference mode) on `images`: what each layer saw on the source data."""
    return statistics_function(model, batch_size)(images)


def statistics_function(model, batch_size: int = 32):
    """`source_statistics` for one model as a function of the images, traced once (for callers
    that measure many image sets, such as compiler/training/camera.py's fit)."""
    layers = batch_norm_layers(model)
    probe = keras.Model(model.input, [layer.input for layer in layers])

    @tf.function
    def moments(x):
        outs = probe(x, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        axes = lambda t: list(range(len(t.shape) - 1))  # noqa: E731 - every axis but channels
        return [tf.reduce_mean(t, axes(t)) for t in outs], [tf.reduce_mean(t * t, axes(t)) for t in outs]

    def statistics(images: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        sums = [np.zeros(layer.moving_mean.shape, np.float64) for layer in layers]
        squares = [np.zeros(layer.moving_mean.shape, np.float64) for layer in layers]
        for i in range(0, len(images), batch_size):
            batch = images[i : i + batch_size]
            means, mean_squares = moments(tf.constant(batch, tf.float32))
            for j in range(len(layers)):
                sums[j] += len(batch) * means[j].numpy()
                squares[j] += len(batch) * mean_squares[j].numpy()
        n = len(images)
        return [(sums[j] / n, np.maximum(squares[j] / n - (sums[j] / n) ** 2, 0.0)) for j in range(len(layers))]

    return statistics


def adapt_batch_norm(model, images: np.ndarray, source: np.ndarray | None = None, *, max_images: int = STATS_IMAGES,
                     batch_size: int = 32, seed: int = 0):
    """AdaBN: a copy of `model` whose batch-norm moving statistics are re-estimated on the
    target `images`, so that on them every batch-norm layer's output has the per-channel mean
    and variance the original model's had on the `source` images. Only moving_mean and
    moving_variance change.

    Plain AdaBN sets each layer's statistics to the target's, which is right only when the
    model's statistics are those of its training data. edgetl's models are fine-tuned with
    batch norm frozen at its ImageNet statistics, so plain AdaBN would renormalise what the
    head learnt to read (measured on flowers12: 97.9% -> 28.7% clean). With `source` given,
    for a layer with statistics (mu_I, var_I) whose input had (mu_S, var_S) on the source and
    has (mu_T, var_T) on the target once the layers before it are adapted:
        sqrt(var' + eps) = sqrt(var_T + eps) * sqrt(var_I + eps) / sqrt(var_S + eps)
        mu' = mu_T - (mu_S - mu_I) * sqrt(var_T + eps) / sqrt(var_S + eps)
    (mu_S = mu_I, var_S = var_I gives plain AdaBN; target = source gives the model back).
    The target statistics come from ONE training-mode pass over (a seeded sample of up to
    `max_images` of) the target images, the batch-norm scale and shift temporarily set so that
    each layer already outputs what its adapted version will: so every layer sees its input as
    it will be after adaptation, and the whole sample is the population (no momentum, no
    per-batch noise). Returns (adapted copy, AdaptResult).
    """
    start = time.perf_counter()
    if len(images) == 0:
        raise ValueError("batch-norm adaptation needs at least one target image")
    adapted = copy_model(model)
    layers = batch_norm_layers(adapted)
    if any(layer.gamma is None or layer.beta is None for layer in layers):
        raise ValueError("batch-norm adaptation needs every batch-norm layer to have a scale and a shift")
    sample = _sample(images, max_images, seed)
    if source is not None:
        reference = source_statistics(model, _sample(source, max_images, seed), batch_size)
    else:
        reference = [(layer.moving_mean.numpy().astype(np.float64), layer.moving_variance.numpy().astype(np.float64)) for layer in layers]
    saved = [(layer.momentum, layer.trainable, layer.gamma.numpy(), layer.beta.numpy()) for layer in layers]
    # In training mode a layer outputs gamma * z + beta with z batch-normalised; the adapted
    # layer must output gamma * (a z + b) + beta, with a, b the source's normalised moments.
    factors = []
    for layer, (mu_s, var_s) in zip(layers, reference):
        mu_i = layer.moving_mean.numpy().astype(np.float64)
        sd_i = np.sqrt(layer.moving_variance.numpy().astype(np.float64) + layer.epsilon)
        sd_s = np.sqrt(var_s + layer.epsilon)
        a, b = sd_s / sd_i, (mu_s - mu_i) / sd_i
        gamma, beta = layer.gamma.numpy().astype(np.float64), layer.beta.numpy().astype(np.float64)
        layer.gamma.assign((gamma * a).astype(np.float32))
        layer.beta.assign((beta + gamma * b).astype(np.float32))
        layer.momentum = 0.0  # the moving statistics become this batch's
        layer.trainable = True  # a frozen tf_keras batch norm would ignore training=True
        factors.append((a, b))
    adapted(tf.constant(sample, tf.float32), training=True)
    for layer, (a, b), (momentum, trainable, gamma, beta) in zip(layers, factors, saved):
        mu_t = layer.moving_mean.numpy().astype(np.float64)
        sd_t = np.sqrt(layer.moving_variance.numpy().astype(np.float64) + layer.epsilon)
        sd_new = sd_t / a
        layer.moving_mean.assign((mu_t - b * sd_new).astype(np.float32))
        layer.moving_variance.assign(np.maximum(sd_new**2 - layer.epsilon, 0.0).astype(np.float32))
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
        layer.momentum, layer.trainable = momentum, trainable
    return adapted, AdaptResult("bn", len(sample), time.perf_counter() - start, bn_layers=len(layers))


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


def adapt(model, method: str, images: np.ndarray, *, source: np.ndarray | None = None, labelled=None, clean_val=None,
          batch_size: int = 32, seed: int = 0, epochs: int = 3, learning_rate: float = 1e-3):
    """The model adapted by `method` on the target `images` (a new model; "none" returns `model`).

    source: clean training images (statistics are matched from them); labelled: (x, y) training
    images with labels, which `camera` trains on; clean_val: (x, y) clean validation images,
    which `camera` keeps its accuracy on."""
    if method not in METHODS:
        raise ValueError(f"unknown adaptation {method!r}; one of {', '.join(METHODS)}")
    if method == "none":
        return model, AdaptResult("none", len(images), 0.0)
    if method == "camera":
        return adapt_camera(model, images, source=source, labelled=labelled, clean_val=clean_val, batch_size=batch_size, seed=seed)
    adapted, bn = adapt_batch_norm(model, images, source, batch_size=batch_size, seed=seed)
    if method == "bn":
        return adapted, bn
    tuned, result = self_train(adapted, images, epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, seed=seed)
    result.seconds += bn.seconds
    return tuned, result


def adapt_camera(model, images: np.ndarray, *, source, labelled, clean_val=None, batch_size: int = 32, seed: int = 0,
                 epochs: int = 2, learning_rate: float = LEARNING_RATE, known_camera: list | None = None):
    """`camera`: fit a camera to the target images, train through it, blend with the model
    (compiler/training/camera.py); minutes, so both steps show progress.

    known_camera: the chain that made the target images, used instead of a fit. Only a benchmark
    knows it (benchmarks/domain_shift.py's `camera_exact`): it tells how much of what `camera`
    misses is the fit's error and how much the training's limit."""
    from edgetl.compiler.progress import activity, progress_bar

    if source is None or labelled is None:
        raise ValueError("camera adaptation needs the clean training images, with their labels")
    start = time.perf_counter()
    if known_camera is None:
        with activity("camera: fitting it to the device images", unit="settings measured") as advance:
            fit = fit_camera(model, source, images, seed=seed, progress=advance)
        record, camera = fit.to_json(), fit.steps
    else:
        camera = [tuple(step) for step in known_camera]
        record = {"steps": camera, "known": True}
    adapted = model
    if camera:
        batches = training_steps(len(labelled[1]), batch_size, epochs)
        with progress_bar("camera: training through it", batches) as advance:
            tuned, _ = train_through_camera(model, *labelled, camera, epochs=epochs, learning_rate=learning_rate,
                                            batch_size=batch_size, seed=seed, progress=advance)
        adapted, share, counts = choose_blend(model, tuned, clean_val, batch_size)
        record.update(blend_share=share, clean_val_correct={str(k): v for k, v in counts.items()})
    return adapted, AdaptResult("camera", len(images), time.perf_counter() - start, epochs=epochs if camera else 0,
                                camera=record)


def calibration_images(target: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """A seeded sample of `n` target images (all when fewer) for int8 ranges: the deployed file
    sees the device's pixels, so its activation ranges should come from them."""
    rng = np.random.default_rng(seed)
    if len(target) <= n:
        return target
    return target[np.sort(rng.choice(len(target), n, replace=False))]


# The method `--adapt auto` uses without a labelled target set, from benchmarks/domain_shift.py
# (README, "Deploying behind another camera": flowers12, EfficientNet-Lite0, four simulated
# cameras, two seeds, device images and the clean images matched against them from disjoint
# halves of train/): camera raised accuracy on the device images on all eight pairs (+1.3 to
# +12.9 points, beyond noise on five) and changed clean accuracy by +0.0 to -1.7 points (all
# within noise); bn cost 3.7 to 25.4 clean points, and shot (cheap camera, earlier protocol)
# 18. A user who passes --unlabeled deploys on that camera, so without a labelled
# --target-val, camera it is; device images that fit no camera change nothing.
ADAPT_DEFAULT = AUTO_WITHOUT_TARGET_VAL.value


def _accuracy(model, x: np.ndarray, y: np.ndarray, batch_size: int) -> float | None:
    from edgetl.runtime.keras_model import KerasSession

    if len(y) == 0:
        return None
    return float(np.mean(KerasSession(model=model).predict(x, batch_size).argmax(1) == y))


def choose_and_adapt(model, method: str, target: np.ndarray, *, source: np.ndarray | None, clean_val, target_val=None,
                     labelled=None, max_drop: float = 1.0, batch_size: int = 32, seed: int = 0, epochs: int = 3):
    """Adapt `model` to the unlabelled `target` images by `method` ("auto" chooses); a new model.

    source: training images (what the model's statistics are matched from; see adapt_batch_norm).
    labelled: (x, y) training images with labels (what `camera` trains on).
    clean_val: (x, y) labelled source images (the validation split), to check that adaptation
    keeps what the model knew; target_val: (x, y) labelled target images or None.
    auto with target_val: every method is tried and the most accurate there wins (a tie goes
    to the cheaper one). auto without: ADAPT_DEFAULT, unless it costs more than `max_drop`
    points of clean validation accuracy, then none (the only label-free
    check there is: a collapse to a few classes shows up there first).
    Returns (model, report dict).
    """
    from edgetl.compiler.evaluation.stats import describe_accuracy

    if method == "auto":
        tried = list(METHODS) if target_val is not None else [ADAPT_DEFAULT] + (["none"] if ADAPT_DEFAULT != "none" else [])
    else:
        tried = [method]
    rows, models = [], {}
    scored: dict[int, float | None] = {}  # id(model) -> clean val accuracy: each model predicted once

    def clean_accuracy(m) -> float | None:
        if id(m) not in scored:
            scored[id(m)] = _accuracy(m, *clean_val, batch_size)
        return scored[id(m)]

    base_clean = clean_accuracy(model)
    clean_n = int(len(clean_val[1]))
    for name in tried:
        adapted, result = adapt(model, name, target, source=source, labelled=labelled, clean_val=clean_val, batch_size=batch_size,
                                seed=seed, epochs=epochs)
        blend = result.camera or {}
        if blend.get("clean_val_correct"):  # the camera's blend choice already scored the model it returns
            scored[id(adapted)] = blend["clean_val_correct"][str(blend["blend_share"])] / len(clean_val[1])
        row = {**result.to_json(), "clean_val_accuracy": clean_accuracy(adapted)}
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
               + ", ".join(f"{r['method']} {r['target_val']}" for r in rows) + "; a tie goes to the cheaper method")
    else:
        chosen = rows[-1]["method"]
        why = f"the measured default ({ADAPT_DEFAULT}; no --target-val to choose with)"
        if chosen != ADAPT_DEFAULT:
            why += (f"; {ADAPT_DEFAULT} cost more than {max_drop:g} points of clean validation accuracy "
                    f"({describe_accuracy(rows[0]['clean_val_accuracy'], clean_n)} vs {describe_accuracy(base_clean, clean_n)}), so {chosen}")
    report = {
        "method": chosen,
        "asked": method,
        "why": why,
        "target_images": int(len(target)),
        "clean_val_accuracy_before": base_clean,
        "clean_val_images": clean_n,  # the n of every clean_val_accuracy here
        "tried": rows,
        "int8_calibration": "target images" if chosen != "none" else "training images",
    }
    return models[chosen], report
