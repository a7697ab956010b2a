"""Tiny test variants, registered like real models so every code path runs in seconds."""

from __future__ import annotations

from pathlib import Path

from edgetl.errors import WeightsUnavailableError
from edgetl.models._registry import ModelConfig, register_model


class _FileOnlyWeights:
    """Tiny models have no ImageNet weights; a weights file saved from one can be loaded."""

    def available_offline(self) -> bool:
        return False

    def describe_missing(self) -> str:
        return "test models have no pretrained weights; pass weights=None or a weights file"

    def load(self, model, weights: str | Path, include_head: bool) -> None:
        if weights == "imagenet":
            raise WeightsUnavailableError(self.describe_missing())
        model.load_weights(str(weights))


_TINY = dict(family="test", input_size=32, mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5), channel_order="RGB",
             licence="Apache-2.0 (edgetl)", weights_source="none (random initialisation; for tests)")


@register_model(
    ModelConfig(
        name="tiny_cnn",
        params=55_200,
        **_TINY,
        unfreeze_from="tiny_conv2",
        deeper_unfreeze_from="tiny_conv1",
        pooled_block="tiny_relu1",  # as EfficientNet-Lite's: so the tests run the concatenated features
        description="three conv layers; exercises every pipeline path in seconds",
    ),
    weights=_FileOnlyWeights(),
)
def tiny_cnn(x):
    return _tiny(x, inner=16)


def _tiny(x, inner: int):
    from edgetl._compat import keras

    layers = keras.layers
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="tiny_conv0")(x)
    x = layers.BatchNormalization(name="tiny_bn0")(x)
    x = layers.ReLU(6.0, name="tiny_relu0")(x)
    x = layers.Conv2D(inner, 3, strides=2, padding="same", use_bias=False, name="tiny_conv1")(x)
    x = layers.BatchNormalization(name="tiny_bn1")(x)
    x = layers.ReLU(6.0, name="tiny_relu1")(x)
    x = layers.Conv2D(32, 3, padding="same", use_bias=False, name="tiny_conv2")(x)
    x = layers.BatchNormalization(name="tiny_bn2")(x)
    return layers.ReLU(6.0, name="tiny_relu2")(x)


# Its middle layer at half width, named as the channel-pruned variants are (NAME_slimPP), so the
# tests reach the code that times a student's narrower variants (compiler/stages/resolution.py).
@register_model(
    ModelConfig(
        name="tiny_cnn_slim50",
        params=44_288,
        **_TINY,
        unfreeze_from="tiny_conv0",
        pooled_block="tiny_relu1",
        batch_norm_from_data=True,
        distill_patience=2,
        description="tiny_cnn with half of its middle layer's channels",
    ),
    weights=_FileOnlyWeights(),
)
def tiny_cnn_slim50(x):
    return _tiny(x, inner=8)
