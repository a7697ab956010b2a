"""tfmot compression on a tiny model: QAT, magnitude pruning, strip, pruning-preserving QAT.

The invariants tfmot itself tests (zero sparsity is a no-op, prune-then-strip keeps outputs,
the input model is never changed), plus what edgetl needs: the preprocessing layer stays
float and unpruned, the pruned zeros reach the int8 file, and a QAT model converts to an int8
TFLite whose kernels are all integer.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.compiler.compression import compress as C
from edgetl.compiler.compression import quantize as Q
from edgetl.runtime import open_session

from conftest import BASE_COLOURS, colour_images


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from edgetl._compat import keras
    from edgetl.models import create_model

    x, y = colour_images(96, seed=0)
    x_val, y_val = colour_images(32, seed=1)
    x_test, y_test = colour_images(64, seed=2)
    keras.utils.set_random_seed(0)
    model = create_model("tiny_cnn", weights=None, num_classes=len(BASE_COLOURS))
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(x.astype(np.float32), y, epochs=15, batch_size=16, verbose=0)
    probs = model.predict(x_test.astype(np.float32), verbose=0)
    assert np.mean(probs.argmax(1) == y_test) == 1.0
    return {
        "model": model, "train": (x, y), "val": (x_val, y_val), "x_test": x_test, "y_test": y_test,
        "probs": probs, "dir": tmp_path_factory.mktemp("compress"),
    }


def _snapshot(model):
    return [w.copy() for w in model.get_weights()]


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b))


def _predict(model, x):
    return model(x.astype(np.float32), training=False).numpy()


def _fine_tune(model, data, epochs, learning_rate, teacher=None, **kwargs):
    return C.fine_tune(
        model, teacher=teacher, train_views=data["train"], val=data["val"], epochs=epochs,
        learning_rate=learning_rate, batch_size=16, seed=0, label="test", **kwargs,
    )


# ------------------------------------------------------------------------------- pruning


def test_zero_sparsity_is_a_no_op(data):
    model = data["model"]
    before = _snapshot(model)
    pruned = C.prune(model, 0.0, begin_step=0, end_step=8, frequency=1)
    np.testing.assert_allclose(_predict(pruned, data["x_test"]), data["probs"], atol=1e-6)
    # Masks are updated at every step of a real training run; with nothing to prune and a
    # zero learning rate, the weights come out exactly as they went in.
    _fine_tune(pruned, data, epochs=1, learning_rate=0.0)
    stripped = C.strip(pruned)
    assert C.sparsity_of(pruned) == 0.0 and C.sparsity_of(stripped) == 0.0
    np.testing.assert_allclose(_predict(stripped, data["x_test"]), data["probs"], atol=1e-6)
    assert _same(before, model.get_weights())


def test_prune_then_strip_keeps_outputs_and_reaches_the_target(data):
    model = data["model"]
    before = _snapshot(model)
    begin, end = C.pruning_steps(len(data["train"][1]), 16, ramp_epochs=2)
    pruned = C.prune(model, 0.5, begin, end)
    wrapped = [layer.name for layer in pruned.layers if type(layer).__name__ == "PruneLowMagnitude"]
    # Conv2D kernels only: never the preprocessing layer, nor (by default) the classifier head
    assert wrapped == ["prune_low_magnitude_tiny_conv0", "prune_low_magnitude_tiny_conv1", "prune_low_magnitude_tiny_conv2"]
    result = _fine_tune(pruned, data, epochs=4, learning_rate=1e-3)
    assert result.sparsity == pytest.approx(0.5, abs=0.01)
    assert result.stage.best_epoch >= 2  # only epochs at the target sparsity are kept
    stripped = C.strip(pruned)
    assert not any("prune" in layer.name for layer in stripped.layers)
    assert [layer.name for layer in stripped.layers] == [layer.name for layer in model.layers]
    np.testing.assert_allclose(_predict(stripped, data["x_test"]), _predict(pruned, data["x_test"]), atol=1e-6)
    assert C.sparsity_of(stripped) == pytest.approx(0.5, abs=0.01)
    for name in ("tiny_conv0", "tiny_conv1", "tiny_conv2"):
        kernel = stripped.get_layer(name).kernel.numpy()
        assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.02), name
    assert np.count_nonzero(stripped.get_layer("logits").kernel.numpy() == 0) == 0
    assert np.mean(_predict(stripped, data["x_test"]).argmax(1) == data["y_test"]) >= 0.95
    assert _same(before, model.get_weights())  # the float model is untouched


def test_pruning_trains_under_a_distribution_strategy_and_strips_to_a_plain_model(data):
    """Built inside a MirroredStrategy's scope (one CPU replica here: the same mirrored variables
    and cross-replica mask updates as on several GPUs), the pruned model and the teacher copy
    fine-tune under it, and strip() gives back an ordinary model with the same outputs."""
    from edgetl._compat import tf

    def distributed(model):
        return [isinstance(v, tf.distribute.DistributedValues) for v in model.weights]

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    begin, end = C.pruning_steps(len(data["train"][1]), 16, ramp_epochs=1)
    with strategy.scope():
        pruned = C.prune(data["model"], 0.5, begin, end)
        teacher = C.copy_model(data["model"])
    assert all(distributed(pruned)) and all(distributed(teacher))
    result = _fine_tune(pruned, data, epochs=2, learning_rate=1e-3, teacher=teacher, strategy=strategy)
    assert result.replicas == 1 and result.distilled
    assert result.sparsity == pytest.approx(0.5, abs=0.01)
    with strategy.scope():  # tfmot's wrappers run only under the strategy that made them
        expected = _predict(pruned, data["x_test"])
    stripped = C.strip(pruned)
    assert not any(distributed(stripped))
    np.testing.assert_allclose(_predict(stripped, data["x_test"]), expected, atol=1e-6)
    assert C.sparsity_of(stripped) == pytest.approx(0.5, abs=0.01)


def test_an_interrupted_pruning_fit_resumes_from_its_backup(data, tmp_path):
    """Distributed compiles back every fit up (distribution.fit_callbacks): a pruning fine-tune
    stopped after its 2nd of 4 epochs, run again, begins at the 3rd and still reaches the target."""
    from edgetl._compat import keras
    from edgetl.compiler.training import distribution

    began = []

    class StopAfter(keras.callbacks.Callback):
        def __init__(self, epoch):
            super().__init__()
            self.stop_epoch = epoch

        def on_epoch_begin(self, epoch, logs=None):
            began.append(epoch)

        def on_epoch_end(self, epoch, logs=None):
            if epoch == self.stop_epoch:
                raise KeyboardInterrupt  # as a lost worker: the fit ends without finishing

    begin, end = C.pruning_steps(len(data["train"][1]), 16, ramp_epochs=2)
    try:
        distribution.set_backup(tmp_path / "backup")
        with pytest.raises(KeyboardInterrupt):
            _fine_tune(C.prune(data["model"], 0.5, begin, end), data, epochs=4, learning_rate=1e-3, callbacks_extra=[StopAfter(1)])
        distribution.set_backup(tmp_path / "backup")  # the same command again: its first fit is fit-1 again
        result = _fine_tune(C.prune(data["model"], 0.5, begin, end), data, epochs=4, learning_rate=1e-3, callbacks_extra=[StopAfter(-1)])
    finally:
        distribution.set_backup(None)
    assert began == [0, 1, 2, 3]  # epochs 0-1, then 2-3: resumed, not started over
    assert result.sparsity == pytest.approx(0.5, abs=0.01)


def test_prune_head_option_and_bad_arguments(data):
    pruned = C.prune(data["model"], 0.5, 0, 4, prune_head=True)
    assert "prune_low_magnitude_logits" in [layer.name for layer in pruned.layers]
    assert C.find_layer(pruned, "logits").name == "prune_low_magnitude_logits"
    with pytest.raises(ValueError, match="target sparsity"):
        C.prune(data["model"], 1.0, 0, 4)
    with pytest.raises(ValueError, match="begin_step < end_step"):
        C.prune(data["model"], 0.5, 4, 4)


# ------------------------------------------------------------------------------- QAT


def test_qat_leaves_preprocessing_float_and_converts_to_an_all_int8_tflite(data):
    model, teacher = data["model"], data["model"]
    before = _snapshot(model)
    cal = Q.calibration_sample(*data["train"], 32)
    qat = C.quantize_aware(model, cal)
    assert C.float_layers(qat) == ["preprocess (ImagePreprocessing)"]
    assert C.find_layer(qat, "logits").name == "quant_logits"
    # calibrated ranges: the QAT model matches the float model before any training step
    assert np.abs(_predict(qat, data["x_test"]) - data["probs"]).max() <= 0.05
    result = _fine_tune(qat, data, epochs=2, learning_rate=1e-4, teacher=teacher)
    assert result.distilled and result.stage.epochs_run == 2 and result.start_val_accuracy == 1.0
    record = result.to_json()  # report.json's: each accuracy with its images and interval
    n_val = len(data["val"][1])
    assert record["stage"]["val_images"] == n_val and record["start_val_ci95"][0] < 1.0 == record["start_val_ci95"][1]
    assert _same(before, model.get_weights())

    data_int8 = Q.convert_tflite(qat, "int8", cal, "uint8")
    summary = Q.tflite_summary(data_int8)
    assert summary["float_ops"] == [] and summary["tensor_dtypes"].get("float32", 0) == 0
    assert summary["ops"]["CONV_2D"] == 3 and summary["ops"]["FULLY_CONNECTED"] == 1
    io = Q.tflite_io_details(data_int8)["input"]
    assert (io["dtype"], io["scale"], io["zero_point"]) == ("uint8", 1.0, 0)
    path = Q.write_tflite(data["dir"] / "qat.tflite", data_int8)
    probs = open_session(path).predict(data["x_test"])
    assert np.abs(probs - data["probs"]).max() <= 0.05
    assert np.mean(probs.argmax(1) == data["y_test"]) == 1.0
    with pytest.raises(ValueError, match="int8 only"):
        Q.convert_tflite(qat, "fp16")


def test_keep_last_keeps_what_training_made_where_keep_best_would_choose_on_val(data):
    """A compile gates its files on val, so its fine-tunes keep their last epoch: a learning rate
    that ruins the model shows up on val, where "best" would quietly return to the start."""
    cal = Q.calibration_sample(*data["train"], 32)
    kept_best = C.quantize_aware(data["model"], cal)
    best = _fine_tune(kept_best, data, epochs=2, learning_rate=1.0)
    assert best.stage.best_epoch == 0 and best.stage.best_val_accuracy == best.start_val_accuracy == 1.0
    kept_last = C.quantize_aware(data["model"], cal)
    last = _fine_tune(kept_last, data, epochs=2, learning_rate=1.0, keep="last")
    assert last.stage.epochs_run == last.stage.best_epoch == 2 and last.kept == "last" and best.kept == "best"
    assert last.stage.best_val_accuracy < 0.9
    x_val, y_val = data["val"]
    assert np.mean(_predict(kept_last, x_val).argmax(1) == y_val) == pytest.approx(last.stage.best_val_accuracy)
    with pytest.raises(ValueError, match="keep"):
        _fine_tune(C.quantize_aware(data["model"], cal), data, epochs=1, learning_rate=0.0, keep="first")


def test_an_all_zero_weight_channel_converts_with_its_bias_intact(data):
    """Pruning empties whole channels; in QAT their weight range is [0, 0], and the converter
    then overflows the channel's int32 bias unless conversion_copy widens the range."""
    model = C._copy(data["model"])
    kernel = model.get_layer("tiny_conv1").kernel
    dead = kernel.numpy()
    dead[..., :4] = 0.0  # four dead output channels; batch norm still gives them a bias
    kernel.assign(dead)
    probs = _predict(model, data["x_test"])
    qat = C.quantize_aware(model, Q.calibration_sample(*data["train"], 32))
    ranges = {w.name.split("/")[-1]: w for w in C.find_layer(qat, "tiny_conv1").weights if "kernel_m" in w.name}
    assert len(ranges) == 2 and all(np.all(w.numpy()[:4] == 0) for w in ranges.values())
    int8 = Q.convert_tflite(qat, "int8", Q.calibration_sample(*data["train"], 32), "uint8")
    assert all(np.all(w.numpy()[:4] == 0) for w in ranges.values())  # the QAT model is untouched
    out = open_session(Q.write_tflite(data["dir"] / "dead.tflite", int8)).predict(data["x_test"])
    assert np.abs(out - probs).max() <= 0.05
    # the biases the file stores for the second convolution (batch norm folded in) are the float
    # model's, dead channels included (without the fix they are clamped at +-2^31 and wrong)
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=int8)
    conv = [op for op in interp._get_ops_details() if op["op_name"] == "CONV_2D"][1]
    (bias,) = [t for t in interp.get_tensor_details() if t["index"] == conv["inputs"][2]]
    stored = interp.get_tensor(bias["index"]) * bias["quantization_parameters"]["scales"]
    bn = model.get_layer("tiny_bn1")
    gamma, beta, mean, var = (w.numpy() for w in bn.weights)
    np.testing.assert_allclose(stored, beta - mean * gamma / np.sqrt(var + bn.epsilon), atol=1e-4)
    fixed = C.conversion_copy(qat)
    widened = [w for w in C.find_layer(fixed, "tiny_conv1").weights if "kernel_max" in w.name][0].numpy()
    assert np.all(widened[:4] > 0) and np.array_equal(widened[4:], ranges["kernel_max:0"].numpy()[4:])


