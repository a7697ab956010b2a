"""ResNet50 and MobileNetV3 (Small, Large) from tf_keras.applications, rebuilt flat.

The architectures come from tf_keras; their ImageNet weights come through Keras' standard
download and cache (`~/.keras/models`, or $KERAS_HOME/models) or from a file the user passes.
Without network and without the cached file, loading fails with a message that names the file,
where to put it, and which registry models work offline: never a silent fallback to random
weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from pathlib import Path

from edgetl.errors import WeightsUnavailableError
from edgetl.models._registry import FEATURES_LAYER, ModelConfig, offline_models, register_model

_KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


def _keras_cache_dir() -> Path:
    # Mirrors tf_keras.utils.get_file's choice of cache folder (without importing TensorFlow).
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


@dataclasses.dataclass(frozen=True)
class KerasNoTopWeights:
    """ImageNet backbone weights (no classifier head) in Keras' h5 layout, loaded by layer order."""

    model_name: str
    file_name: str
    url_dir: str
    md5: str
    downloads_on_first_use = True  # not a field: `edgetl compile --dry-run` says it needs network

    def cached_path(self) -> Path:
        return _keras_cache_dir() / self.file_name

    def available_offline(self) -> bool:
        return self.cached_path().is_file()

    def describe_missing(self) -> str:
        return (
            f"{self.model_name} ImageNet weights are not in Keras' cache and could not be "
            f"downloaded: put {self.file_name} (from {_KERAS_WEIGHTS_URL}{self.url_dir}) in "
            f"{_keras_cache_dir()}/, or pass the file with --teacher-weights FILE (--student-weights "
            f"for a student); models that work offline here: {', '.join(offline_models()) or 'none'}"
        )

    def _fetch(self) -> Path:
        from edgetl._compat import keras

        try:
            # Keras prints "Downloading data from ..." and its progress on stdout, which is the
            # summary's (`edgetl compile ... > summary.txt`): progress goes to stderr with ours.
            with contextlib.redirect_stdout(sys.stderr):
                path = keras.utils.get_file(
                    self.file_name,
                    _KERAS_WEIGHTS_URL + self.url_dir + self.file_name,
                    cache_subdir="models",
                    file_hash=self.md5,
                )
        except Exception as exc:  # no network, proxy refusal, hash mismatch: all end the same way
            # The reason in words (e.g. the name-resolution failure), not a bare "(Exception)".
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise WeightsUnavailableError(f"{self.describe_missing()} (the download failed: {reason})") from exc
        return Path(path)

    def load(self, model, weights: str | Path, include_head: bool) -> None:
        from edgetl._compat import keras

        if include_head:
            raise WeightsUnavailableError(
                f"edgetl loads only the {self.model_name} backbone; its 1000-class ImageNet head "
                "is not supported (use num_classes for your own classes)"
            )
        path = self._fetch() if weights == "imagenet" else Path(weights)
        if not path.is_file():
            raise WeightsUnavailableError(f"weights file not found: {path}")
        # The backbone is everything from the input to the feature map pooled by "features";
        # the preprocessing layer in front has no weights, so Keras' by-order h5 loading
        # lines the file's layers up with the backbone's.
        backbone = keras.Model(model.input, model.get_layer(FEATURES_LAYER).input)
        try:
            backbone.load_weights(str(path))
        except Exception as exc:
            raise WeightsUnavailableError(
                f"{path} does not hold {self.model_name} no-top weights in Keras' h5 layout: {exc}"
            ) from exc


_RESNET50_WEIGHTS = KerasNoTopWeights(
    "resnet50",
    "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet/",
    "4d473c1dd8becc155b73f8504c6f6626",
)


@register_model(
    ModelConfig(
        name="resnet50",
        family="resnet",
        input_size=224,
        # Keras' "caffe" preprocessing: RGB -> BGR, subtract the ImageNet means (BGR order).
        mean=(103.939, 116.779, 123.68),
        std=(1.0, 1.0, 1.0),
        channel_order="BGR",
        params=25_636_712,
        licence="MIT",
        weights_source="Keras download on first use (~/.keras/models)",
        unfreeze_from="conv5_block1_1_conv",
        deeper_unfreeze_from="conv4_block1_1_conv",
        export_atol=1e-4,
        bf16_training=True,  # a training step 1.9x faster in bf16 here (benchmarks/bf16_training.py)
        description="the classic teacher: 25.6M parameters, 4.1 GFLOPs",
    ),
    weights=_RESNET50_WEIGHTS,
)
def resnet50(x):
    from edgetl._compat import keras

    return keras.applications.ResNet50(include_top=False, weights=None, input_tensor=x).output


def _mobilenet_v3_weights(size: str, md5: str) -> KerasNoTopWeights:
    return KerasNoTopWeights(
        f"mobilenet_v3_{size}",
        f"weights_mobilenet_v3_{size}_224_1.0_float_no_top_v2.h5",
        "mobilenet_v3/",
        md5,
    )


_MOBILENET_V3_CONFIG = dict(
    family="mobilenet_v3",
    input_size=224,
    mean=(127.5, 127.5, 127.5),
    std=(127.5, 127.5, 127.5),
    channel_order="RGB",
    licence="Apache-2.0",
    weights_source="Keras download on first use (~/.keras/models)",
    export_atol=1e-4,
)


@register_model(
    ModelConfig(
        name="mobilenet_v3_small",
        params=1_516_120,
        unfreeze_from="expanded_conv_8/expand",
        deeper_unfreeze_from="expanded_conv_6/expand",
        description="fastest registry model; hard-swish activations",
        **_MOBILENET_V3_CONFIG,
    ),
    weights=_mobilenet_v3_weights("small", "d3e8ec802a04aa4fc771ee12a9a9b836"),
)
def mobilenet_v3_small(x):
    from edgetl._compat import keras

    return keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_tensor=x, include_preprocessing=False
    ).output


@register_model(
    ModelConfig(
        name="mobilenet_v3_large",
        params=3_957_352,
        unfreeze_from="expanded_conv_12/expand",
        deeper_unfreeze_from="expanded_conv_10/expand",
        description="MobileNetV3-Large; hard-swish activations",
        **_MOBILENET_V3_CONFIG,
    ),
    weights=_mobilenet_v3_weights("large", "07fb09a5933dd0c8eaafa16978110389"),
)
def mobilenet_v3_large(x):
    from edgetl._compat import keras

    return keras.applications.MobileNetV3Large(
        include_top=False, weights=None, input_tensor=x, include_preprocessing=False
    ).output
