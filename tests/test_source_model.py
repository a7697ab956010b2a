"""Bring your own model: `edgetl compile DATA --model FILE` compiles a classifier trained elsewhere.

The models here are trained in the test, as a user would: plain tf_keras, normalisation done in
NumPy outside the model, saved to a file that edgetl then compiles without training.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import colour_images, write_color_dataset
from edgetl.cli import main

CLASSES = ("blue", "green", "red")  # DATA's folders, sorted: the order edgetl gives the classes
SIZE = 32
FAST = dict(use_cache=False, robustness=False)


def _user_normalise(pixels):
    """The user's own preprocessing, outside the model: -1..1 (what --preprocess tf means)."""
    return pixels.astype(np.float32) / 127.5 - 1.0


def _train_user_model(path, output="softmax", seed=0, preprocess=_user_normalise, order=CLASSES):
    """A tiny classifier trained in a few seconds on the colour images, classes in `order`."""
    from edgetl._compat import keras

    keras.utils.set_random_seed(seed)
    x, y4 = colour_images(240, seed=seed, size=SIZE)
    colour = {0: "red", 1: "green", 2: "blue"}
    keep = y4 < 3  # red, green, blue (the fourth colour is not a class here)
    x, y = x[keep], np.array([order.index(colour[int(v)]) for v in y4[keep]])
    inputs = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    if output == "softmax":
        outputs = keras.layers.Dense(3, activation="softmax")(h)
        loss = keras.losses.SparseCategoricalCrossentropy()
    else:
        outputs = keras.layers.Dense(3)(h)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.02), loss, metrics=["accuracy"])
    model.fit(preprocess(x), y, epochs=15, batch_size=32, verbose=0)
    model.save(path)
    return model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("byom") / "colours"
    write_color_dataset(root / "train", classes=CLASSES, per_class=10, size=SIZE, seed=3)
    write_color_dataset(root / "test", classes=CLASSES, per_class=30, size=SIZE, seed=4)
    return root


@pytest.fixture(scope="module")
def compiled(data, tmp_path_factory):
    from edgetl.compiler.spec.config import CompileConfig
    from edgetl.compiler.pipeline import compile_model

    folder = tmp_path_factory.mktemp("own")
    model = _train_user_model(folder / "own.keras")
    out = folder / "build"
    report = compile_model(CompileConfig(data=data, out=out, model=folder / "own.keras", preprocess="tf", quantize="int8", **FAST))
    return model, out, report


@pytest.mark.slow
def test_the_deployed_int8_file_takes_raw_pixels_and_agrees_with_the_users_model(compiled, data):
    """The bar: model.tflite is int8 with uint8 input (raw pixels, the preprocessing inside it) and
    gives the user's model's answer (fed the user's own normalisation) on >= 99% of test images."""
    from edgetl.compiler.data.datasets import load_images, scan_dataset
    from edgetl.runtime import open_session

    model, out, report = compiled
    session = open_session(out / "model.tflite")
    assert session.input_dtype == "uint8"
    assert report["deployed"]["model"] == "source"
    assert next(a for a in report["artifacts"] if a["file"] == "model.tflite")["precision"] == "int8"
    test = scan_dataset(data, selection="cv").splits["test"]
    x, y = load_images(test, SIZE)
    assert len(x) == 90
    ours = session.predict(x, 16).argmax(1)
    theirs = model.predict(_user_normalise(x), verbose=0).argmax(1)
    assert np.mean(ours == theirs) >= 0.99
    assert np.mean(theirs == y) >= 0.9  # the user's model learnt the colours: the check is not vacuous


@pytest.mark.slow
def test_the_report_says_what_was_given_and_how_it_was_scored(compiled):
    _, out, report = compiled
    source = report["models"]["source"]
    assert set(report["models"]) == {"source"}
    given = source["training"]["source"]
    assert given["output"] == "probabilities" and not given["softmax_appended"]
    assert given["logits_layer"] and given["flattened"] and given["qat_unavailable"] is None
    assert "--preprocess tf" in given["preprocessing"]
    assert given["reference_check"]["passed"] and given["reference_check"]["top1_agreement"] == 1.0
    assert "test/" in report["evaluation"]["scored_on"] and report["evaluation"]["test_images"] == 90
    assert (out / "source.keras").is_file() and "source.keras" in report["files"]
    assert not (out / "teacher.keras").exists()
    # Every export is verified against the user's model fed the user's preprocessing.
    fp32 = next(a for a in report["artifacts"] if a["file"] == "variants/model.fp32.tflite")
    assert fp32["parity"]["passed"] and fp32["parity"]["top1_agreement"] == 1.0
    assert json.loads((out / "report.json").read_text())["deployed"]["model"] == "source"


