"""LiteRT (formerly TensorFlow Lite) sessions.

`LiteRTSession`: the classic interpreter (`ai_edge_litert.interpreter.Interpreter`, successor
of the deprecated `tf.lite.Interpreter`), XNNPACK on CPU by default, thread count settable.
`LiteRTGpuSession`: LiteRT's CompiledModel API with its GPU accelerator. Neither needs
TensorFlow, which is what a device runs.

What the `ai-edge-litert` wheel offers for GPUs (checked on 2.3.0, Linux x86_64): the classic
interpreter has no GPU delegate in the wheel (`load_delegate` needs a delegate library built
separately); the CompiledModel API ships one GPU accelerator, `libLiteRtWebGpuAccelerator.so`
(WebGPU through Dawn, which on Linux drives the GPU through its Vulkan driver). Without a GPU
and a Vulkan driver it fails with "No adapters found", which we report as "skipped".
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from edgetl.errors import ModelFileError, RuntimeUnavailableError
from edgetl.runtime._session import (
    Session,
    check_class_output,
    check_pixels,
    image_input_layout,
    require_file,
)

_TFLITE_ID = b"TFL3"  # flatbuffer file identifier, bytes 4..8 of every .tflite
# Associated files (labels.txt, model_info.json) are read into memory, never extracted to disk,
# so a crafted entry name ("../../x") cannot write anywhere; an entry that would inflate past
# this many bytes (a zip bomb) is not read at all. 1000 labels are about 10 kB.
MAX_ASSOCIATED_FILE_BYTES = 16 << 20


@contextlib.contextmanager
def native_stderr():
    """Collect what native code writes to file descriptor 2 (LiteRT logs there, not to Python)."""
    lines: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (embedded interpreter): nothing to capture
        yield lines
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


def check_tflite_header(path: Path) -> None:
    """A quick look at the first bytes, for a message better than the verifier's."""
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:8] != _TFLITE_ID:
        raise ModelFileError(
            f"{path}: not a TFLite model (no 'TFL3' flatbuffer identifier at the start of the "
            "file); pass a .tflite file written by a TFLite converter"
        )


def open_interpreter(path: Path, threads: int | None):
    """A verified interpreter (tensors not yet allocated), or a one-line ModelFileError."""
    from ai_edge_litert.interpreter import Interpreter

    check_tflite_header(path)
    try:
        with native_stderr():  # the interpreter's INFO chatter is not for the user
            return Interpreter(model_path=str(path), num_threads=threads)
    except (ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())
        if "not a valid flatbuffer" in reason.lower():
            size = path.stat().st_size
            raise ModelFileError(
                f"{path}: truncated or corrupt TFLite file ({size} bytes fail flatbuffer "
                "verification); copy or export it again"
            ) from None
        raise ModelFileError(f"{path}: not a loadable TFLite model ({reason})") from None


def quantize_pixels(images: np.ndarray, dtype: np.dtype, scale: float, zero_point: int) -> np.ndarray:
    """Pixels -> integer input tensor; the common exact cases without float arithmetic."""
    if images.dtype == np.uint8 and scale == 1.0:
        if dtype == np.uint8 and zero_point == 0:
            return np.ascontiguousarray(images)
        if dtype == np.int8 and zero_point == -128:
            return np.ascontiguousarray(images ^ np.uint8(0x80)).view(np.int8)  # x - 128, exactly
    info = np.iinfo(dtype)
    q = np.round(images.astype(np.float32) / np.float32(scale) + np.float32(zero_point))
    return np.clip(q, info.min, info.max).astype(dtype)


