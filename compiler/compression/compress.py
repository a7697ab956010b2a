"""Compression with tfmot: quantization-aware training, magnitude pruning, weight clustering,
and their combinations (tfmot's collaborative optimization).

Every technique is a function that returns a new model and never touches its input (tfmot's
style): `quantize_aware`, `prune`, `strip`, `prune_preserving_qat`, `cluster`,
`strip_clusters`, `cluster_preserving_qat`. The chain for the smallest download is prune ->
strip -> cluster -> strip_clusters -> cluster_preserving_qat (PCQAT). `fine_tune` then trains
the returned model in place for a few epochs, with the distillation loss when a teacher is
given (compiler.training.distill's `Distiller`). The compile keeps the last epoch's weights
(`keep="last"`), so the val split that then gates the file played no part in making it;
`keep="best"` keeps the best epoch on val, for studies that score on a separate test split.

Our models are flat functional graphs (models/_registry.py), so tfmot can wrap every layer.
What stays float:
  * QAT: the weightless "preprocess" layer (ImagePreprocessing, a custom layer tfmot does not
    know) and every layer tfmot's default 8-bit registry does not support (MobileNetV3's
    hard-swish TFOpLambda add/multiply and Multiply layers). The TFLite converter quantizes
    those from the calibration images (`quantize.convert_tflite(qat_model, "int8", cal)`).
    `float_layers(qat_model)` lists them.
  * Pruning: only Conv2D kernels (1x1 and kxk) by default. The classifier head ("logits")
    and depthwise kernels are left dense: on EfficientNet-Lite0 with a 12-class head they are
    5.4% (depthwise) and 0.5% (head) of the kernel weights, so pruning them saves little, and
    they are the most sensitive to it (each depthwise filter has only 9 or 25 weights; each
    head weight is a direct vote for a class). 50% of the Conv2D kernels is 47% of all. `prune(..., prune_head=True)` prunes the head too, worth it
    with a large head (1000 classes: 1.28M weights on Lite0).

Fine-tuning keeps batch-norm layers frozen (inference-mode statistics, as in
compiler.training.finetune): with small batches, updating them ruins the pretrained features, and QAT
then learns ranges for the statistics the converter folds into the convolutions.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import numpy as np

from edgetl._compat import keras, tf
from edgetl.compiler.evaluation.stats import ci95
from edgetl.compiler.training.finetune import EpochProgress, KeepBest, StageResult
from edgetl.compiler.progress import progress_bar
from edgetl.models import LOGITS_LAYER, PREPROCESS_LAYER

# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _tfmot():
    import tensorflow_model_optimization as tfmot

    return tfmot


def _custom_objects() -> dict:
    from edgetl.runtime.keras_layers import ImagePreprocessing

    return {"ImagePreprocessing": ImagePreprocessing}


def _copy(model):
    """A model with new layers and the same weights: nothing done to it reaches `model`."""
    with _tfmot().quantization.keras.quantize_scope(_custom_objects()):
        clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def copy_model(model):
    """A copy of an ordinary (not tfmot-wrapped) model with new variables, made in the current
    scope: inside `strategy.scope()`, a mirrored copy of a plain model for distributed fine-tuning."""
    return _copy(model)


def _inner(layer):
    """The layer a tfmot wrapper (QuantizeWrapper, PruneLowMagnitude, QuantizeAnnotate) wraps."""
    while hasattr(layer, "layer") and isinstance(layer.layer, keras.layers.Layer):
        layer = layer.layer
    return layer


def find_layer(model, name: str):
    """The layer called `name`, or the tfmot wrapper around it ("quant_logits",
    "prune_low_magnitude_logits", ...): what a compressed model's layer is found by."""
    for layer in model.layers:
        if layer.name == name:
            return layer
    for layer in model.layers:
        if _inner(layer).name == name:
            return layer
    raise ValueError(f"{model.name}: no layer named {name!r} (or wrapping one)")


def logits_model(model):
    """The same layers up to the classifier's logits (before the softmax), wrapped or not."""
    return keras.Model(model.input, find_layer(model, LOGITS_LAYER).output, name=f"{model.name}_logits")


def _inbound_layers(layer) -> list:
    return [l for node in layer._inbound_nodes for l in tf.nest.flatten(node.inbound_layers)]  # noqa: SLF001


