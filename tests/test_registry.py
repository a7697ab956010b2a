"""The model registry: names, declared facts, graph shape, weights errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from edgetl.models import (
    DROPOUT_LAYER,
    FEATURES_LAYER,
    LOGITS_LAYER,
    PREPROCESS_LAYER,
    PROBABILITIES_LAYER,
    create_model,
    get_config,
    list_models,
)

from edgetl.errors import ModelNotFoundError, WeightsUnavailableError

REAL_MODELS = [
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
]


def test_required_models_are_registered():
    assert set(REAL_MODELS) <= set(list_models())
    assert "tiny_cnn" not in list_models()  # test variants are listed only on request
    assert "tiny_cnn" in list_models(include_test=True)
    assert list_models("efficientnet_lite?") == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert list_models("efficientnet_lite0_slim*") == ["efficientnet_lite0_slim50", "efficientnet_lite0_slim75"]


def test_listing_models_does_not_import_tensorflow():
    code = "import sys, edgetl.models as m; m.list_models(); m.offline_models(); assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ModelNotFoundError, match="efficientnet_lite0"):
        get_config("resnet5O")


# Every registered model, test variants included: a new family is checked without editing this file.
ALL_MODELS = list_models(include_test=True)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_declared_params_match_the_built_model(name):
    model = create_model(name, weights=None, num_classes=1000)
    assert model.count_params() == get_config(name).params


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_is_one_flat_graph_with_the_shared_layer_names(name):
    from edgetl._compat import keras

    model = create_model(name, weights=None, num_classes=5)
    names = [layer.name for layer in model.layers]
    assert names[1] == PREPROCESS_LAYER
    assert names[-4:] == [FEATURES_LAYER, DROPOUT_LAYER, LOGITS_LAYER, PROBABILITIES_LAYER]
    assert get_config(name).unfreeze_from in names
    deeper = get_config(name).deeper_unfreeze_from
    assert deeper is None or names.index(deeper) < names.index(get_config(name).unfreeze_from)
    # No nested models: tfmot's quantize_model refuses them.
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert model.output_shape == (None, 5)


def test_a_pooled_block_joins_the_features_after_the_final_maps_channels():
    """tiny_cnn pools tiny_relu1 (16 channels) beside its final map (32), as EfficientNet-Lite
    pools its last block: "features" is the two pools, the final map's first."""
    from edgetl.models import (
        BLOCK_POOL_LAYER,
        FINAL_POOL_LAYER,
        final_pool_output,
        final_pool_width,
    )

    from edgetl._compat import keras

    model = create_model("tiny_cnn", weights=None, num_classes=3)
    assert final_pool_width(model) == 32 and model.get_layer(FEATURES_LAYER).output_shape == (None, 48)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    features = keras.Model(model.input, [model.get_layer(FEATURES_LAYER).output, final_pool_output(model),
                                         model.get_layer("tiny_relu1").output]).predict(x, verbose=0)
    np.testing.assert_allclose(features[0][:, :32], features[1], rtol=1e-6)
    np.testing.assert_allclose(features[0][:, 32:], features[2].mean((1, 2)), rtol=1e-5, atol=1e-6)
    assert model.get_layer(BLOCK_POOL_LAYER).input.name.startswith("tiny_relu1")
    assert FINAL_POOL_LAYER not in [layer.name for layer in create_model("resnet50", weights=None, num_classes=3).layers]


def test_preprocessing_is_inside_the_graph():
    model = create_model("resnet50", weights=None, num_classes=3)
    pixels = np.full((1, 224, 224, 3), (10.0, 20.0, 30.0), np.float32)
    normalised = model.get_layer(PREPROCESS_LAYER)(pixels).numpy()
    # caffe style: RGB -> BGR, minus the BGR means
    np.testing.assert_allclose(normalised[0, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-5)


def test_missing_keras_weights_name_the_file_and_the_offline_models(tmp_path, monkeypatch):
    from edgetl.models import keras_applications

    # An empty cache and a download that fails as it does without network.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))

    def no_network(*args, **kwargs):
        raise OSError("URL fetch failure: no network")

    from edgetl._compat import keras

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    with pytest.raises(WeightsUnavailableError) as info:
        create_model("resnet50", weights="imagenet", num_classes=3)
    message = str(info.value)
    assert keras_applications._RESNET50_WEIGHTS.file_name in message
    assert str(tmp_path / "keras" / "models") in message
    assert "efficientnet_lite0" in message  # what works offline


def test_a_user_weights_file_is_loaded(tmp_path):
    from edgetl._compat import keras

    source = create_model("mobilenet_v3_small", weights=None, num_classes=3)
    backbone = keras.Model(source.input, source.get_layer(FEATURES_LAYER).input)
    path = tmp_path / "my_mobilenet_notop.h5"
    backbone.save_weights(str(path))
    loaded = create_model("mobilenet_v3_small", weights=path, num_classes=3)
    for a, b in zip(backbone.weights, keras.Model(loaded.input, loaded.get_layer(FEATURES_LAYER).input).weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_wrong_weights_file_is_a_clear_error(tmp_path):
    bogus = tmp_path / "not_weights.h5"
    bogus.write_bytes(b"not an h5 file")
    with pytest.raises(WeightsUnavailableError, match="not_weights.h5"):
        create_model("resnet50", weights=bogus, num_classes=3)


def test_a_fine_tuned_model_starts_the_next_task_with_a_new_head(tmp_path):
    """Source task to target task: --teacher-weights build/a/teacher.keras with other classes."""
    import numpy as np

    from edgetl.errors import WeightsUnavailableError

    source = create_model("tiny_cnn", weights=None, num_classes=2)
    path = tmp_path / "teacher.keras"
    source.save(path)
    target = create_model("tiny_cnn", weights=path, num_classes=4)
    for layer in source.layers:
        if layer.weights and layer.name != LOGITS_LAYER:
            for mine, theirs in zip(target.get_layer(layer.name).get_weights(), layer.get_weights()):
                np.testing.assert_array_equal(mine, theirs)
    assert target.get_layer(LOGITS_LAYER).get_weights()[0].shape[-1] == 4
    same = create_model("tiny_cnn", weights=path, num_classes=2)  # same classes: the head comes too
    np.testing.assert_array_equal(same.get_layer(LOGITS_LAYER).get_weights()[0], source.get_layer(LOGITS_LAYER).get_weights()[0])
    from edgetl._compat import keras

    other = tmp_path / "other.keras"
    inputs = keras.Input((32, 32, 3))
    keras.Model(inputs, keras.layers.Dense(2, name="logits")(keras.layers.GlobalAveragePooling2D()(inputs))).save(other)
    with pytest.raises(WeightsUnavailableError, match="is not a tiny_cnn model"):
        create_model("tiny_cnn", weights=other, num_classes=4)


def test_a_failed_weights_download_keeps_stdout_clean_and_says_why(monkeypatch, capsys):
    """Keras prints "Downloading data from ..." on stdout; stdout is the summary's, so edgetl
    sends it to stderr, and the failure is one error naming --teacher-weights and the reason."""
    from edgetl.models._registry import get_registered

    from edgetl._compat import keras
    from edgetl.errors import WeightsUnavailableError

    def offline(fname, origin, **kwargs):  # what Keras does without network, without the network
        print(f"Downloading data from {origin}")
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        get_registered("resnet50").weights._fetch()
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.startswith("Downloading data from https://")
    assert "--teacher-weights FILE" in str(info.value) and "Temporary failure in name resolution" in str(info.value)
