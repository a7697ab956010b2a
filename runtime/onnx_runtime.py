"""ONNX Runtime session (CPU provider here; CUDA/TensorRT where onnxruntime-gpu is installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.errors import ModelFileError
from edgetl.runtime._session import Session, check_image_input, require_file


class OnnxRuntimeSession(Session):
    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None, providers: list[str] | None = None):
        super().__init__(require_file(path))
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initialisers are not the user's concern
        try:
            self._session = ort.InferenceSession(
                str(self.path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf types
            raise ModelFileError(f"{self.path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(
                f"{self.path}: expected one image input and one output, found "
                f"{len(inputs)} inputs and {len(outputs)} outputs"
            )
        self._input, self._output = inputs[0], outputs[0]
        self._size = check_image_input(
            [d if isinstance(d, int) else 1 for d in self._input.shape], self.path
        )

    @property
    def input_size(self) -> int:
        return self._size

    @property
    def num_classes(self) -> int:
        return int(self._output.shape[-1])

    @property
    def input_dtype(self) -> str:
        return {"tensor(float)": "float32", "tensor(uint8)": "uint8"}.get(self._input.type, self._input.type)

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers()

    def prepare(self, images: np.ndarray) -> np.ndarray:
        return images.astype(np.float32 if self.input_dtype == "float32" else np.uint8, copy=False)

    def invoke(self, tensor: np.ndarray) -> np.ndarray:
        return self._session.run([self._output.name], {self._input.name: tensor})[0]

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.invoke(self.prepare(images)).astype(np.float32, copy=False)