# --------------------------------------------------------------------------------------------
# Quantization-aware training
# --------------------------------------------------------------------------------------------


def _quantizable(layer, registry) -> bool:
    if isinstance(layer, keras.layers.InputLayer) or layer.name == PREPROCESS_LAYER:
        return False
    if isinstance(layer, keras.layers.BatchNormalization):
        # Supported only folded after a conv/dense (tfmot's layout transforms); a lone
        # batch norm stays float.
        inbound = _inbound_layers(layer)
        return len(inbound) == 1 and isinstance(
            _inner(inbound[0]), (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
        )
    return registry.supports(layer)


def quantize_aware(model, calibration: np.ndarray | None = None, scheme=None, batch_size: int = 32):
    """A QAT copy of `model`: fake-quant (8-bit, per-channel weights) on every layer tfmot's
    default registry supports; the preprocessing layer and unsupported layers stay float.

    calibration: uint8 pixels (quantize.calibration_sample) to start every quantization range
    from its min/max on real images (`calibrate_ranges`); strongly recommended for a short
    fine-tune (see there). scheme: a tfmot QuantizeScheme (default: Default8BitQuantizeScheme);
    prune_preserving_qat passes the prune-preserving one. The input model is left untouched.
    """
    tfmot = _tfmot()
    qk = tfmot.quantization.keras
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry,
    )

    if any(type(layer).__name__ == "PruneLowMagnitude" for layer in model.layers):
        raise ValueError("strip the pruning wrappers first: quantize_aware(strip(pruned_model))")
    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()
    source = _copy(model)

    def annotate(layer):
        if _quantizable(layer, registry):
            return qk.quantize_annotate_layer(layer)
        return layer

    with qk.quantize_scope(_custom_objects()):
        # clone_function gets the copy's layers; the annotated clone shares them, and
        # quantize_apply clones again with weights, so `model` itself is never wrapped.
        annotated = keras.models.clone_model(source, clone_function=annotate)
        annotated.set_weights(source.get_weights())
        kwargs = {"scheme": scheme} if scheme is not None else {}
        qat = qk.quantize_apply(annotated, **kwargs)
    if calibration is not None:
        calibrate_ranges(qat, calibration, batch_size)
    return qat


def calibrate_ranges(model, images: np.ndarray, batch_size: int = 32) -> int:
    """Set every quantization range of a QAT model to its min/max over `images`; returns how many.

    tfmot starts activation ranges at [-6, 6] and moves them by an exponential moving average
    with decay 0.999 per training step: a few epochs on a small dataset (20 steps each on
    flowers12) leave them near [-6, 6], which clips EfficientNet's linear bottlenecks (measured:
    -7 points after 3 QAT epochs). Weight ranges are stored at the last training step only, so
    an untrained QAT model evaluates with placeholder ranges. Starting from the calibrated
    ranges (what post-training quantization uses) the QAT model is at PTQ accuracy before its
    first step, and fine-tuning improves from there.

    Runs `model` in inference mode (dropout off, batch norm frozen) on `images` (uint8 or
    float pixels) with tfmot's range updates switched to "min/max so far" for the duration.
    """
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    seen: dict[int, tuple] = {}
    moving_average, last_value = quant_ops.MovingAvgQuantize, quant_ops.LastValueQuantize

    def observe(original):
        def quantize(inputs, min_var, max_var, **kwargs):
            kwargs.update(is_training=True)
            if original is moving_average:
                kwargs.update(ema_decay=0.0)  # the moving average becomes this batch's range
            previous = seen.get(id(min_var))
            out = original(inputs, min_var, max_var, **kwargs)
            if previous is not None:  # widen to the range over every batch so far
                min_var.assign(tf.minimum(min_var, previous[0]))
                max_var.assign(tf.maximum(max_var, previous[1]))
            seen[id(min_var)] = (tf.identity(min_var), tf.identity(max_var))
            return out

        return quantize

    images = np.asarray(images)
    quant_ops.MovingAvgQuantize, quant_ops.LastValueQuantize = observe(moving_average), observe(last_value)
    try:
        for i in range(0, len(images), batch_size):
            model(tf.constant(images[i : i + batch_size], tf.float32), training=False)
    finally:
        quant_ops.MovingAvgQuantize, quant_ops.LastValueQuantize = moving_average, last_value
    return len(seen)