def pixel_bytes(images: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Pixels 0..255 -> an integer image input: the bytes themselves (uint8) or minus 128 (int8).

    The input tensor's scale and zero point are not applied: they say what the model makes of
    the bytes (the pixel itself, or its normalisation folded into the input quantization, e.g.
    (pixel - 127) / 128 as scale 1/128, zero point 127), not how to make bytes from pixels.
    That is how MediaPipe and the TFLite Task Library feed a uint8 image model, and how every
    image classifier with an integer input is built (edgetl's included: see
    edgetl.compiler.compression.quantize.convert_tflite).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = np.clip(np.round(images), 0, 255).astype(np.uint8)
    if dtype == np.uint8:
        return np.ascontiguousarray(images)
    if dtype == np.int8:
        return np.ascontiguousarray(images ^ np.uint8(0x80)).view(np.int8)  # x - 128, exactly
    info = np.iinfo(dtype)
    return np.clip(images.astype(np.int64), info.min, info.max).astype(dtype)


def embedded_tflite_info(path: Path) -> dict | None:
    """labels.txt / model_info.json from the zip that TFLite metadata appends to a model."""
    import json

    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as zf:
            names = {Path(n).name: n for n in zf.namelist()
                     if zf.getinfo(n).file_size <= MAX_ASSOCIATED_FILE_BYTES}
            if "model_info.json" in names:
                return json.loads(zf.read(names["model_info.json"]).decode("utf-8"))
            if "labels.txt" in names:
                text = zf.read(names["labels.txt"]).decode("utf-8")
                return {"labels": [ln.strip() for ln in text.splitlines() if ln.strip()]}
    except (OSError, ValueError, zipfile.BadZipFile, KeyError):
        return None
    return None


class _TFLiteIO:
    """Input/output contract of a .tflite file, shared by both LiteRT sessions."""

    def _read_io(self, interp) -> None:
        inputs, outputs = interp.get_input_details(), interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(
                f"{self.path}: expected one image input and one output, found "
                f"{len(inputs)} inputs and {len(outputs)} outputs; edgetl runs image classifiers only"
            )
        self._in, self._out = inputs[0], outputs[0]
        self._size, self.layout = image_input_layout(self._in["shape"], self.path)
        self._classes = check_class_output(self._out["shape"], self.path)
        dtype = np.dtype(self._in["dtype"])
        if dtype.kind not in "fiu":
            raise ModelFileError(f"{self.path}: input dtype {dtype.name} is not an image input type")

    @property
    def input_dtype(self) -> str:
        return np.dtype(self._in["dtype"]).name

    @property
    def input_quantization(self) -> tuple[float, int] | None:
        scale, zero_point = self._in["quantization"]
        return (float(scale), int(zero_point)) if scale else None

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """Raw pixels -> this file's input tensor (quantized when its input is integer)."""
        images = check_pixels(images, self._size)
        if self.layout == "NCHW":
            images = images.transpose(0, 3, 1, 2)
        dtype = np.dtype(self._in["dtype"])
        if dtype.kind in "iu":
            return pixel_bytes(images, dtype)
        return np.ascontiguousarray(images, dtype=dtype)

    def postprocess(self, output: np.ndarray) -> np.ndarray:
        if np.dtype(self._out["dtype"]).kind in "iu":
            scale, zero_point = self._out["quantization"]
            if scale:
                return ((output.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)
        return np.asarray(output).astype(np.float32, copy=False)

    def embedded_info(self) -> dict | None:
        return embedded_tflite_info(self.path)


class LiteRTSession(_TFLiteIO, Session):
    runtime = "litert"

    def __init__(self, path: Path, threads: int | None = None):
        Session.__init__(self, require_file(path))
        self.threads = threads
        self._interp = open_interpreter(self.path, threads)
        self._read_io(self._interp)
        try:
            with native_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{self.path}: the TFLite model cannot be prepared ({' '.join(str(exc).split())})") from None
        self._in_index, self._out_index = self._in["index"], self._out["index"]
        self._batch = int(self._in["shape"][0])

    @property
    def interpreter(self):
        """The underlying `ai_edge_litert` Interpreter (for raw comparisons)."""
        return self._interp

    def _resize_batch(self, n: int) -> None:
        shape = [n, self._size, self._size, 3] if self.layout == "NHWC" else [n, 3, self._size, self._size]
        try:
            self._interp.resize_tensor_input(self._in_index, shape)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(
                f"{self.path}: cannot run a batch of {n} (the graph has a fixed batch of {self._batch}: "
                f"{' '.join(str(exc).split())})"
            ) from None
        self._batch = n

    def invoke(self, tensor: np.ndarray) -> np.ndarray:
        """One interpreter call on an already prepared input: copy in, invoke, copy out."""
        if tensor.shape[0] != self._batch:
            self._resize_batch(tensor.shape[0])
        self._interp.set_tensor(self._in_index, tensor)
        self._interp.invoke()
        return self._interp.get_tensor(self._out_index)

    def describe(self) -> dict:
        return {**super().describe(), "delegate": "XNNPACK (default)"}


_teardown_silenced = False


def _silence_teardown_logs() -> None:
    """At exit, LiteRT's static environment logs each accelerator it destroys to fd 2, after
    Python has finished; point fd 2 at /dev/null once Python's own exit output is done."""
    global _teardown_silenced
    if _teardown_silenced:
        return
    _teardown_silenced = True
    import atexit

    def silence() -> None:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
        except OSError:
            pass

    atexit.register(silence)


def _gpu_failure(lines: list[str], exc: Exception) -> str:
    text = "\n".join(lines)
    if "No adapters found" in text:
        return ("LiteRT's GPU accelerator (WebGPU over Vulkan) found no GPU adapter; it needs a GPU "
                "and its Vulkan driver")
    errors = [re.sub(r"^.*?\]\s*", "", ln).strip() for ln in lines if "ERROR" in ln or "Failed" in ln]
    errors = [e for e in errors if e and not e.startswith("└")]
    detail = errors[-1] if errors else " ".join(str(exc).split())
    return f"LiteRT's GPU accelerator could not start ({detail[:200]})"


class LiteRTGpuSession(_TFLiteIO, Session):
    """LiteRT CompiledModel on the GPU accelerator (CPU only for ops the GPU cannot run).

    `accelerator="cpu"` runs the same API on XNNPACK; the tests use it where no GPU exists.
    """

    runtime = "litert-gpu"
    device = "gpu"

    def __init__(self, path: Path, threads: int | None = None, accelerator: str = "gpu"):
        Session.__init__(self, require_file(path))
        # The interpreter reads and verifies the file and gives quantization parameters, which
        # the CompiledModel API does not expose; it is never allocated.
        self._read_io(open_interpreter(self.path, threads))
        try:
            from ai_edge_litert.compiled_model import CompiledModel
            from ai_edge_litert.cpu_options import CpuOptions
            from ai_edge_litert.hardware_accelerator import HardwareAccelerator
            from ai_edge_litert.options import Options
        except ImportError as exc:  # an ai-edge-litert without the CompiledModel API
            raise RuntimeUnavailableError(
                f"this ai-edge-litert has no CompiledModel GPU API ({exc}); install ai-edge-litert>=2"
            ) from None
        if accelerator == "gpu":
            accel = HardwareAccelerator.GPU | HardwareAccelerator.CPU
            self.runtime, self.device = "litert-gpu", "gpu"
        else:
            accel = HardwareAccelerator.CPU
            self.runtime, self.device = "litert-compiled", "cpu"
        self.threads = threads
        options = Options(accel, cpu_options=CpuOptions(num_threads=threads or 0))
        failure = None
        with native_stderr() as log:
            env = None
            try:
                import ai_edge_litert
                from ai_edge_litert.environment import Environment, EnvironmentOptions

                env = Environment.create(options=EnvironmentOptions(runtime_path=os.path.dirname(ai_edge_litert.__file__)))
                self._model = CompiledModel.from_file(str(self.path), environment=env, options=options)
                self._inputs = self._model.create_input_buffers(0)
                self._outputs = self._model.create_output_buffers(0)
            except Exception as exc:  # noqa: BLE001 - the pybind layer raises bare RuntimeErrors
                failure = exc
                failure.__traceback__ = None  # holds frames that hold the environment
            if failure is not None:
                # Tear the accelerators down now, while their log lines are still captured.
                env = None
                self.__dict__.pop("_model", None)
                gc.collect()
        if failure is not None:
            if accelerator == "gpu":
                raise RuntimeUnavailableError(_gpu_failure(log, failure))
            raise ModelFileError(f"{self.path}: LiteRT CompiledModel cannot load it ({_gpu_failure(log, failure)})")
        self._written = False
        self.fully_accelerated = bool(self._model.is_fully_accelerated())
        self._batch = int(self._in["shape"][0])
        self._out_count = int(np.prod(self._out["shape"]))
        self._out_dtype = np.dtype(self._out["dtype"])

    @property
    def max_batch(self) -> int | None:
        return self._batch

    def invoke(self, tensor: np.ndarray) -> np.ndarray:
        if tensor.shape[0] != self._batch:
            raise ValueError(f"{self.path}: this session runs batches of {self._batch}, got {tensor.shape[0]}")
        if not self._written:
            # The first TensorBuffer.write creates LiteRT's process-wide default environment,
            # which logs a page to fd 2 now and again when the process exits.
            with native_stderr():
                self._inputs[0].write(tensor)
            self._written = True
            _silence_teardown_logs()
        self._inputs[0].write(tensor)
        self._model.run_by_index(0, self._inputs, self._outputs)
        return self._outputs[0].read(self._out_count, self._out_dtype).reshape(self._out["shape"])

    def close(self) -> None:
        # LiteRT logs each accelerator's teardown to fd 2; do it here, quietly, not at exit.
        with native_stderr():
            for name in ("_inputs", "_outputs", "_model"):
                self.__dict__.pop(name, None)
            gc.collect()

    def describe(self) -> dict:
        note = None if self.fully_accelerated else "some ops fall back to the CPU"
        return {**super().describe(), "accelerator": self.device, "fully_accelerated": self.fully_accelerated, "note": note}
