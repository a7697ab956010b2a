"""The model registry: one decorator registers a model; `create_model` is the one way in.

Every registered model is built the same way, as one flat functional tf_keras graph (flat so
that tfmot's QAT and pruning can wrap every layer; a nested pretrained sub-model is refused by
`quantize_model`):

    image (float32, raw RGB 0..255, HxWx3)
      -> "preprocess"      ImagePreprocessing: channel order and normalisation of the config
      -> backbone          the family's layers, returning a feature map
      -> "features"        GlobalAveragePooling2D
      -> "dropout"         Dropout
      -> "logits"          Dense(num_classes)
      -> "probabilities"   Softmax (float32)

so normalisation lives inside every exported file and an app cannot get it wrong, the pooled
features can be cached for head training, and distillation can read "logits".
"""

from __future__ import annotations

import dataclasses
import fnmatch
from pathlib import Path
from typing import Callable, Protocol

from edgetl.errors import ModelNotFoundError

# Layer names shared by every model: other stages find the parts of a model by these.
INPUT_NAME = "image"
PREPROCESS_LAYER = "preprocess"
FEATURES_LAYER = "features"
# Where a model pools a block's output beside its final feature map (ModelConfig.pooled_block),
# "features" concatenates the two: first the final map's pooled channels (FINAL_POOL_LAYER),
# then the block's (BLOCK_POOL_LAYER). Elsewhere "features" is the final map's pool itself.
FINAL_POOL_LAYER = "pooled_final"
BLOCK_POOL_LAYER = "pooled_block"
DROPOUT_LAYER = "dropout"
LOGITS_LAYER = "logits"
PROBABILITIES_LAYER = "probabilities"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Facts about one model variant. Everything downstream reads preprocessing from here."""

    name: str
    family: str
    input_size: int
    # Normalisation applied inside the graph to raw 0..255 RGB: the channels are put in
    # channel_order first, then (x - mean) / std with mean and std given in that order.
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str  # "RGB" or "BGR": the order the backbone expects after preprocessing
    params: int  # count_params() with a 1000-class head on our pooled features (a test checks it)
    licence: str
    weights_source: str  # where the ImageNet weights come from, in words
    # Name of the first backbone layer unfrozen when fine-tuning the top of the backbone.
    unfreeze_from: str
    # One stage deeper: the depth that cross-validation also tries when it searches the
    # fine-tuning recipe (--search), for sets whose features must move further than the top
    # allows. None where there is nothing deeper to try (a student trained from its stem).
    deeper_unfreeze_from: str | None = None
    # Declared tolerance for float exports: max |p_export - p_keras| over held-out images.
    export_atol: float = 1e-4
    # Whether training this family in bf16 mixed precision pays (--mixed-precision auto): measured
    # per family with benchmarks/bf16_training.py on a CPU with AVX512_BF16. Off where it does
    # not speed a training step up (depthwise-convolution families such as EfficientNet-Lite).
    bf16_training: bool = False
    # A channel-pruned variant: its ImageNet batch-norm statistics describe the full network, not
    # its narrowed blocks, so the compile re-estimates them on the training images before the
    # probe (measured on flowers12, Lite0 with half its inner channels: probe 80.8% -> 85.8%).
    batch_norm_from_data: bool = False
    # Distillation's early-stopping patience when larger than --patience (None: --patience). A
    # channel-pruned student recovers slowly and unevenly (flowers12, Lite0 with half its inner
    # channels, 192 px: with patience 3 distillation stopped at epoch 5, +6.5 points over the probe
    # on val, within noise, so the probe was deployed at 85.8% test; with 12, val rose to 95.4%
    # at epoch 12, through dips of up to 4 epochs, and the file scored 95.8%).
    distill_patience: int | None = None
    # A backbone layer whose pooled output joins the features beside the final map's (Head2Toe,
    # Evci et al. 2022: a linear head on several layers' features). The linear probe uses these
    # extra columns only when its cross-validation prefers them (compiler/training/probe.py).
    # For EfficientNet-Lite, the last block's output: the head convolution's input.
    pooled_block: str | None = None
    description: str = ""

    @property
    def preprocessing(self) -> str:
        """A one-line description of the in-graph normalisation, for listings and model cards."""

        def fmt(values: tuple[float, ...]) -> str:
            return f"{values[0]:g}" if len(set(values)) == 1 else "[" + ", ".join(f"{v:g}" for v in values) + "]"

        if set(self.std) == {1.0}:
            return f"{self.channel_order}, x - {fmt(self.mean)}"
        return f"{self.channel_order}, (x - {fmt(self.mean)}) / {fmt(self.std)}"


class WeightsProvider(Protocol):
    def available_offline(self) -> bool: ...

    def describe_missing(self) -> str: ...

    def load(self, model, weights: str | Path, include_head: bool) -> None: ...


@dataclasses.dataclass(frozen=True)
class RegisteredModel:
    config: ModelConfig
    # Builds the backbone on the preprocessed tensor and returns its feature map (NHWC).
    build_backbone: Callable
    # Loads "imagenet" or a user file into a model made by create_model; None: no pretrained weights.
    weights: WeightsProvider | None


_REGISTRY: dict[str, RegisteredModel] = {}


def register_model(config: ModelConfig, weights: WeightsProvider | None = None):
    """Decorator: register `build_backbone(preprocessed_tensor) -> feature_map` under config.name."""

    def decorate(build_backbone: Callable) -> Callable:
        if config.name in _REGISTRY:
            raise ValueError(f"model {config.name!r} is registered twice")
        _REGISTRY[config.name] = RegisteredModel(config, build_backbone, weights)
        return build_backbone

    return decorate


def _ensure_registered() -> None:
    # Importing the family modules runs their @register_model decorators. None of them imports
    # TensorFlow at module level, so listing models stays instant.
    from edgetl.models import efficientnet_lite, keras_applications, tiny  # noqa: F401


def list_models(pattern: str = "*", include_test: bool = False) -> list[str]:
    _ensure_registered()
    names = sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))
    return [n for n in names if include_test or _REGISTRY[n].config.family != "test"]


def get_registered(name: str) -> RegisteredModel:
    _ensure_registered()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_models())  # as `edgetl models` lists them: test models unnamed
        raise ModelNotFoundError(f"unknown model {name!r}; known models: {known}") from None


def get_config(name: str) -> ModelConfig:
    return get_registered(name).config


def weights_available_offline(name: str) -> bool:
    entry = get_registered(name)
    return entry.weights is not None and entry.weights.available_offline()


def offline_models() -> list[str]:
    return [n for n in list_models() if weights_available_offline(n)]


def create_model(
    name: str,
    weights: str | Path | None = "imagenet",
    num_classes: int = 1000,
    dropout: float = 0.2,
    input_size: int | None = None,
):
    """Build registered model `name` as a flat tf_keras classifier on raw 0..255 RGB input.

    weights: "imagenet" (the registry's pretrained weights; raises WeightsUnavailableError with
    what to do when they cannot be had, never falls back to random weights), a path to a weights
    file, or None (random initialisation, for tests and from-scratch training).
    The ImageNet classifier head is loaded too when num_classes == 1000.
    input_size: override the config's input size (e.g. a smaller student for a slow device).
    """
    entry = get_registered(name)
    cfg = entry.config
    from edgetl._compat import keras
    from edgetl.runtime.keras_layers import ImagePreprocessing

    size = input_size or cfg.input_size
    inputs = keras.Input((size, size, 3), dtype="float32", name=INPUT_NAME)
    x = ImagePreprocessing(cfg.mean, cfg.std, cfg.channel_order, name=PREPROCESS_LAYER)(inputs)
    feature_map = entry.build_backbone(x)
    if cfg.pooled_block is None:
        x = keras.layers.GlobalAveragePooling2D(name=FEATURES_LAYER)(feature_map)
    else:
        block = keras.Model(inputs, feature_map).get_layer(cfg.pooled_block).output
        x = keras.layers.Concatenate(name=FEATURES_LAYER)([
            keras.layers.GlobalAveragePooling2D(name=FINAL_POOL_LAYER)(feature_map),
            keras.layers.GlobalAveragePooling2D(name=BLOCK_POOL_LAYER)(block),
        ])
    x = keras.layers.Dropout(dropout, name=DROPOUT_LAYER)(x)
    x = keras.layers.Dense(num_classes, name=LOGITS_LAYER)(x)
    outputs = keras.layers.Softmax(name=PROBABILITIES_LAYER, dtype="float32")(x)
    model = keras.Model(inputs, outputs, name=name)

    if weights is not None and Path(str(weights)).suffix == ".keras":
        transfer_from_model(model, Path(weights))
    elif weights is not None:
        if entry.weights is None:
            raise ModelNotFoundError(f"model {name!r} has no pretrained weights; pass weights=None")
        entry.weights.load(model, weights, include_head=num_classes == 1000)
    return model


def final_pool_width(model) -> int | None:
    """How many leading columns of the model's "features" are the final feature map's pooled
    channels (the classic feature-extraction features), or None when that is all of them."""
    names = {layer.name for layer in model.layers}
    return int(model.get_layer(FINAL_POOL_LAYER).output_shape[-1]) if FINAL_POOL_LAYER in names else None


def final_pool_output(model):
    """The final feature map's pooled channels alone: what a plain linear probe is fitted on."""
    names = {layer.name for layer in model.layers}
    return model.get_layer(FINAL_POOL_LAYER if FINAL_POOL_LAYER in names else FEATURES_LAYER).output