def conversion_copy(model):
    """A copy of a QAT model ready for the TFLite converter: all-zero weight channels get a
    usable quantization range.

    A weight channel whose values are all zero (pruning empties whole channels: 66 of them in
    a 50%-pruned EfficientNet-Lite0) has the range [0, 0] in QAT, which the converter turns
    into a scale near 1e-9; the channel's bias, quantized with input scale x weight scale, then
    overflows int32 and is clamped to a wrong value (measured: -4.6 points). Such channels get
    the median range of their layer instead: their weights still quantize to exactly 0, the
    model computes the same, and the bias fits. Post-training quantization does not need this
    (the converter rescales weights whose bias would overflow). The input model is untouched,
    except a cluster-preserving QAT model (PCQAT), whose quantizers tfmot cannot rebuild from
    config around trained weights: its ranges are widened in place, which changes nothing it
    computes (a zero weight quantizes to zero under any symmetric range).
    """
    clustered = any("cluster_centroids" in weight.name for weight in model.weights)
    copy = model if clustered else _copy(model)
    for layer in copy.layers:
        ranges: dict[str, dict[str, object]] = {}
        for weight in layer.weights:
            base = weight.name.split("/")[-1].split(":")[0]
            for end in ("_min", "_max"):
                if base.endswith(end) and "kernel" in base:
                    ranges.setdefault(base[: -len(end)], {})[end] = weight
        for pair in ranges.values():
            if len(pair) != 2 or len(pair["_min"].shape) != 1:
                continue
            lo, hi = pair["_min"].numpy(), pair["_max"].numpy()
            width = hi - lo
            dead = width <= 1e-6 * max(float(np.median(width)), 1e-12)
            if dead.any() and not dead.all():
                half = float(np.median(width[~dead])) / 2
                pair["_min"].assign(np.where(dead, -half, lo))
                pair["_max"].assign(np.where(dead, half, hi))
    return copy


def float_layers(model) -> list[str]:
    """Layers of a QAT model that compute in float ("name (Class)"), weightless or not."""
    out = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in ("QuantizeWrapperV2", "QuantizeWrapper", "QuantizeLayer", "InputLayer"):
            continue
        out.append(f"{layer.name} ({kind})")
    return out


def _restricted_scheme(base, *args):
    """An instance of tfmot scheme class `base` whose registry supports only what the default
    8-bit registry supports.

    The collaborative schemes' registries (prune-, cluster-preserving) call every weightless
    layer "supported" (our ImagePreprocessing, MobileNetV3's TFOpLambda layers) and then fail to
    find a quantize config for it when such a layer feeds a quantized one; here those layers
    stay float, as in quantize_aware.
    """
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry,
    )

    class Restricted(base):
        def get_quantize_registry(self):
            registry = super().get_quantize_registry()
            default = default_8bit_quantize_registry.Default8BitQuantizeRegistry()
            own_supports = registry.supports
            registry.supports = lambda layer: default.supports(layer) and own_supports(layer)
            return registry

    return Restricted(*args)


def _prune_preserve_scheme():
    return _restricted_scheme(_tfmot().experimental.combine.Default8BitPrunePreserveQuantizeScheme)


def prune_preserving_qat(model, calibration: np.ndarray | None = None, batch_size: int = 32):
    """QAT that keeps the zeros of a pruned, stripped model (tfmot's prune-preserving scheme:
    the weight quantizers multiply by the sparsity mask found in the weights).
    calibration: as in quantize_aware."""
    return quantize_aware(model, calibration, scheme=_prune_preserve_scheme(), batch_size=batch_size)


# --------------------------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------------------------


def _prunable(layer, prune_head: bool, prune_depthwise: bool) -> bool:
    if layer.name == PREPROCESS_LAYER:
        return False
    if layer.name == LOGITS_LAYER:
        return prune_head
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return prune_depthwise
    return isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    return max(1, math.ceil(num_images / batch_size))


def pruning_steps(num_images: int, batch_size: int, ramp_epochs: float, begin_epoch: float = 0.0) -> tuple[int, int]:
    """(begin_step, end_step) for a sparsity ramp over `ramp_epochs` epochs of fine_tune."""
    per_epoch = steps_per_epoch(num_images, batch_size)
    begin = int(round(begin_epoch * per_epoch))
    return begin, begin + max(1, int(round(ramp_epochs * per_epoch)))


