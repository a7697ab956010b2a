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


@contextlib.contextmanager
def tflite_converter(model):
    """A TFLiteConverter for the model's inference pass, from a lean SavedModel of it.

    `TFLiteConverter.from_keras_model` first saves the whole Keras model in the legacy
    SavedModel format, tracing every layer's call functions: for EfficientNet-Lite0 that is
    about 10 of the 13 s a conversion takes, and a compile converts 4 to 6 times. Here one
    function, `model(images, training=False)`, is saved with the model's variables; the files
    that come out are the same (tests/test_quantize.py compares them; measured on Lite0 for
    fp32, fp16, dynamic and uint8 int8: identical outputs, 3-4 s per conversion instead of 12-16).
    """
    import tempfile

    inputs = model.inputs[0]
    spec = tf.TensorSpec(inputs.shape, inputs.dtype, name=inputs.name.split(":")[0])
    module = tf.Module()
    module.weights = list(model.variables)  # tracked, so the saved function may capture them
    module.forward = tf.function(lambda images: model(images, training=False), input_signature=[spec])
    with tempfile.TemporaryDirectory(prefix="edgetl-forward-") as folder:
        tf.saved_model.save(module, folder, signatures=module.forward)
        yield tf.lite.TFLiteConverter.from_saved_model(folder)


def export_tflite(model, path: Path) -> Path:
    """Float32 TFLite; written atomically."""
    with _quiet(), tflite_converter(model) as converter:
        data = converter.convert()
    atomic_write_bytes(path, data)
    return Path(path)


def export_onnx(model, path: Path, opset: int = ONNX_OPSET) -> Path:
    """Float32 ONNX through tf2onnx, dynamic batch; written atomically."""
    import tf2onnx

    size = model.input_shape[1]
    signature = (tf.TensorSpec((None, size, size, 3), tf.float32, name=INPUT_NAME),)
    with atomic_path(path) as tmp, _quiet(), _gc_frozen():
        tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset, output_path=str(tmp),
                                   optimizers=_collecting_optimizers())
    return Path(path)


@contextlib.contextmanager
def _gc_frozen():
    """Objects that exist before the conversion are left out of its garbage collections, so each
    one scans only what tf2onnx made (with TensorFlow loaded, a full collection is slow)."""
    import gc

    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _collecting_optimizers():
    """tf2onnx's default graph optimizers, each preceded by a garbage collection; None (its
    defaults, unchanged) if this tf2onnx does not list them.

    tf2onnx deep-copies the whole graph, weights included, before each of its ~12 optimizers, on
    every pass until none changes anything (37 copies for ResNet50), and its graphs hold reference
    cycles, so the copies it drops wait for Python's rare full collection: converting ResNet50
    (94 MB of weights) peaked at 6.5-7.3 GiB and held as much after. Collecting before each
    optimizer runs keeps one spare copy alive: 2.55 GiB peak, the same graph, and faster, as the
    collections scan only tf2onnx's objects (`_gc_frozen`; benchmarks/export_memory.py measures
    both ways).
    """
    import gc
    from collections import OrderedDict

    try:
        from tf2onnx.optimizer import _get_optimizers
    except ImportError:
        return None

    def collecting(factory):
        def make():
            gc.collect()
            return factory()
        return make

    return OrderedDict((name, collecting(factory)) for name, factory in _get_optimizers().items())
