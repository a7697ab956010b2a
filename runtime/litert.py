"""LiteRT (formerly TensorFlow Lite) interpreter session, XNNPACK on CPU by default.

`ai_edge_litert.interpreter.Interpreter` replaces the deprecated `tf.lite.Interpreter` and
does not need TensorFlow at all, which is what a device runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.errors import ModelFileError
from edgetl.runtime._session import Session, check_image_input, require_file


class LiteRTSession(Session):
    runtime = "litert"

    def __init__(self, path: Path, threads: int | None = None):
        super().__init__(require_file(path))
        from ai_edge_litert.interpreter import Interpreter

        try:
            self._interp = Interpreter(model_path=str(self.path), num_threads=threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{self.path}: not a loadable TFLite model ({exc})") from None
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()
        if len(self._in) != 1 or len(self._out) != 1:
            raise ModelFileError(
                f"{self.path}: expected one image input and one output, found "
                f"{len(self._in)} inputs and {len(self._out)} outputs"
            )
        self._in, self._out = self._in[0], self._out[0]
        self._size = check_image_input(self._in["shape"], self.path)
        self._batch = int(self._in["shape"][0])

    @property
    def input_size(self) -> int:
        return self._size

    @property
    def num_classes(self) -> int:
        return int(self._out["shape"][-1])

    @property
    def input_dtype(self) -> str:
        return np.dtype(self._in["dtype"]).name

    @property
    def input_quantization(self) -> tuple[float, int] | None:
        scale, zero_point = self._in["quantization"]
        return (float(scale), int(zero_point)) if scale else None

    def _resize_batch(self, n: int) -> None:
        if n != self._batch:
            self._interp.resize_tensor_input(self._in["index"], [n, self._size, self._size, 3])
            self._interp.allocate_tensors()
            self._batch = n

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """Raw pixels -> this file's input tensor (quantized when its input is integer)."""
        dtype = np.dtype(self._in["dtype"])
        if dtype.kind in "iu":
            scale, zero_point = self._in["quantization"]
            info = np.iinfo(dtype)
            q = np.round(images.astype(np.float32) / scale + zero_point)
            return np.clip(q, info.min, info.max).astype(dtype)
        return images.astype(dtype, copy=False)

    def invoke(self, tensor: np.ndarray) -> np.ndarray:
        """One raw interpreter call on an already prepared input; returns the output as stored."""
        self._interp.set_tensor(self._in["index"], tensor)
        self._interp.invoke()
        return self._interp.get_tensor(self._out["index"])

    def run(self, images: np.ndarray) -> np.ndarray:
        self._resize_batch(len(images))
        out = self.invoke(self.prepare(images))
        if np.dtype(self._out["dtype"]).kind in "iu":
            scale, zero_point = self._out["quantization"]
            return ((out.astype(np.float32) - zero_point) * scale).astype(np.float32)
        return out.astype(np.float32, copy=False)