def prune(
    model,
    target_sparsity: float,
    begin_step: int,
    end_step: int,
    frequency: int | None = None,
    prune_head: bool = False,
    prune_depthwise: bool = False,
):
    """A copy of `model` with tfmot magnitude pruning on its Conv2D kernels (see module doc).

    Sparsity follows tfmot's PolynomialDecay (cubic) from 0 at `begin_step` to
    `target_sparsity` at `end_step` (optimizer steps of the following fine_tune), the masks
    updated every `frequency` steps (default: 16 updates over the ramp); end_step is moved up
    to the next update so the target is really reached. Train it with fine_tune (which adds
    tfmot's UpdatePruningStep callback), then `strip` it.
    """
    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target_sparsity}")
    if not 0 <= begin_step < end_step:
        raise ValueError(f"need 0 <= begin_step < end_step, got {begin_step} and {end_step}")
    sparsity = _tfmot().sparsity.keras
    frequency = frequency or max(1, (end_step - begin_step) // 16)
    end_step = begin_step + math.ceil((end_step - begin_step) / frequency) * frequency
    schedule = sparsity.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=float(target_sparsity),
        begin_step=int(begin_step),
        end_step=int(end_step),
        frequency=int(frequency),
    )
    chosen = {layer.name for layer in model.layers if _prunable(layer, prune_head, prune_depthwise)}
    if not chosen:
        raise ValueError(f"{model.name}: no Conv2D or Dense layer to prune")
    pairs = []  # (new layer, layer of `model`): fresh layers, so `model` is never shared

    def wrap(layer):
        fresh = layer.__class__.from_config(layer.get_config())
        pairs.append((fresh, layer))
        if layer.name in chosen:
            return sparsity.prune_low_magnitude(fresh, pruning_schedule=schedule)
        return fresh

    with _tfmot().quantization.keras.quantize_scope(_custom_objects()):
        pruned = keras.models.clone_model(model, clone_function=wrap)
    for fresh, original in pairs:
        fresh.set_weights(original.get_weights())
    return pruned


def _pruning_wrappers(model) -> list:
    return [layer for layer in model.layers if type(layer).__name__ == "PruneLowMagnitude"]


def strip(model):
    """A plain Keras copy of a pruned model: the masks applied to the kernels, wrappers removed.

    Same outputs as the pruned model in inference (the wrapper multiplies by the mask too).
    """
    sparsity = _tfmot().sparsity.keras
    with sparsity.prune_scope(), _tfmot().quantization.keras.quantize_scope(_custom_objects()):
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        for wrapper in _pruning_wrappers(copy):
            # Weights trained after the last mask update may be non-zero under a zero mask.
            for weight, mask, _threshold in wrapper.pruning_vars:
                weight.assign(weight * tf.cast(mask, weight.dtype))
        stripped = sparsity.strip_pruning(copy)
        return _copy(stripped)


def _kernels(model, chosen: Callable) -> list[np.ndarray]:
    out = []
    for layer in model.layers:
        inner = _inner(layer)
        if type(layer).__name__ == "PruneLowMagnitude":
            for weight, mask, _threshold in layer.pruning_vars:
                out.append(weight.numpy() * mask.numpy())
        elif chosen(inner):
            # By variable name: a QAT wrapper replaces the layer's `kernel` attribute by its
            # fake-quantized tensor; the variable is still in `weights`.
            for weight in layer.weights:
                if weight.name.split("/")[-1].split(":")[0] in ("kernel", "depthwise_kernel"):
                    out.append(weight.numpy())
    return out


def sparsity_of(model, prune_head: bool = False, prune_depthwise: bool = False) -> float:
    """Measured fraction of zero weights in the prunable kernels.

    A pruned model: the wrapped kernels (masks applied). A stripped or QAT model: the kernels
    `prune` would choose with the same flags (so prune -> strip -> sparsity_of is consistent).
    """
    if _pruning_wrappers(model):
        kernels = _kernels(model, lambda layer: False)
    else:
        kernels = _kernels(model, lambda layer: _prunable(layer, prune_head, prune_depthwise))
    total = sum(k.size for k in kernels)
    return float(sum(int(np.count_nonzero(k == 0)) for k in kernels) / total) if total else 0.0


