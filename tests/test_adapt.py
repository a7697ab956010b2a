"""Adaptation to unlabelled target images (compiler/training/adapt.py) on a tiny model.

A tiny_cnn trained for a second on noisy solid colours (100% accurate on clean held-out
images) meets a "target camera": the same colours darkened, washed out and with a cast.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.compiler.training import adapt as A
from edgetl.compiler.data.corruptions import apply_steps

from conftest import colour_images
from test_quantize import train_tiny

CAMERA = [("brightness", -0.2), ("contrast", 0.6), ("colour_cast", 0.2)]
INT8_ATOL = 0.03  # max |p - p_float| of an int8 TFLite (tests/test_quantize.py)


@pytest.fixture(scope="module")
def setup():
    x, y = colour_images(96, seed=0)
    model = train_tiny(x, y)
    target, target_y = colour_images(40, seed=2)
    return {"model": model, "target": apply_steps(target, CAMERA, seed=0), "target_y": target_y, "x": x, "y": y}


def _weights(model) -> dict[str, np.ndarray]:
    return {w.name: w.numpy().copy() for w in model.weights}


def test_bn_adaptation_changes_only_the_moving_statistics(setup):
    model = setup["model"]
    before = _weights(model)
    adapted, result = A.adapt_batch_norm(model, setup["target"], setup["x"], batch_size=16)
    after = _weights(adapted)
    assert result.bn_layers == 3 and result.images == 40
    assert after.keys() == before.keys()
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    moving = {name for name in before if "moving_mean" in name or "moving_variance" in name}
    assert changed == moving, f"changed beyond the moving statistics: {sorted(changed - moving)}"
    assert all(np.array_equal(v, model.get_weights()[i]) for i, v in enumerate(before.values()))  # input untouched
    # The layers keep their settings (a frozen layer stays frozen, momentum as before).
    for src, dst in zip(A.batch_norm_layers(model), A.batch_norm_layers(adapted)):
        assert (src.momentum, src.trainable) == (dst.momentum, dst.trainable)


def _bn_output_moments(model, x):
    """Per batch-norm layer, the per-channel mean and std of its output (inference mode)."""
    from edgetl._compat import keras

    layers = A.batch_norm_layers(model)
    outs = keras.Model(model.input, [layer.output for layer in layers]).predict(x.astype(np.float32), verbose=0)
    return [(o.reshape(-1, o.shape[-1]).mean(0), o.reshape(-1, o.shape[-1]).std(0)) for o in outs]


def test_on_the_target_every_batch_norm_outputs_what_it_did_on_the_source(setup):
    """The defining property: after adaptation, each batch norm's output on the target images
    has the per-channel mean and spread the original model's had on the source images (all
    three layers, though each one's input depends on the adapted layers before it)."""
    model, target, source = setup["model"], setup["target"], setup["x"]
    adapted, _ = A.adapt_batch_norm(model, target, source)
    for (mu_a, sd_a), (mu_s, sd_s), (mu_u, sd_u) in zip(
        _bn_output_moments(adapted, target), _bn_output_moments(model, source), _bn_output_moments(model, target)
    ):
        np.testing.assert_allclose(mu_a, mu_s, atol=2e-3 + 2e-3 * np.abs(mu_s).max())
        np.testing.assert_allclose(sd_a, sd_s, rtol=5e-3, atol=1e-3)
    # ... which the unadapted model does not do (the camera moved the statistics).
    assert np.abs(mu_u - mu_s).max() > 0.1


def test_adapting_to_the_source_itself_gives_the_model_back(setup):
    model, source = setup["model"], setup["x"]
    adapted, _ = A.adapt_batch_norm(model, source, source)
    x = setup["target"].astype(np.float32)
    np.testing.assert_allclose(adapted.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-3)