def test_calibrated_ranges_are_the_min_max_of_the_images(data):
    qat = C.quantize_aware(data["model"])
    untrained = _predict(qat, data["x_test"])
    x = Q.calibration_sample(*data["train"], 32)
    # 3 conv and 1 dense weight ranges, 3 conv-bn-relu outputs, the pooled features, the logits
    assert C.calibrate_ranges(qat, x, batch_size=8) == 9
    # the classifier's output range is the min/max of the logits over the images (computed
    # from fake-quantized features and weights, hence not to the last digit), not tfmot's +-6
    logits = C.logits_model(data["model"])(x.astype(np.float32), training=False).numpy()
    wrapper = C.find_layer(qat, "logits")
    ranges = {w.name.split("/")[-1].split(":")[0]: w.numpy() for w in wrapper.weights if w.name.endswith(("_min:0", "_max:0"))}
    lo, hi = min(logits.min(), 0.0), max(logits.max(), 0.0)
    found = [(k, v) for k, v in ranges.items() if k.startswith("post_activation") or k.startswith("output")]
    assert any(np.isclose(v, lo, rtol=0.05) for k, v in found if k.endswith("min")), ranges
    assert any(np.isclose(v, hi, rtol=0.05) for k, v in found if k.endswith("max")), ranges
    calibrated = _predict(qat, data["x_test"])
    assert np.abs(calibrated - data["probs"]).max() < np.abs(untrained - data["probs"]).max()


