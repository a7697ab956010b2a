"""Export a Keras classifier to TFLite and ONNX.

Both files take raw RGB pixels 0..255 (float32, NHWC, resized to the model's input size) and
return class probabilities: the normalisation is the model's own "preprocess" layer, so it is
inside the graph of every file.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

from edgetl._compat import tf
from edgetl.atomic import atomic_path, atomic_write_bytes
from edgetl.models import INPUT_NAME

ONNX_OPSET = 17  # ONNX Runtime >= 1.14, TensorRT 8.6+ and onnxruntime-web all take it


@contextlib.contextmanager
def _quiet():
    """Converters print pages of graph-rewrite chatter; the user needs only errors."""
    tf_logger, tf2onnx_logger = logging.getLogger("tensorflow"), logging.getLogger("tf2onnx")
    levels = tf_logger.level, tf2onnx_logger.level
    tf_logger.setLevel(logging.ERROR)
    tf2onnx_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tf_logger.setLevel(levels[0])
        tf2onnx_logger.setLevel(levels[1])


def export_tflite(model, path: Path) -> Path:
    """Float32 TFLite; written atomically."""
    with _quiet():
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        data = converter.convert()
    atomic_write_bytes(path, data)
    return Path(path)


def export_onnx(model, path: Path, opset: int = ONNX_OPSET) -> Path:
    """Float32 ONNX through tf2onnx, dynamic batch; written atomically."""
    import tf2onnx

    size = model.input_shape[1]
    signature = (tf.TensorSpec((None, size, size, 3), tf.float32, name=INPUT_NAME),)
    with atomic_path(path) as tmp, _quiet():
        tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset, output_path=str(tmp))
    return Path(path)
