"""edgetl.runtime: one session interface over LiteRT, ONNX Runtime and the Keras reference.

    from edgetl.runtime import open_session
    session = open_session("build/flowers/model.tflite", threads=2)
    probabilities = session.run(pixels_uint8_nhwc)
    session.info().labels      # from model_info.json / labels.txt, or a labelled guess

Runtimes (`RUNTIMES`): `litert` (XNNPACK CPU), `litert-gpu` (LiteRT GPU accelerator),
`onnxruntime` (CPU provider), `onnxruntime-cuda`, `onnxruntime-tensorrt` (need onnxruntime-gpu),
`keras` (the tf_keras reference; imports TensorFlow). Importing this package imports neither
TensorFlow nor any runtime library.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgetl.errors import ModelFileError, RuntimeUnavailableError, SettingError
from edgetl.runtime._session import Session
from edgetl.runtime.model_info import ModelInfo, find_model_info


@dataclasses.dataclass(frozen=True)
class RuntimeSpec:
    name: str
    format: str  # "tflite", "onnx" or "keras"
    device: str  # "cpu" or "gpu"
    description: str
    modules: tuple[str, ...]  # what it imports (timed apart from loading the model)
    default: bool = True  # benchmarked when no --runtime filter is given (Keras files in a
    # folder are only picked up when --runtime keras asks for them: TensorFlow is slow to start)


RUNTIMES: dict[str, RuntimeSpec] = {
    spec.name: spec
    for spec in (
        RuntimeSpec("litert", "tflite", "cpu", "LiteRT interpreter, XNNPACK", ("ai_edge_litert.interpreter",)),
        RuntimeSpec("litert-gpu", "tflite", "gpu", "LiteRT CompiledModel, GPU accelerator (WebGPU)",
                    ("ai_edge_litert.compiled_model",)),
        RuntimeSpec("onnxruntime", "onnx", "cpu", "ONNX Runtime, CPUExecutionProvider", ("onnxruntime",)),
        RuntimeSpec("onnxruntime-cuda", "onnx", "gpu", "ONNX Runtime, CUDAExecutionProvider", ("onnxruntime",)),
        RuntimeSpec("onnxruntime-tensorrt", "onnx", "gpu", "ONNX Runtime, TensorrtExecutionProvider", ("onnxruntime",)),
        RuntimeSpec("keras", "keras", "cpu", "tf_keras reference model (TensorFlow)", ("tf_keras",)),
    )
}

# The most threads a session is opened with. More than any CPU edgetl targets has cores, and far
# below what breaks the runtimes: LiteRT crashed the process at 100,000 and ONNX Runtime hung
# creating 10,000 (2026-12-02).
MAX_THREADS = 256

FORMAT_BY_SUFFIX = {".tflite": "tflite", ".onnx": "onnx", ".keras": "keras", ".h5": "keras"}
DEFAULT_RUNTIME = {"tflite": "litert", "onnx": "onnxruntime", "keras": "keras"}
# Kept for callers of the first version of this module.
RUNTIME_BY_SUFFIX = {suffix: DEFAULT_RUNTIME[fmt] for suffix, fmt in FORMAT_BY_SUFFIX.items()}


def model_format(path: str | Path) -> str | None:
    """"tflite", "onnx", "keras" (a .keras/.h5 file or a SavedModel folder), or None."""
    path = Path(path)
    if path.is_dir():
        return "keras" if (path / "saved_model.pb").is_file() else None
    return FORMAT_BY_SUFFIX.get(path.suffix.lower())


def runtimes_for(path: str | Path) -> list[str]:
    """Runtime names that can open `path`, the default one first."""
    fmt = model_format(path)
    return [n for n, s in RUNTIMES.items() if s.format == fmt]


def open_session(
    path: str | Path, runtime: str | None = None, threads: int | None = None, trust_model: bool = False
) -> Session:
    """Load `path` in the runtime its suffix implies (or the one named).

    Raises ModelFileError for a missing, truncated or non-model file (one line each),
    UnsafeModelError for a Keras model that would run code from itself when loaded (unless
    `trust_model`), and RuntimeUnavailableError for a runtime that cannot run here (e.g. no
    GPU provider).
    """
    path = Path(path)
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise SettingError(f"{threads} threads: pass between 1 and {MAX_THREADS}")
    fmt = model_format(path)
    if runtime is None:
        if fmt is None:
            if not path.exists():
                raise ModelFileError(f"model file not found: {path}")
            if path.is_dir():
                raise ModelFileError(f"{path} is a folder, not a model file; pass the .tflite or .onnx file inside it")
            raise ModelFileError(
                f"{path}: unknown model format {path.suffix or '(no suffix)'!r}; expected a "
                ".tflite, .onnx, .keras or .h5 file, or a SavedModel folder"
            )
        runtime = DEFAULT_RUNTIME[fmt]
    spec = RUNTIMES.get(runtime)
    if spec is None:
        raise ModelFileError(f"unknown runtime {runtime!r}; one of {', '.join(RUNTIMES)}")
    if fmt is not None and spec.format != fmt:
        raise ModelFileError(f"{path}: runtime {runtime} runs .{spec.format} files, not this {fmt} model")
    if spec.format == "tflite":
        if runtime == "litert-gpu":
            from edgetl.runtime.litert import LiteRTGpuSession

            return LiteRTGpuSession(path, threads=threads)
        from edgetl.runtime.litert import LiteRTSession

        return LiteRTSession(path, threads=threads)
    if spec.format == "onnx":
        from edgetl.runtime.onnx_runtime import OnnxRuntimeSession

        return OnnxRuntimeSession(path, threads=threads, runtime=runtime)
    from edgetl.runtime.keras_model import KerasSession

    return KerasSession(path, threads=threads, trust_model=trust_model)


__all__ = [
    "RUNTIMES",
    "ModelInfo",
    "RuntimeSpec",
    "RuntimeUnavailableError",
    "Session",
    "find_model_info",
    "model_format",
    "open_session",
    "runtimes_for",
]