def weight_sparsity(model) -> dict:
    """Zero fraction over every conv/dense kernel (head and depthwise included) and the count."""
    kernels = _kernels(
        model, lambda layer: isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense))
    )
    total = sum(k.size for k in kernels)
    zeros = sum(int(np.count_nonzero(k == 0)) for k in kernels)
    return {"weights": int(total), "zeros": int(zeros), "sparsity": zeros / total if total else 0.0}


# --------------------------------------------------------------------------------------------
# Weight clustering (sparsity-preserving), for pruned models
# --------------------------------------------------------------------------------------------


def cluster(model, clusters: int, preserve_sparsity: bool = True):
    """A copy of `model` with tfmot weight clustering on the kernels `prune` chooses (Conv2D).

    Each kernel's non-zero weights are shared among `clusters` trainable centroids (k-means++
    start, the associations refreshed every step); with preserve_sparsity the zeros of a
    pruned model stay exactly zero. Why after pruning: 50% magnitude pruning halves the
    weights but leaves the survivors' int8 codes nearly uniform (about 7.5 bits each), so
    gzip finds little more than the zeros; with 16 shared values per kernel it finds 4 bits.
    Train it with fine_tune, then `strip_clusters`, then `cluster_preserving_qat`. The input
    model is left untouched.
    """
    if clusters < 2:
        raise ValueError(f"need at least 2 clusters, got {clusters}")
    ck = _tfmot().clustering.keras
    chosen = {layer.name for layer in model.layers if _prunable(layer, False, False)}
    pairs = []  # (new layer, layer of `model`) whose weights are copied after cloning

    def wrap(layer):
        fresh = layer.__class__.from_config(layer.get_config())
        if layer.name not in chosen:
            pairs.append((fresh, layer))
            return fresh
        # The wrapper draws its centroids from the kernel when it is built: the trained
        # weights must be in place before that, not copied afterwards.
        fresh.build(layer.input_shape)
        fresh.set_weights(layer.get_weights())
        return ck.cluster_weights(
            fresh,
            number_of_clusters=clusters,
            cluster_centroids_init=ck.CentroidInitialization.KMEANS_PLUS_PLUS,
            preserve_sparsity=preserve_sparsity,
        )

    with ck.cluster_scope(), _tfmot().quantization.keras.quantize_scope(_custom_objects()):
        clustered = keras.models.clone_model(model, clone_function=wrap)
    for fresh, original in pairs:
        fresh.set_weights(original.get_weights())
    return clustered


def strip_clusters(model):
    """A plain Keras copy of a clustered model: every kernel holds its centroid values."""
    with _tfmot().clustering.keras.cluster_scope(), _tfmot().quantization.keras.quantize_scope(_custom_objects()):
        return _copy(_tfmot().clustering.keras.strip_clustering(model))


def distinct_values(model, prune_head: bool = False, prune_depthwise: bool = False) -> int:
    """The largest number of distinct non-zero values in one of the prunable kernels."""
    kernels = _kernels(model, lambda layer: _prunable(layer, prune_head, prune_depthwise))
    return max((len(np.unique(k[k != 0])) for k in kernels), default=0)


def _cluster_preserve_scheme(preserve_sparsity: bool = True):
    return _restricted_scheme(_tfmot().experimental.combine.Default8BitClusterPreserveQuantizeScheme, preserve_sparsity)


def cluster_preserving_qat(model, calibration: np.ndarray | None = None, batch_size: int = 32):
    """QAT that keeps both the zeros and the shared values of a pruned, clustered, stripped
    model (tfmot's PCQAT: the weight quantizers train the centroids, not single weights).
    calibration: as in quantize_aware."""
    import warnings

    with warnings.catch_warnings():
        # tfmot warns for every quantized layer we did not cluster (the head, depthwise
        # kernels): "No clustering performed on layer quant_logits. Too many centroids".
        warnings.filterwarnings("ignore", message="No clustering performed on layer")
        return quantize_aware(model, calibration, scheme=_cluster_preserve_scheme(True), batch_size=batch_size)


