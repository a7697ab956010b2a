"""The one small interface every runtime implements."""

from __future__ import annotations

import abc
from pathlib import Path

import numpy as np

from edgetl.errors import ModelFileError, RuntimeUnavailableError  # noqa: F401  (imported from here too)
from edgetl.runtime.model_info import ModelInfo, find_model_info


class Session(abc.ABC):
    """A loaded model ready to classify images.

    `run` takes raw RGB pixels 0..255 (uint8 or float, NHWC, already resized to `input_size`)
    and returns float32 class scores [N, num_classes] (probabilities for every file edgetl
    writes). Each runtime does its own input quantization and output dequantization, so callers
    never see a file's I/O dtypes.

    `run` is `postprocess(invoke(prepare(images)))`: `prepare` turns pixels into the file's
    input tensor, `invoke` is one inference on such a tensor (copy in, run, copy out) and is
    what the benchmark times, `postprocess` dequantizes the output.
    """

    runtime: str  # short name used in tables and --runtime filters
    device: str = "cpu"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.threads: int | None = None
        self.layout = "NHWC"

    # Every runtime sets these two while it loads the file (from its input and output shapes).
    _size: int
    _classes: int

    @property
    def input_size(self) -> int:
        return self._size

    @property
    def num_classes(self) -> int:
        return self._classes

    @property
    @abc.abstractmethod
    def input_dtype(self) -> str: ...

    @property
    def max_batch(self) -> int | None:
        """The largest batch one call takes (None: any); files with a fixed batch say so."""
        return None

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """Raw pixels [N, size, size, 3] -> this file's input tensor."""
        images = check_pixels(images, self.input_size)
        if self.layout == "NCHW":
            images = images.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(images, dtype=np.dtype(self.input_dtype))

    @abc.abstractmethod
    def invoke(self, tensor: np.ndarray) -> np.ndarray:
        """One inference on an already prepared input; returns the output as the file stores it."""

    def postprocess(self, output: np.ndarray) -> np.ndarray:
        return np.asarray(output).astype(np.float32, copy=False)

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.postprocess(self.invoke(self.prepare(images)))

    def close(self) -> None:
        """Release the runtime's resources now (GPU sessions); the session is unusable after."""

    def embedded_info(self) -> dict | None:
        """Labels or model info stored inside the file itself, if the format allows it."""
        return None

    def info(self) -> ModelInfo:
        return find_model_info(
            self.path, self.input_size, self.num_classes, embedded=self.embedded_info(), layout=self.layout
        )

    def describe(self) -> dict:
        """What a results table needs to know about how this session runs."""
        return {"runtime": self.runtime, "device": self.device, "threads": self.threads, "input_dtype": self.input_dtype}

    def predict(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """`run` over any number of images, in batches."""
        if self.max_batch:
            batch_size = min(batch_size, self.max_batch)
        out = [self.run(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)


def check_pixels(images: np.ndarray, size: int) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise ValueError(f"expected pixels of shape [N, {size}, {size}, 3] (RGB, NHWC), got {list(images.shape)}")
    return images


def image_input_layout(shape, path: Path) -> tuple[int, str]:
    """(square input size, "NHWC" or "NCHW") of an RGB image input, or a clear error.

    `shape` may hold None or strings for symbolic dimensions; only the batch may be symbolic.
    """
    dims = list(shape)

    def fixed(d) -> bool:
        return isinstance(d, (int, np.integer)) and d > 0

    if len(dims) == 4:
        _, a, b, c = dims
        if c == 3 and fixed(a) and a == b:
            return int(a), "NHWC"
        if a == 3 and fixed(b) and b == c:
            return int(b), "NCHW"
        if c == 3 or a == 3:
            raise ModelFileError(
                f"{path}: image input {_show(dims)} is not square with a fixed size; edgetl needs "
                "[N, size, size, 3] (or [N, 3, size, size]): re-export with a fixed square input"
            )
    raise ModelFileError(
        f"{path}: input {_show(dims)} is not an RGB image input (expected [N, size, size, 3] NHWC "
        "or [N, 3, size, size] NCHW); edgetl runs image classifiers only"
    )


def check_image_input(shape, path: Path) -> int:
    """The square input size of an NHWC RGB image input, or a clear error."""
    size, layout = image_input_layout(shape, path)
    if layout != "NHWC":
        raise ModelFileError(f"{path}: input {_show(list(shape))} is NCHW; this runtime takes NHWC images")
    return size


def check_class_output(shape, path: Path) -> int:
    """Number of classes of a [N, classes] output, or a clear error."""
    dims = list(shape)
    if len(dims) != 2 or not isinstance(dims[-1], (int, np.integer)) or dims[-1] < 1:
        raise ModelFileError(
            f"{path}: output {_show(dims)} is not [N, classes]; edgetl runs image classifiers only"
        )
    return int(dims[-1])


def _show(dims) -> str:
    return "[" + ", ".join("?" if d is None or isinstance(d, str) or (isinstance(d, (int, np.integer)) and d < 0)
                           else str(int(d)) for d in dims) + "]"


def require_file(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a model file; pass the .tflite or .onnx file inside it")
    if path.stat().st_size == 0:
        raise ModelFileError(f"model file is empty (0 bytes): {path}")
    return path
