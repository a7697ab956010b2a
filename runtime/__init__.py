"""edgetl.runtime: one session interface over LiteRT, ONNX Runtime and the Keras reference.

    from edgetl.runtime import open_session
    session = open_session("build/flowers/model.tflite", threads=2)
    probabilities = session.run(pixels_uint8_nhwc)
"""

from __future__ import annotations

from pathlib import Path

from edgetl.errors import ModelFileError
from edgetl.runtime._session import Session
from edgetl.runtime.model_info import ModelInfo, find_model_info

RUNTIME_BY_SUFFIX = {".tflite": "litert", ".onnx": "onnxruntime", ".keras": "keras", ".h5": "keras"}


def open_session(path: str | Path, runtime: str | None = None, threads: int | None = None) -> Session:
    """Load `path` in the runtime its suffix implies (or the one named)."""
    path = Path(path)
    runtime = runtime or RUNTIME_BY_SUFFIX.get(path.suffix.lower())
    if runtime == "litert":
        from edgetl.runtime.litert import LiteRTSession

        return LiteRTSession(path, threads=threads)
    if runtime == "onnxruntime":
        from edgetl.runtime.onnx_runtime import OnnxRuntimeSession

        return OnnxRuntimeSession(path, threads=threads)
    if runtime == "keras":
        from edgetl.runtime.keras_model import KerasSession

        return KerasSession(path)
    raise ModelFileError(
        f"{path}: unknown model format {path.suffix!r}; expected one of {', '.join(RUNTIME_BY_SUFFIX)}"
    )


__all__ = ["ModelInfo", "Session", "find_model_info", "open_session"]