# --------------------------------------------------------------------------------------------
# Fine-tuning (QAT, pruning, clustering, PQAT, PCQAT), with distillation when a teacher exists
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CompressResult:
    """What fine_tune did. `model` is the fine-tuned model (the one passed in, trained in place)."""

    label: str
    stage: StageResult
    start_val_accuracy: float
    sparsity: float  # measured at the end (sparsity_of): pruned and PQAT models keep their zeros
    distilled: bool
    temperature: float
    alpha: float
    learning_rate: float
    seconds: float
    model: object = dataclasses.field(default=None, repr=False)
    replicas: int = 1  # devices that trained it in sync (tf.distribute), 1 on one device
    kept: str = "best"  # which weights were kept: "best" on val, or the "last" epoch's (fine_tune's keep)

    def to_json(self) -> dict:
        out = dataclasses.asdict(dataclasses.replace(self, model=None))
        out.pop("model")
        if self.stage.val_images:  # the start is on the same images as the stage's best
            out["start_val_ci95"] = ci95(self.start_val_accuracy, self.stage.val_images)
        return out


class _EpochsRun(keras.callbacks.Callback):
    """The number of the last epoch a fit finished (a callback or an interruption can end it
    early; a resumed fit counts from its first epoch, not from where it resumed)."""

    def __init__(self):
        super().__init__()
        self.epochs_run = 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_run = epoch + 1


class _KeepBestEligible(KeepBest):
    """KeepBest that only considers epochs where `eligible()` holds (pruning: the target
    sparsity reached). With no eligible epoch the last weights stay (never the dense start)."""

    def __init__(self, patience: int, baseline, target, eligible: Callable[[], bool]):
        super().__init__(patience=patience, baseline=baseline, target=target)
        self.eligible = eligible
        self._any = False

    def on_epoch_end(self, epoch, logs=None):
        if self.eligible():
            self._any = True
            super().on_epoch_end(epoch, logs)
        else:
            self.epochs_run = epoch + 1

    def on_train_end(self, logs=None):
        if self._any:
            super().on_train_end(logs)


def _freeze_batch_norm(model) -> int:
    """Batch-norm layers (wrapped or not) to inference mode, everything else trainable."""
    frozen = 0
    for layer in model.layers:
        layer.trainable = True
        inner = _inner(layer)
        if isinstance(inner, keras.layers.BatchNormalization):
            inner.trainable = False
            frozen += 1
    return frozen