def test_qat_wraps_registry_models_and_keeps_unsupported_layers_float():
    from edgetl.models import create_model

    model = create_model("mobilenet_v3_small", weights=None, num_classes=12, input_size=96)
    qat = C.quantize_aware(model)
    floats = C.float_layers(qat)
    assert floats[0] == "preprocess (ImagePreprocessing)"
    # hard-swish arithmetic (TFOpLambda) and Multiply are not in tfmot's registry: float
    assert {f.split(" (")[1][:-1] for f in floats} == {"ImagePreprocessing", "TFOpLambda", "Multiply"}
    wrapped = [layer for layer in qat.layers if type(layer).__name__ == "QuantizeWrapperV2"]
    assert sum(type(C._inner(layer)).__name__ == "Conv2D" for layer in wrapped) >= 30
    assert qat.output_shape == (None, 12)


# ------------------------------------------------------------------------------- both


def test_prune_preserving_qat_keeps_the_zeros_down_to_the_int8_file(data):
    begin, end = C.pruning_steps(len(data["train"][1]), 16, ramp_epochs=1)
    pruned = C.prune(data["model"], 0.5, begin, end)
    _fine_tune(pruned, data, epochs=2, learning_rate=1e-3)
    stripped = C.strip(pruned)
    pqat = C.prune_preserving_qat(stripped)
    assert C.float_layers(pqat) == ["preprocess (ImagePreprocessing)"]
    result = _fine_tune(pqat, data, epochs=2, learning_rate=1e-3, teacher=data["model"])
    assert result.stage.epochs_run == 2
    assert C.sparsity_of(pqat) == pytest.approx(0.5, abs=0.01)  # trained, still 50% zeros
    # plain QAT on the same model refills the zeros: that is what PQAT is for
    qat = C.quantize_aware(stripped)
    _fine_tune(qat, data, epochs=2, learning_rate=1e-3)
    assert C.sparsity_of(qat) < 0.1

    int8 = Q.convert_tflite(pqat, "int8", Q.calibration_sample(*data["train"], 32), "uint8")
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=int8)
    # the filters of the three CONV_2D ops, as stored in the file
    kernels = [
        interp.get_tensor(op["inputs"][1]) for op in interp._get_ops_details() if op["op_name"] == "CONV_2D"
    ]
    assert all(k.dtype == np.int8 for k in kernels)
    assert len(kernels) == 3
    zeros = sum(int(np.count_nonzero(k == 0)) for k in kernels) / sum(k.size for k in kernels)
    assert zeros == pytest.approx(0.5, abs=0.02)
    path = Q.write_tflite(data["dir"] / "pqat.tflite", int8)
    probs = open_session(path).predict(data["x_test"])
    assert np.mean(probs.argmax(1) == data["y_test"]) >= 0.95


