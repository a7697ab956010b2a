"""Post-training quantization: calibration sampling, every TFLite precision in LiteRT, int8 ONNX
in ONNX Runtime, the integer I/O formulas, and a broken calibration that the accuracy gate
must be able to see.

A tiny_cnn trained for a second on noisy solid-colour images (4 classes) is the float model;
it is 100% accurate on held-out images, so any loss comes from quantization.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.compiler.compression import quantize as Q
from edgetl.runtime import open_session

from conftest import BASE_COLOURS, colour_images


def train_tiny(x, y, seed=0):
    from edgetl._compat import keras
    from edgetl.models import create_model

    keras.utils.set_random_seed(seed)
    model = create_model("tiny_cnn", weights=None, num_classes=len(BASE_COLOURS))
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(x.astype(np.float32), y, epochs=15, batch_size=16, verbose=0)
    return model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    x, y = colour_images(96, seed=0)
    x_test, y_test = colour_images(64, seed=1)
    model = train_tiny(x, y)
    probs = model.predict(x_test.astype(np.float32), verbose=0)
    assert np.mean(probs.argmax(1) == y_test) == 1.0  # the float model is perfect: losses are quantization's
    return {
        "model": model, "x": x, "y": y, "x_test": x_test, "y_test": y_test, "probs": probs,
        "cal": Q.calibration_sample(x, y, 32, seed=0), "dir": tmp_path_factory.mktemp("quantize"),
    }


def _run(path, x):
    return open_session(path, threads=1).predict(x)


# ------------------------------------------------------------------------------- calibration


def test_calibration_sample_is_class_balanced_deterministic_and_interleaved():
    y = np.array([0] * 50 + [1] * 30 + [2] * 3 + [3] * 20)
    x = np.arange(len(y))[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    idx = Q.calibration_indices(y, 22, seed=0)
    counts = np.bincount(y[idx], minlength=4)
    # class 2 has only 3 images: it gives all of them and the others share its shortfall
    assert counts.tolist() == [7, 6, 3, 6] and len(set(idx.tolist())) == 22
    assert np.array_equal(idx, Q.calibration_indices(y, 22, seed=0))
    assert not np.array_equal(idx, Q.calibration_indices(y, 22, seed=1))
    # interleaved: the first 4 images hold one image of each class
    assert sorted(y[idx[:4]].tolist()) == [0, 1, 2, 3]
    sample = Q.calibration_sample(x, y, 22, seed=0)
    assert np.array_equal(sample[:, 0, 0, 0], idx.astype(np.uint8))
    assert len(Q.calibration_indices(y, 10_000)) == len(y)  # more than there is: all of it
    with pytest.raises(ValueError):
        Q.calibration_indices(y, 0)


def test_unlabelled_images_are_left_out_of_a_labelled_sample():
    y = np.array([0, 1, -1, -1, 0, 1, -1])
    assert set(Q.calibration_indices(y, 7).tolist()) == {0, 1, 4, 5}
    assert len(Q.calibration_indices(np.full(5, -1), 3)) == 3  # only unlabelled: use them


def test_pixel_range_nudge_only_touches_near_full_range_samples():
    near = np.full((2, 4, 4, 3), 128, np.uint8)
    near[0, 0, 0, 0], near[1, 3, 3, 2] = 9, 247
    nudged = Q._span_pixel_range(near)
    assert nudged.min() == 0 and nudged.max() == 255 and near.min() == 9  # the caller's copy untouched
    assert np.count_nonzero(nudged != near) == 2
    dark = np.full((2, 4, 4, 3), 3, np.uint8)
    assert np.array_equal(Q._span_pixel_range(dark), dark)  # a bad sample stays bad


def test_precision_is_a_str_enum_with_plain_values():
    assert [p.value for p in Q.Precision] == ["fp32", "fp16", "dynamic", "int8"]
    assert Q.Precision("int8") is Q.Precision.INT8 and Q.Precision.INT8 == "int8" and f"{Q.Precision.FP16}" == "fp16"


# ------------------------------------------------------------------------------- TFLite

# precision, io dtype, max |p - p_float| allowed, file-size ratio to fp32 at most
TFLITE_CASES = [
    ("fp32", "float32", 1e-5, 1.01),
    ("fp16", "float32", 2e-3, 0.7),
    ("dynamic", "float32", 2e-2, 0.6),
    ("int8", "uint8", 0.03, 0.6),
    ("int8", "int8", 0.03, 0.6),
    ("int8", "float32", 0.03, 0.6),
]


@pytest.fixture(scope="module")
def converted(trained):
    """Every TFLite variant, converted once: {(precision, io): bytes}."""
    out = {}
    for precision, io, _, _ in TFLITE_CASES:
        cal = trained["cal"] if precision == "int8" else None
        out[precision, io] = Q.convert_tflite(trained["model"], precision, cal, io)
    return out


@pytest.mark.parametrize(("precision", "io"), [("fp32", "float32"), ("fp16", "float32"), ("dynamic", "float32"), ("int8", "uint8")])
def test_the_lean_saved_model_converts_to_the_file_from_keras_model_gives(trained, converted, precision, io, monkeypatch):
    """compiler/export/convert.py converts from a SavedModel of the inference function alone (4x
    faster than TFLiteConverter.from_keras_model); the files must compute exactly the same."""
    import contextlib

    from edgetl._compat import tf
    from edgetl.compiler.export import convert

    monkeypatch.setattr(convert, "tflite_converter", lambda model: contextlib.nullcontext(tf.lite.TFLiteConverter.from_keras_model(model)))
    cal = trained["cal"] if precision == "int8" else None
    reference = Q.convert_tflite(trained["model"], precision, cal, io)
    ours = converted[precision, io]
    assert abs(len(ours) - len(reference)) <= 64  # the saved function's name differs, nothing else
    outputs = [open_session(Q.write_tflite(trained["dir"] / f"{name}-{precision}-{io}.tflite", data), threads=1).predict(trained["x_test"])
               for name, data in (("keras", reference), ("lean", ours))]
    assert np.array_equal(outputs[0], outputs[1])
    assert Q.tflite_summary(ours)["ops"] == Q.tflite_summary(reference)["ops"]


@pytest.mark.parametrize(("precision", "io", "atol", "size_ratio"), TFLITE_CASES)
def test_every_tflite_precision_runs_in_litert_close_to_the_float_model(trained, converted, precision, io, atol, size_ratio):
    data = converted[precision, io]
    path = Q.write_tflite(trained["dir"] / f"{precision}_{io}.tflite", data)
    session = open_session(path)
    assert session.input_dtype == io
    probs = session.predict(trained["x_test"])
    diff = np.abs(probs - trained["probs"]).max()
    assert diff <= atol, f"{precision}/{io}: max |p - p_float| = {diff:.4g} > {atol}"
    assert np.mean(probs.argmax(1) == trained["probs"].argmax(1)) == 1.0
    assert len(data) <= size_ratio * len(converted["fp32", "float32"])
    summary = Q.tflite_summary(data)
    if precision == "int8":
        # full integer: no kernel computes in float (only the Quantize/Dequantize ends for float I/O)
        assert summary["float_ops"] == []
        assert summary["ops"]["CONV_2D"] == 3
        assert summary["tensor_dtypes"].get("float32", 0) == (2 if io == "float32" else 0)
    elif precision == "fp16":
        assert summary["tensor_dtypes"]["float16"] > 0
    elif precision == "dynamic":
        assert summary["tensor_dtypes"]["int8"] > 0 and summary["float_ops"]


def test_integer_io_details_give_the_formula_an_app_uses(trained, converted):
    from ai_edge_litert.interpreter import Interpreter

    for io, zero_point in (("uint8", 0), ("int8", -128)):
        data = converted["int8", io]
        details = Q.tflite_io_details(data)
        inp, out = details["input"], details["output"]
        # tiny_cnn's (x - 127.5) / 127.5 is the input quantization (folded): the app feeds the
        # bytes (int8: minus 128) and the model reads (q - zero point) * scale, its normalisation
        assert inp["dtype"] == io and inp["scale"] == pytest.approx(1 / 127.5)
        assert abs(inp["zero_point"] - zero_point - 127.5) <= 0.5
        assert inp["normalisation"]["std"] == pytest.approx(127.5)
        assert (out["dtype"], out["scale"]) == (io, 1 / 256)
        assert "q = pixel" in inp["formula"] and "probability = (q - " in out["formula"]
        # Applying the formulas by hand reproduces what the runtime session returns.
        interp = Interpreter(model_content=data)
        interp.resize_tensor_input(0, [8, 32, 32, 3])
        interp.allocate_tensors()
        q_in = (trained["x_test"][:8].astype(np.int16) + zero_point).astype(io)
        interp.set_tensor(interp.get_input_details()[0]["index"], q_in)
        interp.invoke()
        q_out = interp.get_tensor(interp.get_output_details()[0]["index"])
        probs = (q_out.astype(np.float32) - out["zero_point"]) * out["scale"]
        path = Q.write_tflite(trained["dir"] / f"io_{io}.tflite", data)
        np.testing.assert_allclose(probs, _run(path, trained["x_test"][:8]), atol=1e-7)
    float_io = Q.tflite_io_details(converted["int8", "float32"])
    assert float_io["input"]["dtype"] == "float32" and "scale" not in float_io["input"]


def test_compacting_shares_quantization_vectors_without_changing_a_single_output(trained, converted):
    plain = Q.convert_tflite(trained["model"], "int8", trained["cal"], "uint8", compact=False)
    compact = converted["int8", "uint8"]
    assert Q.compact_tflite(plain) == compact
    assert len(compact) < len(plain)
    a = _run(Q.write_tflite(trained["dir"] / "plain.tflite", plain), trained["x_test"])
    b = _run(Q.write_tflite(trained["dir"] / "compact.tflite", compact), trained["x_test"])
    assert np.array_equal(a, b)
    assert Q.tflite_io_details(plain) == Q.tflite_io_details(compact)
    assert Q.tflite_summary(plain) == Q.tflite_summary(compact)


def test_conversion_arguments_are_checked(trained):
    model = trained["model"]
    with pytest.raises(ValueError, match="calibration"):
        Q.convert_tflite(model, "int8")
    with pytest.raises(ValueError, match="needs precision int8"):
        Q.convert_tflite(model, "fp16", io_dtype="uint8")
    with pytest.raises(ValueError, match="io_dtype"):
        Q.convert_tflite(model, "int8", trained["cal"], io_dtype="int16")
    with pytest.raises(ValueError, match=r"\[N, 32, 32, 3\]"):
        Q.convert_tflite(model, "int8", trained["cal"][:, :16, :16])
    with pytest.raises(ValueError):
        Q.convert_tflite(model, "int4")


# ------------------------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def float_onnx(trained):
    from edgetl.compiler.export.convert import export_onnx

    return export_onnx(trained["model"], trained["dir"] / "float.onnx")


def test_the_onnx_export_runs_tf2onnx_s_own_optimizers_and_restores_the_collector(trained, float_onnx):
    """The export collects garbage before each of tf2onnx's optimizers (its graph copies would
    otherwise pile up: 6.5 GB for ResNet50, benchmarks/export_memory.py); the optimizers are
    tf2onnx's defaults, in order, and the garbage collector is left as it was."""
    import gc

    from tf2onnx.optimizer import _get_optimizers

    from edgetl.compiler.export.convert import _collecting_optimizers, export_onnx

    collecting = _collecting_optimizers()
    assert list(collecting) == list(_get_optimizers())
    assert [type(make()) for make in collecting.values()] == list(_get_optimizers().values())
    again = export_onnx(trained["model"], trained["dir"] / "again.onnx")
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    x = trained["x_test"][:4]
    assert np.array_equal(open_session(again).predict(x), open_session(float_onnx).predict(x))


