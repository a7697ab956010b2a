"""Device targets: named, documented profiles of what a device's runtime wants.

A target is data: which files to emit, at which precision, with which input/output types, the
op set its runtime accepts, the thread count to benchmark with and a default student input
size. `edgetl compile --target NAME` starts from the target's settings (explicit options still
win) and checks the converted files against the target's constraints afterwards.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    summary: str
    runtime: str  # the runtime on the device, in words
    formats: tuple[str, ...]  # files deployed: "tflite", "onnx"
    quantize: str  # a quantization mode (compiler/compression/quantize.py) or "auto" (fastest within the gate)
    io_dtype: str  # input/output type of an integer model: "uint8", "int8" or "float32"
    ops: str  # the op set the device's runtime accepts, checked after conversion
    threads: int  # benchmark thread count, like the device's big cores
    student_size: int  # default student input size in px
    notes: str = ""
    # The ONNX file's precision whatever --quantize says (None: as --quantize): TensorRT builds
    # its engine from fp16 weights.
    onnx_precision: str | None = None
    # Of the files in `formats`, deploy the one measured faster here (else the first format).
    fastest_format: bool = False

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# Op-set names used by `ops` (compiler/spec/constraints.py checks them):
#   "tflite-builtins"    any TFLite builtin op (XNNPACK takes float, fp16 and int8 kernels)
#   "tflite-int8-only"   every op computes on int8/uint8 tensors (bias int32); no float op at all
#   "tflite-gpu"         float/fp16 ops the GPU delegate runs (fp16 weights dequantized on load)
#   "onnx-tensorrt"      ONNX ops TensorRT parses, fp16 weights, static image input
TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            name="android-cpu",
            summary="Android phone CPU: TFLite int8 on XNNPACK",
            runtime="LiteRT (TFLite) with the XNNPACK delegate, 4 threads",
            formats=("tflite",),
            quantize="int8",
            io_dtype="uint8",
            ops="tflite-builtins",
            threads=4,
            student_size=224,
            notes="uint8 input takes camera pixels as they are; MediaPipe ImageClassifier loads it directly",
        ),
        Target(
            name="android-gpu",
            summary="Android phone GPU: TFLite fp16 for the GPU delegate",
            runtime="LiteRT with the GPU delegate (OpenCL/OpenGL), fp16 precision",
            formats=("tflite",),
            quantize="fp16",
            io_dtype="float32",
            ops="tflite-gpu",
            threads=4,
            student_size=224,
            notes="the GPU delegate computes in fp16; fp16 weights halve the download",
        ),
        Target(
            name="edgetpu",
            summary="Coral Edge TPU: full-integer uint8 TFLite, every op int8",
            runtime="edgetpu_compiler, then LiteRT with the Edge TPU delegate",
            formats=("tflite",),
            quantize="int8",
            io_dtype="uint8",
            ops="tflite-int8-only",
            threads=1,
            student_size=224,
            notes="run `edgetpu_compiler model.tflite` on the result; any float op would fall back to the CPU",
        ),
        Target(
            name="raspberry-pi",
            summary="Raspberry Pi 4/5 CPU: TFLite int8, smaller input",
            runtime="LiteRT (tflite-runtime / ai-edge-litert) with XNNPACK, 4 threads",
            formats=("tflite",),
            quantize="int8",
            io_dtype="uint8",
            ops="tflite-builtins",
            threads=4,
            student_size=160,
            notes="160 px roughly halves latency against 224 px on Cortex-A72/A76",
        ),
        Target(
            name="jetson",
            summary="NVIDIA Jetson: ONNX fp16 for TensorRT / CUDA",
            runtime="ONNX Runtime with the TensorRT or CUDA provider, or trtexec",
            formats=("onnx",),
            quantize="fp16",
            io_dtype="float32",
            ops="onnx-tensorrt",
            threads=4,
            student_size=224,
            notes="fp16 weights and compute with float32 input/output; build the TensorRT engine on the device",
            onnx_precision="fp16",
        ),
        Target(
            name="x86-cpu",
            summary="x86 laptop or server CPU: whichever of LiteRT and ONNX Runtime measures faster",
            runtime="LiteRT (XNNPACK) or ONNX Runtime (CPU provider), chosen by measurement",
            formats=("tflite", "onnx"),
            quantize="auto",
            io_dtype="uint8",
            ops="tflite-builtins",
            threads=2,
            student_size=224,
            notes="both files are built and benchmarked here; the report names the faster one",
            fastest_format=True,
        ),
    )
}


def get_target(name: str) -> Target:
    from edgetl.errors import EdgetlError

    try:
        return TARGETS[name]
    except KeyError:
        raise EdgetlError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)} (see `edgetl targets`)") from None