def transfer_from_model(model, path: Path) -> bool:
    """Start `model` from an earlier fine-tuned model of the same architecture (source task to
    target task): every layer's weights by name; the classifier head too when the classes
    number the same, else a new head. Returns whether the head was taken.

    Raises WeightsUnavailableError when the file is not the same architecture.
    """
    from edgetl.errors import ModelFileError, WeightsUnavailableError
    from edgetl.runtime.keras_model import load_keras_model

    try:
        source = load_keras_model(path)
    except ModelFileError as exc:
        raise WeightsUnavailableError(str(exc)) from None
    layers = {layer.name: layer for layer in source.layers}
    head = model.get_layer(LOGITS_LAYER)
    head_fits = LOGITS_LAYER in layers and [w.shape for w in layers[LOGITS_LAYER].get_weights()] == [w.shape for w in head.get_weights()]
    plan = []
    for layer in model.layers:
        if not layer.weights or (layer.name == LOGITS_LAYER and not head_fits):
            continue
        theirs = layers.get(layer.name)
        ours = [w.shape for w in layer.get_weights()]
        if theirs is None or [w.shape for w in theirs.get_weights()] != ours:
            raise WeightsUnavailableError(
                f"{path} is not a {model.name} model (layer {layer.name!r} "
                + ("is missing" if theirs is None else "has other shapes")
                + "); pass a model that edgetl trained from the same registry model"
            )
        plan.append((layer, theirs.get_weights()))
    for layer, weights in plan:  # checked first, assigned after: never half-loaded
        layer.set_weights(weights)
    return head_fits