def _weight_bytes(path) -> int:
    """Bytes of an ONNX file's initialisers (its weights, scales and zero points)."""
    import onnx
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(init).nbytes for init in onnx.load(str(path)).graph.initializer)


def test_int8_onnx_is_static_qdq_per_channel_and_runs_in_onnx_runtime(trained, float_onnx):
    out = trained["dir"] / "onnx" / "int8.onnx"
    Q.quantize_onnx(float_onnx, out, trained["cal"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["int8.onnx"]  # no temporary leftovers
    summary = Q.onnx_summary(out)
    assert summary["ops"]["QuantizeLinear"] >= 4 and summary["ops"]["DequantizeLinear"] >= 4
    assert summary["initializer_dtypes"]["int8"] >= 4  # the weights are stored as int8
    session = open_session(out)
    assert session.input_dtype == "float32"  # raw pixels in, quantized inside
    probs = session.predict(trained["x_test"])
    assert np.abs(probs - trained["probs"]).max() <= 0.03
    assert np.mean(probs.argmax(1) == trained["probs"].argmax(1)) == 1.0
    # The weights' bytes shrink about 4x (float32 to int8; the scales and int32 biases add a
    # little). Counted on the weights, not the whole file: tiny_cnn's weights are small next to
    # its graph's nodes (the whole file is 0.8x here; EfficientNet-Lite0's 3.7x smaller).
    assert _weight_bytes(out) < 0.35 * _weight_bytes(float_onnx)
    # per-channel: the first convolution's weight scale has one value per output channel
    import onnx

    model = onnx.load(str(out))
    inits = {i.name: i for i in model.graph.initializer}
    scales = [
        onnx.numpy_helper.to_array(inits[n.input[1]])
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8
        and len(inits[n.input[0]].dims) == 4
    ]
    assert scales and max(s.size for s in scales) == 32  # tiny_conv2 has 32 filters


def test_a_failed_onnx_quantization_leaves_nothing_behind(trained, float_onnx):
    out = trained["dir"] / "failed" / "int8.onnx"
    with pytest.raises(ValueError):
        Q.quantize_onnx(float_onnx, out, trained["cal"][:, :8, :8])
    assert not out.exists()


# ------------------------------------------------------------------------------- broken calibration


def test_a_broken_calibration_gives_a_measurably_worse_int8_model(trained, converted, float_onnx):
    """What the pipeline's accuracy gate must reject: calibrating on black images."""
    x_test, y_test = trained["x_test"], trained["y_test"]
    black = np.zeros_like(trained["cal"])

    def score(path):
        probs = _run(path, x_test)
        return np.mean(probs.argmax(1) == y_test), np.mean(probs.argmax(1) == trained["probs"].argmax(1))

    # Float I/O: with an integer input the input range is the bytes' 0..255 whatever the images
    # (the converter is given it), which by itself rescues this tiny model from black images.
    good = score(Q.write_tflite(trained["dir"] / "good.tflite", converted["int8", "float32"]))
    bad = score(Q.write_tflite(trained["dir"] / "black.tflite", Q.convert_tflite(trained["model"], "int8", black, "float32")))
    assert good == (1.0, 1.0)
    # far beyond any sane gate (default 1 point): near chance level (25%) on this 4-class task
    assert bad[0] <= 0.5 and bad[1] <= 0.5, f"black calibration still scores {bad}"

    Q.quantize_onnx(float_onnx, trained["dir"] / "black.onnx", black)
    onnx_bad = score(trained["dir"] / "black.onnx")
    assert onnx_bad[0] <= 0.5, f"black calibration still scores {onnx_bad} in ONNX Runtime"