def test_bn_adaptation_folds_into_the_int8_file(setup, tmp_path):
    """The int8 TFLite of the adapted model (calibrated on target images) gives the adapted
    float model's outputs within the int8 tolerance, while the adaptation itself moved the
    outputs by more than that: the new statistics are in the file, not lost in conversion."""
    from edgetl.compiler.compression.quantize import convert_tflite
    from edgetl.runtime import open_session

    model, target = setup["model"], setup["target"]
    adapted, _ = A.adapt_batch_norm(model, target, setup["x"])
    x_eval = target.astype(np.float32)
    p_source = model.predict(x_eval, verbose=0)
    p_adapted = adapted.predict(x_eval, verbose=0)
    assert np.abs(p_adapted - p_source).max() > 5 * INT8_ATOL  # the adaptation matters here
    path = tmp_path / "adapted.int8.tflite"
    path.write_bytes(convert_tflite(adapted, "int8", A.calibration_images(target, 32, seed=0), "uint8"))
    p_int8 = open_session(path, threads=1).predict(target)
    diff = float(np.abs(p_int8 - p_adapted).max())
    assert diff <= INT8_ATOL, f"int8 file vs adapted float model: max |dp| = {diff:.4f} > {INT8_ATOL}"
    assert np.mean(p_int8.argmax(1) == p_adapted.argmax(1)) == 1.0


def test_self_training_changes_only_the_batch_norm_scale_and_shift(setup):
    model = setup["model"]
    start, _ = A.adapt_batch_norm(model, setup["target"], setup["x"])
    before = _weights(start)
    tuned, result = A.self_train(start, setup["target"], epochs=2, learning_rate=1e-2, batch_size=16)
    after = _weights(tuned)
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    affine = {name for name in before if "gamma" in name or "beta" in name}
    assert changed and changed <= affine, f"changed beyond the batch-norm scale and shift: {sorted(changed - affine)}"
    assert result.epochs == 2 and len(result.pseudo_label_agreement) == 2
    assert all(np.array_equal(before[n], w.numpy()) for n, w in ((w.name, w) for w in start.weights))  # input untouched


def test_centroid_pseudo_labels_follow_the_clusters_not_the_wrong_argmax():
    """Two tight clusters in feature space; the classifier mislabels a third of cluster 0."""
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal([5, 0], 0.1, (30, 2)), rng.normal([0, 5], 0.1, (30, 2))])
    probs = np.zeros((60, 2))
    probs[:30, 0], probs[30:, 1] = 0.9, 0.9
    probs[:10] = [0.4, 0.6]  # wrong, but not confident
    probs[:, :] /= probs.sum(1, keepdims=True)
    labels = A.centroid_pseudo_labels(features, probs)
    assert labels[:30].tolist() == [0] * 30 and labels[30:].tolist() == [1] * 30


def test_auto_without_target_labels_uses_the_default_and_with_them_the_best(setup):
    model, target, target_y = setup["model"], setup["target"], setup["target_y"]
    clean_val = colour_images(32, seed=3)
    chosen, report = A.choose_and_adapt(model, "auto", target, source=setup["x"], labelled=(setup["x"], setup["y"]), clean_val=clean_val,
                                        max_drop=100.0, batch_size=16, epochs=1)
    assert report["method"] == A.ADAPT_DEFAULT and report["tried"][0]["method"] == A.ADAPT_DEFAULT and len(report["tried"]) == 1
    chosen, report = A.choose_and_adapt(model, "auto", target, source=setup["x"], labelled=(setup["x"], setup["y"]), clean_val=clean_val,
                                        target_val=(target, target_y), batch_size=16, epochs=1)
    tried = {r["method"]: r["target_val_accuracy"] for r in report["tried"]}
    assert set(tried) == set(A.METHODS)
    assert tried[report["method"]] == max(tried.values())
    same, report = A.choose_and_adapt(model, "none", target, source=setup["x"], clean_val=clean_val)
    assert same is model and report["method"] == "none"


def _write_images(folder, images, labels=None, names=("red", "green", "blue", "yellow")):
    from PIL import Image

    for i, image in enumerate(images):
        sub = folder / (names[labels[i]] if labels is not None else "")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(sub / f"{i}.png")
    return folder