def fine_tune(
    model,
    *,
    teacher=None,
    train_views: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    epochs: int,
    learning_rate: float,
    batch_size: int = 32,
    temperature: float = 4.0,
    alpha: float = 0.9,
    seed: int = 0,
    label: str = "fine-tune",
    patience: int | None = None,
    callbacks_extra: list | None = None,
    strategy=None,
    keep: str = "best",
) -> CompressResult:
    """Fine-tune a QAT, pruned or PQAT model (in place) for `epochs`.

    keep: "best" keeps the epoch with the best val accuracy (a calibrated QAT model's start
    counts as an epoch; a pruned model's only once at its target sparsity), "last" the weights
    after the last epoch, val read once at the end. A compile gates the file on val, and a
    file chosen on the same images is judged optimistically there: measured on flowers12, a
    pruned, clustered file that lost 4.2 points on test scored level with fp32 on the val split
    its fine-tunes had picked their epochs on. So the compile asks for "last": the epochs are
    fixed by its recipe, as the cross-validated refit's are (compiler/training/cv_training.py).
    `patience` (epochs without a better one before stopping) applies to "best" only.

    teacher: a float classifier (probabilities out; its logits are read); None trains on the
    labels alone. train_views: pixels at the larger of the two input sizes, labels (-1:
    unlabelled); val: pixels at the model's input size. Pruned models get tfmot's
    UpdatePruningStep callback, and only epochs whose measured sparsity has reached the
    schedule's target count as candidates for the best weights.

    strategy: the tf.distribute strategy `model` (and `teacher`) were built under (their
    variables created inside `strategy.scope()`); the distillation wrapper is made and compiled
    there too, and `batch_size` is the global batch (split across the replicas). None: the
    default one-device strategy.
    """
    from edgetl.compiler.training.distill import Distiller, distillation_dataset

    if keep not in ("best", "last"):
        raise ValueError(f"keep must be 'best' or 'last', not {keep!r}")
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    _freeze_batch_norm(model)
    student_logits = logits_model(model)
    teacher_logits = None
    if teacher is not None:
        # Frozen by construction: the Distiller trains the student's variables only and runs
        # the teacher with training=False (its flags are left alone: it is the caller's model).
        teacher_logits = keras.Model(teacher.input, find_layer(teacher, LOGITS_LAYER).output)
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        # Under a distribution strategy the wrapper's metrics and the optimizer's slots must be
        # mirrored like the model's variables: a wrapper compiled outside the scope runs its
        # steps under the default strategy, and tfmot's pruning mask update then fails on the
        # mirrored kernels (measured: TypeError in PruneLowMagnitude's weight_mask_op).
        distiller = Distiller(student_logits, teacher_logits, temperature, alpha)
        distiller.compile(optimizer=keras.optimizers.Adam(learning_rate))
        # Built before fit, so BackupAndRestore (distribution.fit_callbacks) can restore the
        # optimizer's state too; Keras skips that for an unbuilt model, with a warning.
        distiller.build((None, *student_logits.input_shape[1:]))
    from edgetl.compiler.data.streaming import eval_data, validation_data

    start_loss, start_acc = distiller.evaluate(**eval_data(val, batch_size), verbose=0)

    from edgetl.compiler.training.distribution import fit_callbacks

    callbacks = fit_callbacks()  # BackupAndRestore on multi-device runs, first (see finetune._fit)
    wrappers = _pruning_wrappers(model)
    if wrappers:
        # Before KeepBest: it re-applies the masks at epoch end, so the kept weights are sparse.
        callbacks.append(_tfmot().sparsity.keras.UpdatePruningStep())
    if keep == "last":
        keep_cb = None
        counter = _EpochsRun()
        callbacks.append(counter)
    elif wrappers:
        target = float(wrappers[0].pruning_schedule.final_sparsity)
        keep_cb = _KeepBestEligible(
            patience or epochs + 1, None, model, lambda: sparsity_of(model) >= target - 0.01
        )
    else:
        # A QAT model with calibrated ranges starts as good as post-training quantization: it
        # is the baseline to beat (an uncalibrated one starts near chance and is beaten at once).
        keep_cb = KeepBest(patience=patience or epochs + 1, baseline=(float(start_acc), float(start_loss)), target=model)
    if keep_cb is not None:
        callbacks.append(keep_cb)
    callbacks += list(callbacks_extra or [])
    if keep == "last":
        validation = {}  # val is read once, after the last epoch
    elif isinstance(val[0], np.ndarray):
        validation = {"validation_data": val, "validation_batch_size": batch_size}
    else:  # images on disk come as batches (of batch_size)
        validation = {"validation_data": validation_data(val, batch_size)}

    x, y = train_views
    data = distillation_dataset(x, np.asarray(y), batch_size, seed)
    fit_start = time.perf_counter()
    with progress_bar(label, epochs) as advance:
        progress = EpochProgress(advance)
        distiller.fit(data, **validation, epochs=epochs, callbacks=callbacks + [progress], verbose=0)
    elapsed = time.perf_counter() - fit_start
    if keep_cb is None:
        # No epoch in this fit yet a normal return: a resumed fit whose backup was saved after the
        # last epoch (distribution.fit_callbacks) had nothing left to run.
        epochs_run = counter.epochs_run or epochs
        kept_epoch, kept_accuracy = epochs_run, float(distiller.evaluate(**eval_data(val, batch_size), verbose=0)[1])
    else:
        epochs_run, kept_epoch, kept_accuracy = keep_cb.epochs_run, keep_cb.best_epoch, float(keep_cb.best[0])
    stage = StageResult(
        epochs_run=epochs_run,
        best_epoch=kept_epoch,
        best_val_accuracy=kept_accuracy,
        seconds_per_epoch=elapsed / progress.ended if progress.ended else 0.0,  # this fit's epochs (a resumed fit ran fewer)
        val_images=len(val[1]),
    )
    return CompressResult(
        label=label,
        stage=stage,
        start_val_accuracy=float(start_acc),
        sparsity=sparsity_of(model),
        distilled=teacher is not None and distiller.alpha > 0,
        temperature=float(temperature),
        alpha=float(distiller.alpha),
        learning_rate=float(learning_rate),
        seconds=time.perf_counter() - start,
        model=model,
        replicas=int(strategy.num_replicas_in_sync),
        kept=keep,
    )
