"""The one small interface every runtime implements."""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from edgetl.errors import ModelFileError
from edgetl.runtime.model_info import ModelInfo, find_model_info


class Session(abc.ABC):
    """A loaded model ready to classify images.

    `run` takes raw RGB pixels 0..255 (uint8 or float, NHWC, already resized to `input_size`)
    and returns float32 class probabilities [N, num_classes]. Each runtime does its own input
    quantization and output dequantization, so callers never see a file's I/O dtypes.
    """

    runtime: str  # short name used in tables and --runtime filters

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    @abc.abstractmethod
    def input_size(self) -> int: ...

    @property
    @abc.abstractmethod
    def num_classes(self) -> int: ...

    @property
    @abc.abstractmethod
    def input_dtype(self) -> str: ...

    @abc.abstractmethod
    def run(self, images: np.ndarray) -> np.ndarray: ...

    def info(self) -> ModelInfo:
        return find_model_info(self.path, self.input_size, self.num_classes)

    def predict(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """`run` over any number of images, in batches."""
        out = [self.run(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)


def check_image_input(shape, path: Path) -> int:
    """The square input size of an NHWC RGB image input, or a clear error."""
    if len(shape) != 4 or shape[-1] != 3 or shape[1] != shape[2] or not shape[1] or shape[1] < 0:
        raise ModelFileError(
            f"{path}: input shape {list(shape)} is not an image input (expected [N, size, size, 3] NHWC)"
        )
    return int(shape[1])


def require_file(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise ModelFileError(f"model file is empty: {path}")
    return path