def test_a_compile_adapts_to_the_camera_and_reports_robustness(tmp_path):
    """--unlabeled camera images + --target-val: the chosen method is applied before export
    (the float files are checked against the adapted model), int8 is calibrated on the camera's
    images, and report.json / report.html hold the corruption table."""
    import json

    from conftest import write_color_dataset
    from edgetl.compiler.spec.config import CompileConfig
    from edgetl.compiler.pipeline import compile_model

    data = write_color_dataset(tmp_path / "data", classes=("red", "green", "blue", "yellow"), per_class=12)
    camera, camera_y = colour_images(24, seed=7)
    unlabeled = _write_images(tmp_path / "camera", apply_steps(camera, CAMERA, seed=0))
    val, val_y = colour_images(16, seed=8)
    target_val = _write_images(tmp_path / "target_val", apply_steps(val, CAMERA, seed=1), val_y)
    report = compile_model(CompileConfig(
        data=data, out=tmp_path / "out", unlabeled=unlabeled, target_val=target_val, adapt="auto", adapt_epochs=1,
        use_cache=False, selection="holdout", quantize="int8", teacher="tiny_cnn", teacher_weights="none",
        finetune_epochs=1, student="none",
    ))
    adaptation = report["adaptation"]
    assert {r["method"] for r in adaptation["tried"]} == set(A.METHODS) and adaptation["method"] in A.METHODS
    assert "target_val_accuracy" in adaptation["tried"][0] and "training" in report["models"]["teacher"]
    assert report["models"]["teacher"]["training"]["adaptation"]["method"] == adaptation["method"]
    # The adaptation's guard reads val, so a kept probe is not refit on it (CompileConfig.refits_kept_probe).
    assert "refit" not in report["models"]["teacher"]["training"]["head"]
    assert "refit on train + val" not in report["evaluation"]["choices"]
    assert "adapt" in report["timings_s"] and "robustness" in report["timings_s"]
    robustness = report["robustness"]
    assert robustness["images_from"] == "the test split"
    assert [r["corruption"] for r in robustness["table"]] == list(__import__("edgetl.compiler.data.corruptions", fromlist=["x"]).CORRUPTIONS)
    assert robustness["models"][0].startswith("fp32") and any(m.startswith("int8") for m in robustness["models"])
    assert robustness["weakest"]["corruption"] in {r["corruption"] for r in robustness["table"]}
    assert json.loads((tmp_path / "out" / "report.json").read_text())["robustness"]["table"] == robustness["table"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Robustness to camera corruptions" in page and robustness["weakest"]["corruption"] in page


def test_adapt_without_unlabelled_images_is_a_clear_error(tmp_path):
    from edgetl.compiler.spec.config import CompileConfig
    from edgetl.errors import EdgetlError

    with pytest.raises(EdgetlError, match="--unlabeled"):
        CompileConfig(data=tmp_path, out=tmp_path / "o", adapt="bn").validate()
    with pytest.raises(EdgetlError, match="--adapt"):
        CompileConfig(data=tmp_path, out=tmp_path / "o", adapt="tent").validate()


# -- camera: a simulated camera fitted without labels, then training through it ----------------


def test_clean_target_images_fit_no_camera_and_change_nothing(setup):
    from edgetl.compiler.training.camera import fit_camera

    model, (x, y) = setup["model"], (setup["x"], setup["y"])
    other_clean, _ = colour_images(40, seed=5)
    fit = fit_camera(model, x, other_clean, seed=0)
    assert fit.steps == [] and fit.distance == fit.clean_distance
    adapted, result = A.adapt(model, "camera", other_clean, source=x, labelled=(x, y), seed=0)
    assert adapted is model and result.epochs == 0 and result.camera["steps"] == []


def test_the_fitted_camera_resembles_the_device_and_is_seeded(setup):
    from edgetl.compiler.training.camera import MIN_GAIN, fit_camera

    model, x = setup["model"], setup["x"]
    fit = fit_camera(model, x, setup["target"], seed=0)
    assert fit.steps, "a darkened, washed-out, colour-cast camera fits some camera"
    assert fit.distance < fit.clean_distance * (1 - MIN_GAIN)
    # CAMERA darkens and flattens: the fit finds at least one of exposure, contrast, white balance.
    assert {kind for kind, _ in fit.steps} & {"brightness", "contrast", "colour_cast"}
    assert fit_camera(model, x, setup["target"], seed=0).steps == fit.steps


def test_training_through_the_camera_keeps_batch_norm_statistics_and_the_input_model(setup):
    from edgetl.compiler.training.camera import train_through_camera

    model, x, y = setup["model"], setup["x"], setup["y"]
    before = _weights(model)
    tuned, _ = train_through_camera(model, x, y, CAMERA, epochs=1, batch_size=16, seed=0)
    assert all(np.array_equal(w, before[name]) for name, w in _weights(model).items()), "the input model is never changed"
    after = _weights(tuned)
    for name, w in before.items():
        if "moving_" in name:
            assert np.array_equal(after[name], w), f"{name}: batch norm runs frozen"
    assert any(not np.array_equal(after[n], w) for n, w in before.items() if "kernel" in n), "the weights trained"
    again, _ = train_through_camera(model, x, y, CAMERA, epochs=1, batch_size=16, seed=0)
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(tuned.get_weights(), again.get_weights())), "seeded"