@pytest.mark.slow
def test_an_edgetl_model_carries_its_contract(compiled, data, tmp_path):
    """source.keras (an edgetl graph: raw pixels in) compiles again without saying anything about
    its input; saying something is refused."""
    from edgetl.compiler.spec.config import CompileConfig
    from edgetl.compiler.pipeline import compile_model
    from edgetl.errors import SettingError

    _, out, first = compiled
    with pytest.raises(SettingError, match="carries its own preprocessing"):
        compile_model(CompileConfig(data=data, out=tmp_path / "x", model=out / "source.keras", preprocess="tf", quantize="fp32", **FAST))
    report = compile_model(CompileConfig(data=data, out=tmp_path / "again", model=out / "source.keras", quantize="fp32", **FAST))
    assert report["models"]["source"]["training"]["source"]["edgetl_model"]
    again = report["models"]["source"]["test"]["accuracy"]
    assert again == first["models"]["source"]["test"]["accuracy"]


@pytest.mark.slow
def test_logits_get_a_softmax_and_labels_give_the_output_order(data, tmp_path):
    """A model that outputs logits, classes in its own order, torch-style normalisation (0..1 then
    ImageNet mean/std): the softmax is appended, --labels maps its outputs to DATA's folders."""
    from edgetl.compiler.spec.config import CompileConfig
    from edgetl.compiler.pipeline import compile_model
    from edgetl.compiler.training.source_model import IMAGENET_MEAN, IMAGENET_STD
    from edgetl.runtime import open_session

    order = ("red", "green", "blue")

    def torch_like(pixels):
        return ((pixels.astype(np.float32) / 255 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)).astype(np.float32)

    _train_user_model(tmp_path / "logits.h5", output="logits", preprocess=torch_like, order=order)
    (tmp_path / "labels.txt").write_text("\n".join(order) + "\n")
    config = CompileConfig(data=data, out=tmp_path / "out", model=tmp_path / "logits.h5", scale="1/255", mean="0.485,0.456,0.406",
                           std="0.229,0.224,0.225", labels=tmp_path / "labels.txt", quantize="fp32", **FAST)
    report = compile_model(config)
    given = report["models"]["source"]["training"]["source"]
    assert given["output"] == "logits" and given["softmax_appended"]
    assert report["dataset"]["classes"] == list(order)
    assert report["models"]["source"]["test"]["accuracy"] >= 0.9  # labels matched to the right outputs
    info = open_session(tmp_path / "out" / "model.tflite").info()
    assert list(info.labels) == list(order)


def _run(argv, monkeypatch, capsys, cwd):
    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


def _save(model_builder, path):
    model = model_builder()
    model.save(path)
    return path


def _small(outputs=3, size=SIZE, final=None):
    from edgetl._compat import keras

    inputs = keras.Input((size, size, 3))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    if final == "lambda":
        return keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0)(keras.layers.Dense(outputs)(h)))
    if final == "exp":  # probabilities computed by hand: no softmax edgetl can split, so no logits
        from edgetl._compat import tf

        e = tf.math.exp(keras.layers.Dense(outputs)(h))
        return keras.Model(inputs, e / tf.reduce_sum(e, axis=-1, keepdims=True))
    return keras.Model(inputs, keras.layers.Dense(outputs, activation="softmax")(h))


@pytest.mark.parametrize(
    "case, extra, expected",
    [
        ("width", [], "outputs 4 scores but"),
        ("no_preprocess", None, "say how it expects its input"),
        ("lambda", [], "refusing to load: it holds a Lambda layer"),
        ("size", ["--input-size", "64"], "--input-size 64 does not match the model"),
        ("both", ["--mean", "0.5"], "give either it or --mean"),
        ("qat", ["--qat"], "last layer"),
    ],
)
def test_wrong_models_and_options_are_one_line_errors(case, extra, expected, data, tmp_path, monkeypatch, capsys):
    model = tmp_path / f"{case}.keras" if case != "lambda" else tmp_path / "lambda.h5"
    builders = {"width": lambda: _small(outputs=4), "lambda": lambda: _small(final="lambda"), "qat": lambda: _small(final="exp")}
    _save(builders.get(case, _small), model)
    argv = ["compile", str(data), "--model", str(model), "--out", str(tmp_path / "out"), "--no-robustness", "--no-cache"]
    argv += ["--preprocess", "tf"] + (extra or []) if extra is not None else []
    code, err = _run(argv, monkeypatch, capsys, tmp_path)
    assert code == 1, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert expected in lines[-1], err[-500:]
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "model.tflite").exists()


def test_model_options_without_a_model_are_refused():
    from edgetl.compiler.spec.config import CompileConfig
    from edgetl.errors import SettingError

    with pytest.raises(SettingError, match="give it with --model"):
        CompileConfig(data="d", out="o", preprocess="tf").validate()


def test_contract_presets_match_keras_applications_preprocess_input():
    """The presets are keras.applications' own: mode tf, torch and caffe on the same pixels."""
    from edgetl._compat import keras
    from edgetl.compiler.training.source_model import PRESETS, InputContract

    x, _ = colour_images(4, seed=0)
    for mode in ("tf", "torch", "caffe"):
        p = PRESETS[mode]
        contract = InputContract(SIZE, p["scale"], p["mean"], p["std"], p["channel_order"], mode)
        theirs = keras.applications.imagenet_utils.preprocess_input(x.astype(np.float32), mode=mode)
        np.testing.assert_allclose(contract.apply(x), theirs, rtol=1e-5, atol=1e-4)