def test_clustering_keeps_the_zeros_and_shares_values_down_to_the_int8_file(data):
    begin, end = C.pruning_steps(len(data["train"][1]), 16, ramp_epochs=1)
    pruned = C.prune(data["model"], 0.5, begin, end)
    _fine_tune(pruned, data, epochs=2, learning_rate=1e-3)
    stripped = C.strip(pruned)
    zeros_before = [stripped.get_layer(n).kernel.numpy() == 0 for n in ("tiny_conv0", "tiny_conv1", "tiny_conv2")]
    before = _snapshot(stripped)
    assert C.distinct_values(stripped) > 100

    clustered = C.cluster(stripped, 8)
    _fine_tune(clustered, data, epochs=2, learning_rate=1e-4, teacher=data["model"])
    plain = C.strip_clusters(clustered)
    assert _same(before, stripped.get_weights())  # the pruned model is untouched
    assert [layer.name for layer in plain.layers] == [layer.name for layer in stripped.layers]
    assert C.distinct_values(plain) <= 8
    for name, zeros in zip(("tiny_conv0", "tiny_conv1", "tiny_conv2"), zeros_before):
        # preserve_sparsity: the pruned zeros stay where they were, and no new ones appear
        np.testing.assert_array_equal(plain.get_layer(name).kernel.numpy() == 0, zeros, err_msg=name)
    np.testing.assert_allclose(_predict(plain, data["x_test"]), _predict(clustered, data["x_test"]), atol=1e-5)

    calibration = Q.calibration_sample(*data["train"], 32)
    pcqat = C.cluster_preserving_qat(plain, calibration)
    _fine_tune(pcqat, data, epochs=2, learning_rate=1e-4, teacher=data["model"])
    assert C.sparsity_of(pcqat) == pytest.approx(0.5, abs=0.01)
    int8 = Q.convert_tflite(pcqat, "int8", calibration, "uint8")
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=int8)
    kernels = [interp.get_tensor(op["inputs"][1]) for op in interp._get_ops_details() if op["op_name"] == "CONV_2D"]
    assert len(kernels) == 3 and all(k.dtype == np.int8 for k in kernels)
    for kernel in kernels:  # OHWI, one scale per output channel: at most 8 codes besides 0
        assert max(len(np.unique(channel[channel != 0])) for channel in kernel) <= 8
    zeros = sum(int(np.count_nonzero(k == 0)) for k in kernels) / sum(k.size for k in kernels)
    assert zeros == pytest.approx(0.5, abs=0.02)
    path = Q.write_tflite(data["dir"] / "pcqat.tflite", int8)
    probs = open_session(path).predict(data["x_test"])
    assert np.mean(probs.argmax(1) == data["y_test"]) >= 0.95
    from edgetl.benchmarks.file_anatomy import anatomy

    filters = anatomy(path)["conv kxk filters"]  # what the benchmark script reports
    assert filters["codes"] <= 8 and filters["zeros"] == pytest.approx(zeros)
    assert filters["bytes"] == sum(k.size for k in kernels)
    with pytest.raises(ValueError, match="at least 2 clusters"):
        C.cluster(stripped, 1)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet50"])
def test_qat_wraps_every_layer_of_the_big_registry_models(name):
    from edgetl.models import create_model

    model = create_model(name, weights=None, num_classes=12, input_size=96)
    qat = C.quantize_aware(model)
    assert C.float_layers(qat) == ["preprocess (ImagePreprocessing)"]
    x = np.random.default_rng(0).uniform(0, 255, (2, 96, 96, 3)).astype(np.float32)
    assert qat(x, training=False).shape == (2, 12)
