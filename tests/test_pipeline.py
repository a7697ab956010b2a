"""The spine end to end on a tiny registered model and generated images (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgetl.compiler.cache import file_digest
from edgetl.compiler.spec.config import CompileConfig
from edgetl.compiler.pipeline import compile_model
from edgetl.errors import DataError, OutputExistsError
from edgetl.runtime import open_session

FAST = dict(use_cache=False, selection="holdout", quantize="fp32", teacher="tiny_cnn", teacher_weights="none", finetune_epochs=2, student="none")
# A tiny student at a smaller input size than its teacher: the distillation path, with resizing.
DISTIL = {**FAST, "quantize": None, "student": "tiny_cnn", "student_weights": "none", "student_size": 24, "distill_epochs": 2}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from conftest import write_color_dataset

    root = tmp_path_factory.mktemp("spine")
    data = write_color_dataset(root / "data", per_class=20)
    (data / "red" / "notes.txt").write_text("not an image")
    (data / "green" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    from PIL import Image

    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 2], rgba[..., 3] = 220, 255  # an opaque blue PNG with an alpha channel: used
    Image.fromarray(rgba, "RGBA").save(data / "blue" / "with_alpha.png")
    # Unlabelled images, as from the device's camera: they feed the distillation loss alone.
    unlabeled = write_color_dataset(root / "camera", per_class=4, seed=5)
    (unlabeled / "blue" / "empty.jpg").write_bytes(b"")
    out = root / "out"
    report = compile_model(CompileConfig(data=data, out=out, unlabeled=unlabeled, **DISTIL))
    return out, report


def test_compile_writes_every_artefact(compiled):
    out, report = compiled
    for name in (
        "model.tflite", "model.onnx", "teacher.keras", "student.keras", "labels.txt", "model_info.json",
        "report.json", "report.html", "confusion_matrix.png", "app/Classifier.kt", "app/Classifier.swift",
        "app/golden/expected.json", "variants/model.fp32.tflite", "variants/model.int8.tflite",
    ):
        assert (out / name).is_file(), name
    # No temporary leftovers anywhere.
    assert not list(out.rglob("*unverified*")) and not list(out.rglob(".*"))
    assert (out / "labels.txt").read_text().split() == ["blue", "green", "red"]
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    page = (out / "report.html").read_text()
    # Self-contained: opens offline, images inline, nothing fetched.
    assert "<script" not in page and "src='http" not in page and "href='http" not in page
    assert page.count("data:image/png;base64,") >= 2  # the trade-off chart and the confusion matrix
    assert report["deployed"]["why"].split(":")[0] in page


def test_report_holds_what_the_gallery_and_the_curves_need(compiled):
    out, report = compiled
    from edgetl.compiler.report.gallery import misclassified

    rows = report["deployed"]["test_predictions"]
    deployed = next(a for a in report["artifacts"] if a["file"] == "model.tflite")
    classes = report["dataset"]["classes"]
    cm = np.zeros((len(classes), len(classes)), int)
    for r in rows:
        assert (Path(report["dataset"]["root"]) / r["path"]).is_file() and 0 < r["confidence"] <= 1
        assert r["digest"] == file_digest(Path(report["dataset"]["root"]) / r["path"]).hex()[:16]  # the photo's bytes
        assert set(r["keras"]) == set(report["models"])  # teacher, student, baseline
        cm[classes.index(r["true"]), classes.index(r["predicted"])] += 1
    assert cm.tolist() == deployed["test"]["confusion_matrix"]  # model.tflite's own answers, in test order
    wrong = sum(len(g.mistakes) for g in misclassified(report))
    assert wrong == cm.sum() - np.trace(cm)
    page = (out / "report.html").read_text()
    assert page.count("<figure") == wrong
    for stage in (report["models"]["teacher"]["training"]["top"], report["models"]["student"]["training"]["distillation"]["stage"]):
        history = stage["history"]
        assert len(history["val_accuracy"]) == stage["epochs_run"] == len(history["loss"])
        if stage["best_epoch"]:
            assert history["val_accuracy"][stage["best_epoch"] - 1] == pytest.approx(stage["best_val_accuracy"])


def test_report_lists_skipped_files_and_checks_each_export(compiled):
    _, report = compiled
    skipped = {item["path"] for item in report["dataset"]["skipped"]}
    assert skipped == {"red/notes.txt", "green/broken.jpg"}
    used = {s.path.name for split in ("train", "val", "test") for s in _scan(report)[split]}
    assert "with_alpha.png" in used
    by_file = {a["file"]: a for a in report["artifacts"]}
    assert {"teacher.keras", "student.keras", "model.tflite", "model.onnx"} <= set(by_file)
    # The float exports are checked against the Keras model within its declared tolerance.
    for name in ("variants/model.fp32.tflite", "variants/model.fp32.onnx"):
        parity = by_file[name]["parity"]
        assert parity["passed"] and parity["max_abs_diff"] <= 1e-4
    # Each deployed file is one of the measured variants, with that variant's figures.
    for name, variant in (("model.tflite", report["deployed"]["tflite_variant"]), ("model.onnx", report["deployed"]["onnx_variant"])):
        assert by_file[name]["test"] == by_file[variant]["test"] and by_file[variant]["gate"] == "passed"
        test = by_file[name]["test"]
        assert len(test["per_class"]) == 3 and np.array(test["confusion_matrix"]).sum() == test["images"]
    # The gate's figure for every candidate carries its images, interval and n (a newcomer found
    # only a bare val_accuracy), as does each probe's cross-validated and val accuracy.
    val_images = len(_scan(report)["val"])
    for a in report["artifacts"]:
        if a["runtime"] != "keras":
            gate = a["gate_accuracy"]
            assert gate["on"] == gate["split"] == "val" and gate["n"] == val_images
            assert "val_accuracy" not in a  # the gate's figure is said once, with its interval
            assert gate["ci95"][0] <= gate["accuracy"] <= gate["ci95"][1]
    for role in ("teacher", "student"):
        head = report["models"][role]["training"]["head"]
        assert head["cv_ci95"][0] <= head["cv_accuracy"] <= head["cv_ci95"][1] and head["cv_images"] > 0
        assert head["val_images"] == val_images and head["val_ci95"][0] <= head["val_accuracy"] <= head["val_ci95"][1]
    top = report["models"]["teacher"]["training"]["top"]
    assert top["val_images"] == val_images and top["best_val_ci95"][0] <= top["best_val_accuracy"] <= top["best_val_ci95"][1]
    for trained in report["optimization"]["trained"].values():  # QAT or pruning fine-tuning, when any ran
        assert trained["stage"]["val_images"] == val_images and len(trained["start_val_ci95"]) == 2
    assert set(report["timings_s"]) == {"data", "teacher", "student", "baseline", "adapt", "export", "verify", "optimize", "package", "robustness"}
    peaks = list(report["peak_memory_mb"].values())  # the process's high-water mark after each stage
    # After the data stage TensorFlow may not be loaded yet (this module alone: ~60 MB); after
    # training it is (hundreds of MB), whichever tests ran before in this process.
    assert list(report["peak_memory_mb"]) == list(report["timings_s"]) and peaks == sorted(peaks) and peaks[0] > 0 and peaks[-1] > 300
    assert set(report["models"]) == {"teacher", "student", "baseline"}
    assert report["models"]["student"]["input_size"] == 24 and report["models"]["teacher"]["input_size"] == 32
    gain = report["distillation"]["distillation_gain_accuracy"]
    assert gain == report["models"]["student"]["test"]["accuracy"] - report["models"]["baseline"]["test"]["accuracy"]
    paired = report["distillation"]["distillation_gain_paired"]  # the same test images, paired
    assert paired["n"] == report["models"]["student"]["test"]["images"] and paired["difference"] == pytest.approx(gain)


def test_unlabelled_images_reach_the_distillation_only(compiled):
    _, report = compiled
    assert report["dataset"]["unlabeled"]["images"] == 12
    assert [s["path"] for s in report["dataset"]["unlabeled"]["skipped"]] == ["blue/empty.jpg"]
    distillation = report["models"]["student"]["training"]["distillation"]
    assert distillation["unlabelled_images"] == 12 and distillation["labelled_images"] == 43
    baseline = report["models"]["baseline"]["training"]["labels_only"]
    assert baseline["unlabelled_images"] == 0 and baseline["alpha"] == 0.0


def test_the_pipeline_learns(compiled):
    # Solid colours are trivially separable: a broken training stage or a label mix-up shows here.
    _, report = compiled
    assert all(a["test"]["accuracy"] >= 0.9 for a in report["artifacts"])


def _scan(report):
    from edgetl.compiler.data.datasets import scan_dataset

    cfg = report["config"]
    return scan_dataset(cfg["data"], val_fraction=cfg["val_fraction"], test_fraction=cfg["test_fraction"], seed=cfg["seed"]).splits


def test_exports_take_raw_pixels_and_agree_with_keras(compiled):
    out, report = compiled
    pixels = np.random.default_rng(1).integers(0, 256, (4, 24, 24, 3)).astype(np.uint8)
    reference = open_session(out / "student.keras").run(pixels)  # the deployed model
    for name in ("variants/model.fp32.tflite", "variants/model.fp32.onnx"):
        np.testing.assert_allclose(open_session(out / name).run(pixels), reference, atol=1e-4)
    # The deployed files may be quantized: they still take raw pixels and carry their labels.
    for name in ("model.tflite", "model.onnx"):
        session = open_session(out / name)
        assert session.input_size == 24 and session.info().labels == ("blue", "green", "red")
        probs = session.run(pixels)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=0.02)
        np.testing.assert_allclose(probs, reference, atol=0.1)


def test_existing_output_is_not_overwritten_without_asking(compiled):
    out, _ = compiled
    before = (out / "model.tflite").read_bytes()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        compile_model(CompileConfig(data=out, out=out, **FAST))
    assert (out / "model.tflite").read_bytes() == before


def test_without_a_student_the_teacher_is_deployed(tmp_path):
    from conftest import write_color_dataset

    data = write_color_dataset(tmp_path / "data", per_class=10)
    report = compile_model(CompileConfig(data=data, out=tmp_path / "out", **FAST))
    assert set(report["models"]) == {"teacher"} and report["distillation"] is None
    assert report["deployed"]["model"] == "teacher"
    assert not (tmp_path / "out" / "student.keras").exists()
    assert open_session(tmp_path / "out" / "model.tflite").input_size == 32


def test_one_class_is_a_data_error(tmp_path):
    from conftest import write_color_dataset

    data = write_color_dataset(tmp_path / "one", classes=("red",))
    with pytest.raises(DataError, match="class"):
        compile_model(CompileConfig(data=data, out=tmp_path / "out", **FAST))


def test_unchanged_stages_come_from_the_cache(tmp_path):
    import dataclasses

    from conftest import write_color_dataset

    data = write_color_dataset(tmp_path / "data", per_class=10)
    # What comes after the float export (quantized candidates, the corruption suite) is never
    # cached and is not under test here: fp32 alone, no robustness.
    settings = {**DISTIL, "quantize": "fp32", "robustness": False, "use_cache": True, "cache_dir": tmp_path / "cache"}
    config = CompileConfig(data=data, out=tmp_path / "first", **settings)
    first = compile_model(config)
    assert not any(m["cached"] for m in first["models"].values())

    # Only the distillation temperature changes: the teacher, the student's head and the
    # baseline (which never sees the teacher) are reused; the student is distilled again.
    second = compile_model(dataclasses.replace(config, out=tmp_path / "second", temperature=config.temperature + 1.0))
    cached = {role: m["cached"] for role, m in second["models"].items()}
    assert cached == {"teacher": True, "student": False, "baseline": True}
    assert second["models"]["teacher"]["test"] == first["models"]["teacher"]["test"]

    third = compile_model(dataclasses.replace(config, out=tmp_path / "third"))
    assert all(m["cached"] for m in third["models"].values())
    assert third["models"]["student"]["test"] == first["models"]["student"]["test"]


@pytest.mark.parametrize("cluster", [0, 8])
def test_pruning_deploys_a_sparse_int8_file_and_reports_it(tmp_path, cluster):
    from conftest import write_color_dataset

    data = write_color_dataset(tmp_path / "data", per_class=12)
    config = CompileConfig(
        data=data, out=tmp_path / "out",
        **{**FAST, "quantize": "int8", "prune": 0.5, "prune_epochs": 2, "qat_epochs": 1, "cluster": cluster, "cluster_epochs": 1},
    )
    report = compile_model(config)
    by_file = {a["file"]: a for a in report["artifacts"]}
    pruned = [a for a in report["artifacts"] if a["file"].startswith("variants/") and a.get("sparsity")]
    assert all(0.45 <= a["sparsity"] <= 0.55 for a in pruned)
    # The deployed file is the pruned int8 one when it passes the gate; the report says why either way.
    deployed = by_file[report["deployed"]["tflite_variant"]]
    assert "pruning" in report["optimization"]["trained"]
    assert ("clustering" in report["optimization"]["trained"]) == bool(cluster)
    # Their fine-tunes ran their fixed epochs and kept the last: val, which gates them, chose nothing.
    for trained in report["optimization"]["trained"].values():
        assert trained["kept"] == "last" and trained["stage"]["best_epoch"] == trained["stage"]["epochs_run"] > 0
    assert all(("clustered8" in a["file"]) == bool(cluster) for a in pruned)
    # The pruned model is exported to ONNX too, and each pruned file's parity is checked
    # against the pruned Keras model it came from (the float exports match it exactly).
    assert {(a["runtime"], a["precision"]) for a in pruned} == {("litert", "fp32"), ("litert", "int8"), ("onnxruntime", "int8")}
    assert all("pruned50" in a["parity"]["against"] for a in pruned)
    pruned_fp32 = next(a for a in pruned if a["precision"] == "fp32")
    assert pruned_fp32["parity"]["passed"] and pruned_fp32["parity"]["top1_agreement"] == 1.0
    assert not any(p.name.startswith(".") for p in (tmp_path / "out" / "variants").iterdir())
    # Pruning asked for: a pruned int8 file that passes the gate is deployed; none passing, an
    # unpruned one is (optimize.Optimizer.choose, prefer_pruned).
    pruned_int8_passed = any(a["gate"] == "passed" for a in pruned if a["precision"] == "int8" and a["runtime"] == "litert")
    assert bool(deployed.get("sparsity")) == pruned_int8_passed, report["deployed"]["why"]
    assert report["deployed"]["why"]


def test_small_data_keeps_the_probe_when_fine_tuning_is_ruined(tmp_path):
    """Below --cv-below: no val/test carved, choices by cross-validation, and a fine-tuning that a
    destructive learning rate ruins never replaces the linear probe."""
    from conftest import write_color_dataset

    data = write_color_dataset(tmp_path / "data", per_class=12)
    config = CompileConfig(
        data=data, out=tmp_path / "out", **{**FAST, "selection": "auto", "cv_below": 600, "folds": 3, "finetune_learning_rate": 10.0}
    )
    report = compile_model(config)
    assert report["dataset"]["selection"] == "cv"
    assert report["dataset"]["totals"] == {"train": 36, "val": 0, "test": 0}  # nothing held back
    selection = report["models"]["teacher"]["training"]["selection"]
    assert selection["probe_kept"] and selection["chosen_epochs"] == 0
    # The ruined epochs scored worse out of fold than the probe, at every recipe searched.
    assert max(selection["accuracy_by_epoch"][1:]) < selection["accuracy_by_epoch"][0]
    assert list(selection["recipes"]) == ["top, learning rate 10", "top, learning rate 30", "deeper, learning rate 10"]
    assert selection["recipe"] is None
    assert all(max(curve[1:]) < curve[0] for curve in selection["recipes"].values())
    assert report["models"]["teacher"]["training"]["learning_rate"] is None
    assert report["models"]["teacher"]["training"]["unfreeze_from"] == "tiny_conv2"  # the first recipe's: the probe was kept
    # Every fold's teacher for the student's folds is that fold's probe too.
    assert report["models"]["teacher"]["training"]["fold_teachers"] == [
        {"recipe": "top, learning rate 10", "epochs": 0, "unfreeze_from": "tiny_conv2"}] * 3
    cv = report["models"]["teacher"]["cv"]
    assert cv["n"] == 36 and cv["folds"] == 3 and cv["ci95"][0] <= cv["accuracy"] <= cv["ci95"][1]
    assert np.array(cv["confusion_matrix"]).sum() == 36
    # Each training image's out-of-fold answer, by path, for `edgetl report A B` to pair two such builds.
    answers = report["deployed"]["cv_predictions"]
    assert len({row["path"] for row in answers}) == 36 and all(row["path"].startswith(row["true"] + "/") for row in answers)
    assert sum(row["predicted"] == row["true"] for row in answers) == cv["correct"]
    root = Path(report["dataset"]["root"])  # each photo's bytes, so a replaced photo is not paired
    assert all(row["digest"] == file_digest(root / row["path"]).hex()[:16] for row in answers)
    # No held-out test: no file claims a test accuracy; what quantization changed is on the training images.
    deployed = next(a for a in report["artifacts"] if a["file"] == "model.tflite")
    assert deployed["test"] is None and deployed["training_images"]["images"] == 36
    assert "no test split" in report["evaluation"]["accuracy"]
    assert "alt='cross-validation curve of the teacher'" in (tmp_path / "out" / "report.html").read_text()
    # The deployed file is the probe: it classifies the colours.
    session = open_session(tmp_path / "out" / "model.tflite")
    from edgetl.compiler.data.datasets import load_images, scan_dataset

    x, y = load_images(scan_dataset(data, selection="cv").splits["train"], session.input_size)
    assert np.mean(session.predict(x).argmax(1) == y) >= 0.9


def test_held_out_selection_also_keeps_the_probe_when_fine_tuning_is_ruined(tmp_path):
    from conftest import write_color_dataset

    data = write_color_dataset(tmp_path / "data", per_class=14)
    report = compile_model(CompileConfig(data=data, out=tmp_path / "out", **{**FAST, "finetune_learning_rate": 10.0}))
    selection = report["models"]["teacher"]["training"]["selection"]
    assert report["dataset"]["selection"] == "holdout" and selection["probe_kept"]
    assert report["models"]["teacher"]["test"]["accuracy"] >= 0.9
    # The deployed teacher's kept probe was then refit on train + val, and the report says so.
    totals = report["dataset"]["totals"]
    assert report["models"]["teacher"]["training"]["head"]["refit"]["images"] == totals["train"] + totals["val"]
    assert "refit on train + val" in (tmp_path / "out" / "report.html").read_text()
    assert "Val kept the teacher's probe, which was then refit" in report["evaluation"]["choices"]


def test_under_cross_validation_the_students_features_are_extracted_once(tmp_path, monkeypatch):
    """Distillation and the baseline start from the student head's unchanged backbone: they reuse
    its training-image features instead of running the backbone over every image again."""
    from conftest import write_color_dataset
    from edgetl.compiler.training import finetune

    calls = []
    extract = finetune.extract_features

    def counted(model, images, batch_size, description):
        calls.append((description, len(images)))
        return extract(model, images, batch_size, description)

    monkeypatch.setattr(finetune, "extract_features", counted)
    data = write_color_dataset(tmp_path / "data", per_class=10)
    config = CompileConfig(data=data, out=tmp_path / "out", **{**DISTIL, "quantize": "fp32", "selection": "auto", "cv_below": 600, "folds": 3})
    report = compile_model(config)
    assert report["dataset"]["selection"] == "cv"
    assert report["models"]["student"]["training"]["distillation"]["selection"]["method"].startswith("3-fold")
    assert report["models"]["baseline"]["training"]["labels_only"]["selection"]
    # --search (default): distillation tried at the flags' (T, alpha) and as function matching;
    # the baseline, with no teacher, at its one recipe.
    distillation = report["models"]["student"]["training"]["distillation"]
    assert len(distillation["selection"]["recipes"]) == 2
    assert "recipes" not in report["models"]["baseline"]["training"]["labels_only"]["selection"]
    chosen = distillation["selection"]["recipe"] or "temperature 2, teacher's share 0.5"
    assert chosen == f"temperature {distillation['temperature']:g}, teacher's share {distillation['alpha']:g}"
    # Without a test split the distillation gain is paired out of fold, on every labelled image.
    assert report["distillation"]["distillation_gain_paired"]["n"] == report["models"]["student"]["cv"]["n"] == 30
    student_passes = [d for d, n in calls if not d.startswith("teacher")]
    assert student_passes == ["student: features (train)"], calls


def test_a_teacher_fine_tuned_deeper_is_rebuilt_at_its_depth_in_the_students_folds(tmp_path, monkeypatch):
    """When cross-validation picks the deeper fine-tuning, the teacher is refit from that layer and
    the student's folds load its fold weights at that depth (at the top's, they would not fit)."""
    from conftest import write_color_dataset
    from edgetl.compiler.training import crossval, cv_training

    choose_recipe = crossval.choose_recipe

    def deeper_wins(correct, folds, pred=None, names=None, **kwargs):
        correct = np.array(correct)
        if names and names[-1].startswith("deeper"):  # the teacher's search: make its last recipe the winner
            correct[:] = False
            correct[-1, 1:] = True
        return choose_recipe(correct, folds, pred, names, **kwargs)

    # The deployed teacher's choice and each fold's (crossval.fold_choices) both pick it.
    monkeypatch.setattr(cv_training, "choose_recipe", deeper_wins)
    monkeypatch.setattr(crossval, "choose_recipe", deeper_wins)
    data = write_color_dataset(tmp_path / "data", per_class=10)
    config = CompileConfig(data=data, out=tmp_path / "out", **{**DISTIL, "quantize": "fp32", "selection": "auto", "cv_below": 600,
                                                                  "folds": 3, "baseline": False})
    report = compile_model(config)
    teacher = report["models"]["teacher"]["training"]
    assert teacher["selection"]["recipe"] == "deeper, learning rate 0.0001" and teacher["selection"]["chosen_epochs"] == 1
    assert teacher["unfreeze_from"] == "tiny_conv1"
    assert teacher["fold_teachers"] == [{"recipe": "deeper, learning rate 0.0001", "epochs": 1, "unfreeze_from": "tiny_conv1"}] * 3
    assert "fold 3: 1 epoch (deeper, learning rate 0.0001)." in (tmp_path / "out" / "report.html").read_text()
    assert report["models"]["student"]["training"]["distillation"]["selection"]["method"].startswith("3-fold")


def test_a_probe_kept_on_val_is_refit_on_train_and_val(tmp_path):
    """Held-out selection: once val has chosen the probe, the deployed probe is fit on train + val
    (C by 5-fold CV on them), not on train alone; a model whose training won is left as it is."""
    from conftest import write_color_dataset
    from edgetl.compiler.data.datasets import scan_dataset
    from edgetl.compiler.data.image_store import ImageCache
    from edgetl.compiler.stages.trained import TrainedModel, refit_kept_probe
    from edgetl.compiler.training.finetune import extract_features
    from edgetl.compiler.training.probe import fit_probe
    from edgetl.models import LOGITS_LAYER, create_model, final_pool_width, get_config

    dataset = scan_dataset(write_color_dataset(tmp_path / "data", per_class=14), selection="holdout")
    images = ImageCache(dataset)
    config = CompileConfig(data=tmp_path / "data", out=tmp_path / "out", **FAST)
    size = get_config("tiny_cnn").input_size

    def trained(probe_kept: bool) -> TrainedModel:
        model = create_model("tiny_cnn", weights=None, num_classes=3)
        return TrainedModel("teacher", "tiny_cnn", get_config("tiny_cnn"), model, size,
                            {"head": {"C": 1.0}, "selection": {"probe_kept": probe_kept}})

    kept, replaced = trained(True), trained(False)
    before = replaced.model.get_layer(LOGITS_LAYER).get_weights()[0].copy()
    refit_kept_probe(kept, images, config)
    refit_kept_probe(replaced, images, config)

    (x, y), (xv, yv) = images.get("train", size), images.get("val", size)
    assert len(yv) > 0
    features = extract_features(kept.model, x.concat(xv), 32, "check")
    expected = fit_probe(features, np.concatenate([y, yv]), 3, seed=config.seed, first_columns=final_pool_width(kept.model))
    np.testing.assert_allclose(kept.model.get_layer(LOGITS_LAYER).get_weights()[0], expected.kernel, rtol=1e-5, atol=1e-6)
    assert kept.training["head"]["refit"]["images"] == len(y) + len(yv)
    np.testing.assert_array_equal(replaced.model.get_layer(LOGITS_LAYER).get_weights()[0], before)
    assert "refit" not in replaced.training["head"]

    # The baseline's refit: the same backbone as an already refit model takes its head as it is;
    # another backbone is fit on its own features.
    twin = trained(True)
    twin.model.set_weights(kept.model.get_weights())
    twin.model.get_layer(LOGITS_LAYER).set_weights([w * 0 for w in twin.model.get_layer(LOGITS_LAYER).get_weights()])
    refit_kept_probe(twin, images, config, like=kept)
    np.testing.assert_array_equal(twin.model.get_layer(LOGITS_LAYER).get_weights()[0], kept.model.get_layer(LOGITS_LAYER).get_weights()[0])
    assert twin.training["head"]["refit"]["copied_from"] == "teacher"
    other = trained(True)  # fresh random backbone
    refit_kept_probe(other, images, config, like=kept)
    assert "copied_from" not in other.training["head"]["refit"]
    own = fit_probe(extract_features(other.model, x.concat(xv), 32, "check"), np.concatenate([y, yv]), 3, seed=config.seed,
                    first_columns=final_pool_width(other.model))
    np.testing.assert_allclose(other.model.get_layer(LOGITS_LAYER).get_weights()[0], own.kernel, rtol=1e-5, atol=1e-6)
    images.close()


def test_after_a_refit_the_compressed_candidates_fine_tune_on_val_too(tmp_path, monkeypatch):
    """The refit head was fit on val: QAT and pruning fine-tune on it too, and the gate says so."""
    from conftest import write_color_dataset
    from edgetl.compiler.compression import optimize as optimize_module
    from edgetl.compiler.data.datasets import scan_dataset
    from edgetl.compiler.data.image_store import ImageCache
    from edgetl.compiler.stages import optimize as stage
    from edgetl.compiler.stages.trained import TrainedModel
    from edgetl.models import create_model, get_config

    images = ImageCache(scan_dataset(write_color_dataset(tmp_path / "data", per_class=14), selection="holdout"))
    config = CompileConfig(data=tmp_path / "data", out=tmp_path / "out", **FAST)
    size = get_config("tiny_cnn").input_size
    seen = {}

    class Captured(Exception):
        pass

    def capture(**kwargs):
        seen.update(kwargs)
        raise Captured

    monkeypatch.setattr(optimize_module, "Optimizer", capture)
    n_train, n_val = len(images.get("train", size)[1]), len(images.get("val", size)[1])
    for refit, expected in ((None, n_train), ({"images": n_train + n_val}, n_train + n_val)):
        model = TrainedModel("teacher", "tiny_cnn", get_config("tiny_cnn"), create_model("tiny_cnn", weights=None, num_classes=3), size,
                             {"head": {"C": 1.0, **({"refit": refit} if refit else {})}})
        with pytest.raises(Captured):
            stage.optimize(config, None, tmp_path / "out", model, model, images, {})
        x, y = seen["train_views"]
        assert len(x) == len(y) == expected and seen["val_seen"] == bool(refit)
    monkeypatch.undo()
    gate = optimize_module.Optimizer(float_model=None, teacher_model=None, train_views=None, config=config, images=images, size=size,
                                     out=tmp_path / "out", threads=1, val_seen=True)
    assert gate.gate_images().startswith("val (which the refit probe") and gate._gate_accuracy() == "val accuracy"
    images.close()
