"""The fixed choices of a compile, one `str` Enum each: the CLI offers their values, the config
checks against them, and nothing else lists them again.

Each member *is* its plain string: it compares, hashes, formats and serialises as its value
(`Quantize.INT8 == "int8"`, `f"{Quantize.INT8}"` is `int8`, `json.dumps` writes `"int8"`), so
code that compares with strings, recipes and report.json, and the stage cache keys are the same
as when the settings were plain strings.
"""

from __future__ import annotations

import enum


class Mode(str, enum.Enum):
    """Base of the choices: a member behaves as its value everywhere a string would be used."""

    # Explicit, so that the behaviour does not depend on the Python version (3.12 changed how
    # mixed-in enums format) and a member always finds a plain-string key in a dict or set.
    __hash__ = str.__hash__

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)


class Precision(Mode):
    """Weight/activation precision of an exported file; values are what configs and reports say."""

    FP32 = "fp32"
    FP16 = "fp16"
    DYNAMIC = "dynamic"  # int8 weights, float activations (kernels quantize activations on the fly)
    INT8 = "int8"  # full integer: int8 weights (per channel) and int8 activations


class Quantize(Mode):
    """--quantize: the fastest file within the accuracy gate (auto), or one precision."""

    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    DYNAMIC = "dynamic"
    INT8 = "int8"


class IoDtype(Mode):
    """--io-dtype: the input and output type of full-integer files."""

    UINT8 = "uint8"
    INT8 = "int8"
    FLOAT32 = "float32"


class Adapt(Mode):
    """--adapt: how the deployed model is adapted to the --unlabeled images (compiler/training/adapt.py)."""

    AUTO = "auto"
    NONE = "none"
    BN = "bn"
    CAMERA = "camera"
    SHOT = "shot"


# What `--adapt auto` applies when no labelled --target-val chooses (the measurements behind it:
# compiler/training/adapt.py, ADAPT_DEFAULT). Part of the adaptation's cache key.
AUTO_WITHOUT_TARGET_VAL = Adapt.CAMERA


class MixedPrecision(Mode):
    """--mixed-precision: teacher training in bf16 (compiler/spec/precision.py)."""

    AUTO = "auto"
    BF16 = "bf16"
    OFF = "off"


class Strategy(Mode):
    """--strategy: the training devices and machines (compiler/training/distribution.py)."""

    AUTO = "auto"
    ONE = "one"
    MIRRORED = "mirrored"
    MULTI_WORKER = "multi-worker"


class Selection(Mode):
    """--selection: cross-validation or a held-out split for the training choices (compiler/training/crossval.py)."""

    AUTO = "auto"
    CV = "cv"
    HOLDOUT = "holdout"


class Preprocess(Mode):
    """--preprocess: how a model brought with --model expects its pixels."""

    RAW = "raw"
    TF = "tf"
    TORCH = "torch"
    CAFFE = "caffe"


class ChannelOrder(Mode):
    """--channel-order of a model brought with --model."""

    RGB = "RGB"
    BGR = "BGR"


class ModelOutput(Mode):
    """--model-output: what a model brought with --model outputs."""

    AUTO = "auto"
    PROBABILITIES = "probabilities"
    LOGITS = "logits"
