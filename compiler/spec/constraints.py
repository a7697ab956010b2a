"""Target constraints, checked on the converted files: a violation is an error naming the op."""

from __future__ import annotations

from pathlib import Path

from edgetl.errors import TargetConstraintError  # noqa: F401  (callers import it from here too)


# Ops LiteRT's GPU delegate runs (those a classifier of the registry uses; others fall back to CPU).
_GPU_OPS = {
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEQUANTIZE", "FULLY_CONNECTED",
    "HARD_SWISH", "LOGISTIC", "MAX_POOL_2D", "MEAN", "MUL", "PAD", "RELU", "RELU6", "RESHAPE", "SOFTMAX", "SUB",
    "REVERSE_V2", "STRIDED_SLICE",
}


def check_target(target, tflite: Path, onnx_path: Path) -> dict:
    """Raise TargetConstraintError on the first violation; return what was checked."""
    from edgetl.compiler.compression.quantize import tflite_io_details, tflite_summary

    summary = tflite_summary(tflite)
    ops = set(summary["ops"])
    flex = sorted(op for op in ops if op.startswith("Flex") or op == "CUSTOM")
    if flex:
        raise TargetConstraintError(f"{tflite.name} uses ops outside the TFLite builtins ({', '.join(flex)}): {target.name} cannot run them")
    checked = {"ops": sorted(ops)}
    if target.ops == "tflite-int8-only":
        if summary["float_ops"]:
            raise TargetConstraintError(
                f"{tflite.name} is not full-integer for {target.name}: op {summary['float_ops'][0]} computes in float32 "
                f"({len(summary['float_ops'])} float ops in all); the Edge TPU would run them on the CPU"
            )
        io = tflite_io_details(tflite)
        if io["input"]["dtype"] != target.io_dtype:
            raise TargetConstraintError(f"{tflite.name} input is {io['input']['dtype']}, {target.name} needs {target.io_dtype}")
    elif target.ops == "tflite-gpu":
        unsupported = sorted(ops - _GPU_OPS)
        if unsupported:
            raise TargetConstraintError(f"{tflite.name} has ops the GPU delegate does not run: {', '.join(unsupported)}")
        if summary["tensor_dtypes"].get("int8"):
            raise TargetConstraintError(f"{tflite.name} holds int8 tensors: {target.name} wants a float16/float32 file")
    elif target.ops == "onnx-tensorrt":
        import onnx

        model = onnx.load(str(onnx_path))
        foreign = sorted({n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")})
        if foreign:
            raise TargetConstraintError(f"{onnx_path.name} uses op domains TensorRT does not parse: {', '.join(foreign)}")
        opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        if opset > 17:
            raise TargetConstraintError(f"{onnx_path.name} has opset {opset}; TensorRT 8.6 on JetPack 5 parses up to 17")
        checked["onnx_opset"] = opset
    return checked
