"""Teacher fine-tuning: the classic two stages of transfer learning.

1. Head: the backbone is frozen, so its pooled features are computed once per image and cached;
   the head is the linear probe on them (logistic regression, its regularisation chosen by
   cross-validation on the training images: compiler/training/probe.py). It is a candidate on its own
   and where stage 2 starts (LP-FT).
2. Top: the top of the backbone (from the config's `unfreeze_from` layer) is unfrozen and
   trained with the head at a low learning rate on augmented images. Batch-norm layers stay
   frozen (inference-mode statistics): with small batches, updating them ruins the pretrained
   features. Early stopping on validation accuracy; the best epoch replaces the probe only
   when its paired gain on the val images is beyond noise (Newcombe interval above 0): one
   or two val images never decide on their own.
   (Below CompileConfig.cv_below images there is no val split: compiler/training/cv_training.py makes
   the same choice by cross-validation.)

Runs under the current tf.distribute strategy (the default one on a single device).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgetl._compat import keras, tf
from edgetl.compiler.spec.config import CompileConfig
from edgetl.compiler.training.distribution import fit_callbacks
from edgetl.compiler.evaluation.stats import ci95, describe_accuracy
from edgetl.compiler.progress import console, progress_bar
from edgetl.compiler.data.streaming import augmented_batches, eval_data, iterate_batches, validation_data
from edgetl.models import DROPOUT_LAYER, FEATURES_LAYER, LOGITS_LAYER, PROBABILITIES_LAYER, final_pool_width


@dataclasses.dataclass
class StageResult:
    epochs_run: int
    best_epoch: int  # 0 means the stage never beat what it started from
    best_val_accuracy: float
    seconds_per_epoch: float = 0.0
    # Per-epoch figures as Keras logged them ("loss", "accuracy", "val_loss", "val_accuracy"):
    # the report draws the training curves from them.
    history: dict = dataclasses.field(default_factory=dict)
    # The best epoch minus the starting point on the same val images (PairedDifference.to_json
    # plus "best_epochs" and "verdict"), when KeepBest was given the val images.
    versus_start: dict | None = None
    # The images best_val_accuracy is on, and its Wilson interval: every accuracy report.json
    # gives carries both (the best epoch was chosen on these images, so it reads high).
    val_images: int = 0
    best_val_ci95: tuple[float, float] | None = None
    # Each epoch's val accuracy's interval (history["val_accuracy"] is Keras' bare log).
    val_accuracy_ci95: list | None = None

    def __post_init__(self):
        if self.val_images and self.best_val_ci95 is None:
            self.best_val_ci95 = ci95(self.best_val_accuracy, self.val_images)
        if self.val_images and self.val_accuracy_ci95 is None and self.history.get("val_accuracy"):
            self.val_accuracy_ci95 = [list(ci95(a, self.val_images)) for a in self.history["val_accuracy"]]


@dataclasses.dataclass
class ProbeResult:
    """The linear probe that heads the model: its C and its scores."""

    C: float
    folds: int
    cv_accuracy: float  # pooled out-of-fold accuracy on the training images at the chosen C
    cv_images: int
    cv_accuracy_by_C: dict
    val_accuracy: float | None  # on the val split, when there is one
    seconds: float
    cv_ci95: tuple[float, float] = (0.0, 1.0)  # Wilson, of cv_accuracy over cv_images
    val_images: int = 0
    val_ci95: tuple[float, float] | None = None
    # Leading feature columns read (the final map's pooled channels alone), or None: all of them
    # (with the pooled block's too, where the model has one: ModelConfig.pooled_block).
    columns: int | None = None
    # "final map" / "final map + block" -> pooled out-of-fold cross-entropy of each, when compared
    cv_log_loss_by_features: dict | None = None


@dataclasses.dataclass
class FinetuneResult:
    head: ProbeResult
    top: StageResult
    unfrozen_layers: int
    trainable_params: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class KeepBest(keras.callbacks.Callback):
    """Early stopping on validation accuracy that keeps the best weights, ties broken by loss.

    Unlike keras' EarlyStopping it starts from a baseline (the weights before this stage) and
    restores it when no epoch beats it, so a stage can never make the model worse on val.

    val: the (images, labels) of the val split. Given, the best epoch must also beat the
    starting weights beyond noise on those images (paired Newcombe interval above zero), as
    cross-validation demands in compiler/training/crossval.py: on a ~100-image val split "best" is
    often one image, and the flowers12 teacher chosen that way (107 vs 106 of 108 val images)
    scored 95.8% on test against its probe's 97.1%.
    """

    def __init__(self, patience: int, baseline: tuple[float, float] | None = None, target=None, val=None, batch_size: int = 32):
        super().__init__()
        self.patience = patience
        self.best = self._start = baseline or (-1.0, np.inf)  # (val_accuracy, val_loss)
        # The model whose weights are kept: the trained model itself by default, the student
        # alone when a distillation wrapper is trained (the teacher's weights never change).
        self.target = target
        self.val = val
        self.batch_size = batch_size
        self.best_epoch = 0
        self.epochs_run = 0
        self.versus_start = None
        self._best_weights = None
        self._start_weights = None
        self._wait = 0

    def hold_start(self, weights: list) -> None:
        """The weights the fit starts from (the probe's), taken before the fit begins: a fit
        resumed from a backup (BackupAndRestore, multi-device runs) has already replaced them
        by the interrupted run's when on_train_begin is called, and those must not be kept
        under the probe's name when no epoch beats the probe's score."""
        self._start_weights = weights

    def on_train_begin(self, logs=None):
        self.target = self.target or self.model
        if self._start_weights is None:
            self._start_weights = self.target.get_weights()
        self._best_weights = self._start_weights

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        acc, loss = float(logs["val_accuracy"]), float(logs["val_loss"])
        self.epochs_run = epoch + 1
        better = acc > self.best[0] or (acc == self.best[0] and loss < self.best[1])
        if better:
            self.best, self.best_epoch, self._wait = (acc, loss), epoch + 1, 0
            self._best_weights = self.target.get_weights()
        else:
            self._wait += 1
            if self._wait >= self.patience:
                self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.best_epoch and self.val is not None and len(self.val[1]):
            self._require_gain_beyond_noise()
        self.target.set_weights(self._best_weights)

    def _require_gain_beyond_noise(self) -> None:
        from edgetl.compiler.evaluation.stats import paired_difference

        x, y = self.val
        correct = {}
        for name, weights in (("best", self._best_weights), ("start", self._start_weights)):
            self.target.set_weights(weights)
            # Called directly, not through predict(): predict() inside fit() empties fit's History.
            predicted = np.concatenate([
                np.asarray(self.target(tf.constant(x[i : i + self.batch_size], tf.float32), training=False), np.float32).argmax(1)
                for i in range(0, len(x), self.batch_size)
            ])
            correct[name] = (predicted == y).tolist()
        diff = paired_difference(correct["best"], correct["start"])
        epochs = self.best_epoch
        self.versus_start = diff.to_json() | {"best_epochs": epochs, "verdict": diff.verdict(f"{epochs} epochs of training", "the probe")}
        if not (diff.significant and diff.difference > 0):
            self.best, self.best_epoch, self._best_weights = self._start, 0, self._start_weights


class EpochProgress(keras.callbacks.Callback):
    """A bar over epochs with the latest figures; Keras' own progbar is off.

    `ended` counts the epochs this fit ran: a fit resumed from a backup starts at a later epoch,
    so epoch numbers overstate the work done here (and understate the time per epoch)."""

    def __init__(self, advance):
        super().__init__()
        self.advance = advance
        self.ended = 0

    def on_epoch_end(self, epoch, logs=None):
        self.ended += 1
        logs = logs or {}
        status = "  ".join(
            f"{k} {logs[k]:.3f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in logs
        )
        self.advance(1, status=status)


def extract_features(model, images: np.ndarray, batch_size: int, description: str) -> np.ndarray:
    """Pooled backbone features of every image: one forward pass each."""
    features_model = keras.Model(model.input, model.get_layer(FEATURES_LAYER).output)
    # One trace for every batch, the short last one included (no retracing).
    spec = tf.TensorSpec([None, *images.shape[1:]], tf.float32)
    # float32 out even from a bf16 mixed-precision model: the probe fits on these features.
    forward = tf.function(lambda x: tf.cast(features_model(x, training=False), tf.float32), input_signature=[spec])
    # Batch by batch: images on disk (DiskImages) are read one batch at a time, and only the
    # features (N x 1600 floats for Lite0, the head's and the last block's: 6.4 kB an image) are kept.
    out = np.empty((len(images), features_model.output_shape[-1]), np.float32)
    with progress_bar(description, len(images)) as advance:
        for i, batch in zip(range(0, len(images), batch_size), iterate_batches(images, batch_size)):
            out[i : i + len(batch)] = forward(tf.constant(batch, tf.float32)).numpy()
            advance(len(batch))
    return out


def augment(image, label, seed=None):
    """Random resized crop, horizontal flip and mild photometric jitter, on 0..255 floats.

    The output keeps the input's size; a distillation step resizes the one view to the teacher's
    and the student's input sizes, so both see the same crop. `seed` (two integers) decides
    every draw (stateless ops: compiler/data/streaming.augmented_batches gives each image its
    own); without one, a seed is drawn from TensorFlow's global generator.
    """
    if seed is None:
        seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    crop_seed, flip_seed, brightness_seed, contrast_seed = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4))
    size = tf.shape(image)[:2]
    image = tf.cast(image, tf.float32)
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=crop_seed,
        min_object_covered=0.0,
        area_range=(0.6, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3),
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.image.resize(tf.slice(image, begin, crop), size)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    image = tf.image.stateless_random_brightness(image, 0.1 * 255.0, brightness_seed)
    image = tf.image.stateless_random_contrast(image, 0.85, 1.15, contrast_seed)
    return tf.clip_by_value(image, 0.0, 255.0), label


def training_dataset(x, y: np.ndarray, batch_size: int, seed: int):
    """Shuffled, augmented batches; `x` in memory or on disk (DiskImages, streamed)."""
    return augmented_batches(x, y, batch_size, seed, augment)


def _fit(model, data, val, epochs, keep_best, description, batch_size=None, val_batch_size=32):
    import time

    if epochs == 0:  # `--finetune-epochs 0` / `--distill-epochs 0`: the stage is skipped
        return StageResult(epochs_run=0, best_epoch=0, best_val_accuracy=keep_best.best[0], val_images=len(val[1]))
    start = time.perf_counter()
    keep_best.hold_start((keep_best.target or model).get_weights())
    with progress_bar(description, epochs) as advance:
        progress = EpochProgress(advance)
        fitted = model.fit(
            *data,
            batch_size=batch_size,
            validation_data=validation_data(val, val_batch_size),
            epochs=epochs,
            # BackupAndRestore (multi-device runs) restores an interrupted fit's weights and
            # epoch; KeepBest holds the probe's weights from before the fit (hold_start above).
            callbacks=[*fit_callbacks(), keep_best, progress],
            verbose=0,
        )
    elapsed = time.perf_counter() - start
    return StageResult(
        epochs_run=keep_best.epochs_run,
        best_epoch=keep_best.best_epoch,
        best_val_accuracy=keep_best.best[0],
        seconds_per_epoch=elapsed / progress.ended if progress.ended else 0.0,
        history={k: [float(v) for v in values] for k, values in fitted.history.items()},
        versus_start=keep_best.versus_start,
        val_images=len(val[1]),
    )


def set_trainable_top(model, unfreeze_from: str) -> int:
    """Freeze everything below `unfreeze_from` and every batch-norm layer; return #unfrozen layers."""
    names = [layer.name for layer in model.layers]
    if unfreeze_from not in names:
        raise ValueError(f"{model.name}: no layer named {unfreeze_from!r} to unfreeze from")
    start = names.index(unfreeze_from)
    unfrozen = 0
    for i, layer in enumerate(model.layers):
        # A frozen BatchNormalization layer runs in inference mode in tf_keras.
        layer.trainable = i >= start and not isinstance(layer, keras.layers.BatchNormalization)
        unfrozen += bool(layer.trainable and layer.weights)
    return unfrozen


def train_head(model, config: CompileConfig, train, val, strategy=None, label: str = "head", features=None) -> tuple[ProbeResult, object]:
    """Stage 1: the linear probe on the frozen backbone's pooled features, written into the
    model's "logits" layer. Returns the record and the Probe (with its out-of-fold scores).

    features: the training images' pooled features when already computed.
    """
    import time

    from edgetl.compiler.training.probe import features_name, fit_probe, set_head

    start = time.perf_counter()
    (x_train, y_train), (x_val, y_val) = train, val
    if features is None:
        features = extract_features(model, x_train, config.batch_size, f"{label}: features (train)")
    num_classes = model.get_layer(LOGITS_LAYER).units
    # C, and whether to read the pooled block's columns too, by 5-fold CV: cheap on features.
    probe = fit_probe(features, y_train, num_classes, seed=config.seed, first_columns=final_pool_width(model))
    set_head(model, probe)
    val_accuracy = None
    if len(x_val):
        f_val = extract_features(model, x_val, config.batch_size, f"{label}: features (val)")
        val_accuracy = float(np.mean(probe.predict_proba(f_val).argmax(1) == y_val))
    cv_accuracy = probe.cv_accuracy[probe.C]
    by_features = ({features_name(columns): round(loss, 4) for columns, loss in probe.log_loss_by_columns.items()}
                   if len(probe.log_loss_by_columns) > 1 else None)
    console.print(
        f"    {label}: linear probe C={probe.C:g}" + (f" on the {features_name(probe.columns)}'s features" if by_features else "")
        + f", {probe.folds}-fold CV accuracy on the training images {describe_accuracy(cv_accuracy, len(y_train))}"
        + (f", val {describe_accuracy(val_accuracy, len(y_val))}" if val_accuracy is not None else "")
    )
    record = ProbeResult(
        C=probe.C,
        folds=probe.folds,
        cv_accuracy=cv_accuracy,
        cv_images=int(len(y_train)),
        cv_accuracy_by_C={f"{c:g}": round(a, 4) for c, a in probe.cv_accuracy.items()},
        val_accuracy=val_accuracy,
        seconds=time.perf_counter() - start,
        cv_ci95=ci95(cv_accuracy, len(y_train)),
        val_images=int(len(y_val)) if val_accuracy is not None else 0,
        val_ci95=ci95(val_accuracy, len(y_val)) if val_accuracy is not None else None,
        columns=probe.columns,
        cv_log_loss_by_features=by_features,
    )
    return record, probe



def prepare_top(model, unfreeze_from: str, compile_with, val, batch_size: int, trained=None):
    """Unfreeze the top, compile, and measure where stage 2 starts from on val.

    trained: the compiled model that fit() will train (a distillation wrapper around `model`).
    """
    unfrozen = set_trainable_top(model, unfreeze_from)
    compile_with()
    loss, acc = (trained or model).evaluate(**eval_data(val, batch_size), verbose=0)
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    console.print(f"    unfrozen {unfrozen} layers, {trainable:,} trainable parameters; val accuracy before: "
                  f"{describe_accuracy(float(acc), len(val[1]))}")
    return unfrozen, trainable, (float(acc), float(loss))


def finetune(model, unfreeze_from: str, config: CompileConfig, train, val, strategy=None) -> FinetuneResult:
    """Fine-tune `model` (made by create_model inside `strategy`'s scope) in place.

    unfreeze_from: the first backbone layer trained in stage 2 (the model config's).
    """
    strategy = strategy or tf.distribute.get_strategy()
    head_result, _ = train_head(model, config, train, val, strategy, label="teacher")

    def compile_model():
        with strategy.scope():
            model.compile(
                keras.optimizers.Adam(config.finetune_learning_rate),
                keras.losses.SparseCategoricalCrossentropy(),
                metrics=["accuracy"],
            )

    unfrozen, trainable, start = prepare_top(model, unfreeze_from, compile_model, val, config.batch_size)
    top_result = _fit(
        model,
        (training_dataset(*train, config.batch_size, config.seed),),
        val,
        config.finetune_epochs,
        KeepBest(patience=config.patience, baseline=start, val=val, batch_size=config.batch_size),
        "teacher: fine-tune top of backbone",
        val_batch_size=config.batch_size,
    )
    return FinetuneResult(head_result, top_result, unfrozen, trainable)
