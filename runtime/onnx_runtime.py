"""ONNX Runtime sessions: the CPU provider, and CUDA / TensorRT where `onnxruntime-gpu` is installed.

`onnxruntime` (CPU) and `onnxruntime-gpu` both install the `onnxruntime` module and must not be
installed together; `edgetl[gpu]` is the GPU one. A GPU runtime whose provider is missing, or
that does not start (no GPU, CUDA/cuDNN/TensorRT libraries missing), raises
RuntimeUnavailableError, which `edgetl bench` reports as a skipped row.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgetl.errors import ModelFileError, RuntimeUnavailableError
from edgetl.runtime._session import (
    Session,
    check_class_output,
    image_input_layout,
    require_file,
)

_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
}

# edgetl runtime name -> ONNX Runtime providers, in priority order (the first one must start).
PROVIDERS: dict[str, list] = {
    "onnxruntime": ["CPUExecutionProvider"],
    "onnxruntime-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "onnxruntime-tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
GPU_HINT = "install edgetl[gpu] (onnxruntime-gpu, which replaces onnxruntime)"


def provider_problem(runtime: str) -> str | None:
    """Why `runtime` cannot run in this environment, or None when its provider is present."""
    import onnxruntime as ort

    wanted = PROVIDERS[runtime][0]
    if wanted in ort.get_available_providers():
        return None
    hint = GPU_HINT + (" and TensorRT 10 (tensorrt-cu12-libs)" if wanted.startswith("Tensorrt") else "")
    return f"{wanted} not available; {hint}"


class OnnxRuntimeSession(Session):
    runtime = "onnxruntime"

    def __init__(
        self,
        path: Path,
        threads: int | None = None,
        providers: list | None = None,
        runtime: str = "onnxruntime",
    ):
        super().__init__(require_file(path))
        import onnxruntime as ort

        if runtime not in PROVIDERS:
            raise ValueError(f"unknown ONNX Runtime flavour {runtime!r}; one of {', '.join(PROVIDERS)}")
        self.runtime = runtime
        self.device = "cpu" if runtime == "onnxruntime" else "gpu"
        self.threads = threads
        if providers is None:
            problem = provider_problem(runtime)
            if problem:
                raise RuntimeUnavailableError(problem)
            providers = list(PROVIDERS[runtime])
        if self.device == "gpu" and hasattr(ort, "preload_dlls"):
            try:  # CUDA/cuDNN from the nvidia-* pip packages that onnxruntime-gpu[cuda,cudnn] brings
                ort.preload_dlls()
            except Exception:  # noqa: BLE001 - libraries on the system path are still tried
                pass

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initialisers are not the user's concern
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf types
            first = " ".join(str(exc).split())[:300]
            if "protobuf parsing failed" in first.lower():
                raise ModelFileError(
                    f"{self.path}: not a valid ONNX model (protobuf parsing failed: a truncated "
                    "file, or not an ONNX file at all); copy or export it again"
                ) from None
            raise ModelFileError(f"{self.path}: not a loadable ONNX model ({first})") from None
        wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
        if self._session.get_providers()[0] != wanted:
            # ORT falls back silently to the next provider when one fails to initialise.
            raise RuntimeUnavailableError(
                f"{wanted} is installed but did not start (no GPU, or its CUDA/cuDNN"
                f"{'/TensorRT' if wanted.startswith('Tensorrt') else ''} libraries missing)"
            )
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(
                f"{self.path}: expected one image input and one output, found "
                f"{len(inputs)} inputs and {len(outputs)} outputs; edgetl runs image classifiers only"
            )
        self._input, self._output = inputs[0], outputs[0]
        if self._input.type not in _DTYPES:
            raise ModelFileError(
                f"{self.path}: input '{self._input.name}' has type {self._input.type}, not an image "
                "tensor (float or 8-bit integer pixels); edgetl runs image classifiers only"
            )
        self._size, self.layout = image_input_layout(self._input.shape, self.path)
        self._classes = check_class_output(
            [d if isinstance(d, int) else 1 for d in self._output.shape[:1]] + list(self._output.shape[1:]), self.path
        )
        batch = self._input.shape[0]
        self._max_batch = batch if isinstance(batch, int) and batch > 0 else None
        self._input_name, self._output_names = self._input.name, [self._output.name]

    @property
    def input_dtype(self) -> str:
        return _DTYPES[self._input.type]

    @property
    def max_batch(self) -> int | None:
        return self._max_batch

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers()

    @property
    def session(self):
        """The underlying `onnxruntime.InferenceSession` (for raw comparisons)."""
        return self._session

    def invoke(self, tensor: np.ndarray) -> np.ndarray:
        return self._session.run(self._output_names, {self._input_name: tensor})[0]

    def embedded_info(self) -> dict | None:
        """`model_info` (JSON) or `labels` (JSON list or one per line) from the model's metadata."""
        try:
            meta = self._session.get_modelmeta().custom_metadata_map or {}
        except Exception:  # noqa: BLE001
            return None
        try:
            if "model_info" in meta:
                return json.loads(meta["model_info"])
            if "labels" in meta:
                text = meta["labels"].strip()
                labels = json.loads(text) if text.startswith("[") else [x.strip() for x in text.splitlines() if x.strip()]
                return {"labels": [str(x) for x in labels]}
        except ValueError:
            return None
        return None

    def describe(self) -> dict:
        return {**super().describe(), "providers": self.providers}