def test_camera_needs_the_labelled_training_images(setup):
    with pytest.raises(ValueError, match="labels"):
        A.adapt(setup["model"], "camera", setup["target"], source=setup["x"])


def test_the_blend_keeps_clean_validation_accuracy_and_its_ends_are_the_two_models(setup):
    from edgetl.compiler.training.camera import blend, choose_blend, train_through_camera

    model, x, y = setup["model"], setup["x"], setup["y"]
    tuned, _ = train_through_camera(model, x, y, CAMERA, epochs=1, batch_size=16, seed=0)
    for share, ends in ((0.0, model), (1.0, tuned)):
        assert all(np.allclose(a, b) for a, b in zip(blend(model, tuned, share).get_weights(), ends.get_weights()))
    clean_val = colour_images(32, seed=3)
    chosen, share, counts = choose_blend(model, tuned, clean_val, batch_size=16)
    before = int(np.sum(model.predict(clean_val[0], verbose=0).argmax(1) == clean_val[1]))
    assert counts[share] >= before or share == min(counts), "the largest share that keeps the clean images, else the smallest"
    assert all(counts[s] < before for s in counts if s > share)
    assert choose_blend(model, tuned, None)[1] == 1.0


def test_the_domain_shift_benchmark_runs_on_a_tiny_model(setup, tmp_path):
    """benchmarks/domain_shift.py end to end (flowers12 and Lite0 take half an hour): every
    figure the README quotes comes out, paired intervals included."""
    import json

    from edgetl.benchmarks import domain_shift

    names = ("0red", "1green", "2blue", "3yellow")  # folder order = the tiny model's class order
    for split, seed in (("train", 10), ("test", 11)):
        x, y = colour_images(48, seed=seed)
        _write_images(tmp_path / "data" / split, x, y, names=names)
    setup["model"].save(tmp_path / "tiny.keras")
    results = domain_shift.main(["--data", str(tmp_path / "data"), "--model", str(tmp_path / "tiny.keras"), "--size", "32",
                                 "--shifts", "washed_out", "--methods", "none,camera,camera_exact", "--int8", "camera",
                                 "--json", str(tmp_path / "r.json")])
    assert results["clean"] >= 0.9 and results["n_test"] == 48
    rows = json.loads((tmp_path / "r.json").read_text())["shifts"]["washed_out"]["methods"]
    camera, exact = rows["camera"], rows["camera_exact"]
    assert camera["camera"] and not camera["camera_known"], "a washed-out camera is fitted"
    assert exact["camera_known"] and exact["camera"] == [list(s) for s in domain_shift.SHIFTS["washed_out"]], "the true camera, not a fit"
    assert camera["shifted_gain"]["n"] == 48 and camera["clean_change"]["n"] == 48 and "int8_shifted" in camera


def test_the_domain_shift_benchmark_refuses_an_unknown_method_or_shift_before_any_work():
    from edgetl.benchmarks import domain_shift

    for argv, word in ((["--methods", "none,camera_exactly"], "method"), (["--shifts", "fog"], "shift")):
        with pytest.raises(SystemExit) as exit_:
            domain_shift.main(["--data", "/nonexistent", *argv])
        assert str(exit_.value).startswith(f"error: unknown {word}"), exit_.value


def test_a_known_camera_is_trained_through_without_a_fit(setup):
    model, x, y = setup["model"], setup["x"], setup["y"]
    adapted, result = A.adapt_camera(model, setup["target"], source=x, labelled=(x, y), seed=0, known_camera=[list(s) for s in CAMERA])
    assert result.camera["known"] and result.camera["steps"] == CAMERA and "evaluations" not in result.camera
    assert result.epochs == 2 and adapted is not model
